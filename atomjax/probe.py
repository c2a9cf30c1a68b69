"""Probe synthesis: aperture, aberration phase χ, probe wave, Fresnel propagation.

Everything follows abTEM's conventions so settings move between the two unchanged:
polar aberration coefficients (Krivanek) in Å, angles in rad, ``defocus = -C10``;
positive defocus puts the crossover downstream (inside the specimen). The probe at
depth z is ψ_z = F⁻¹{ψ(k) · exp(-iπλz|k|²)}: propagating by z equals changing the
defocus by -z. The soft aperture edge is abTEM's (a linear ramp one reciprocal pixel
wide). Probe intensities are normalised to sum 1 and centred on pixel
(nu // 2, nv // 2), the image centre convention of :mod:`atomjax.geometry`.

In atomjax the probe settings describe the probe at the plane w = 0 through the
rotation centre: with ``defocus_A = 0`` the probe is focused at the rotation centre,
and the crossover sits at depth w = ``defocus_A``.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Complex, Float

from .units import wavelength_A


class ProbeSettings(eqx.Module):
    """Physical probe parameters. Array fields may be fitted; ``energy_eV`` is static.

    Aberrations: ``defocus_A`` (= -C10), ``C12_A`` and ``phi12_rad`` (2-fold
    astigmatism), ``C30_A`` (Cs), ``C50_A`` (C5).
    """

    energy_eV: float = eqx.field(static=True, default=300e3)
    semiangle_mrad: Float[Array, ""] = eqx.field(default=25.0, converter=jnp.asarray)
    defocus_A: Float[Array, ""] = eqx.field(default=0.0, converter=jnp.asarray)
    C12_A: Float[Array, ""] = eqx.field(default=0.0, converter=jnp.asarray)
    phi12_rad: Float[Array, ""] = eqx.field(default=0.0, converter=jnp.asarray)
    C30_A: Float[Array, ""] = eqx.field(default=0.0, converter=jnp.asarray)
    C50_A: Float[Array, ""] = eqx.field(default=0.0, converter=jnp.asarray)

    def __check_init__(self):
        wavelength_A(self.energy_eV)  # raises on a bad energy
        if not isinstance(self.semiangle_mrad, jax.core.Tracer):
            if not float(self.semiangle_mrad) > 0:
                raise ValueError(f"semiangle_mrad must be positive, got {self.semiangle_mrad}")

    @property
    def wavelength_A(self) -> float:
        return wavelength_A(self.energy_eV)

    def to_dict(self) -> dict[str, float]:
        """Plain floats, for files and configs."""
        return {
            "energy_eV": float(self.energy_eV),
            "semiangle_mrad": float(self.semiangle_mrad),
            "defocus_A": float(self.defocus_A),
            "C12_A": float(self.C12_A),
            "phi12_rad": float(self.phi12_rad),
            "C30_A": float(self.C30_A),
            "C50_A": float(self.C50_A),
        }

    @classmethod
    def from_dict(cls, d: dict) -> ProbeSettings:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown probe settings {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)

    def abtem_aberrations(self) -> dict[str, float]:
        """The same settings as keyword arguments of ``abtem.Probe`` (Å, rad)."""
        return {
            "C10": -float(self.defocus_A),
            "C12": float(self.C12_A),
            "phi12": float(self.phi12_rad),
            "C30": float(self.C30_A),
            "C50": float(self.C50_A),
        }


def spatial_frequencies(
    image_shape: tuple[int, int], pixel_size_A: float
) -> tuple[np.ndarray, np.ndarray]:
    """FFT-ordered spatial frequencies (1/Å) along u and v, broadcastable to the image."""
    ku = np.fft.fftfreq(image_shape[0], d=pixel_size_A)
    kv = np.fft.fftfreq(image_shape[1], d=pixel_size_A)
    return ku[:, None], kv[None, :]


def _polar_angles(image_shape, pixel_size_A, wavelength):
    ku, kv = spatial_frequencies(image_shape, pixel_size_A)
    alpha = np.sqrt(ku**2 + kv**2) * wavelength
    phi = np.arctan2(kv, ku)
    return alpha, phi


def aperture(
    image_shape: tuple[int, int], pixel_size_A: float, energy_eV: float, semiangle_mrad
) -> Float[Array, "nu nv"]:
    """abTEM's soft-edged condenser aperture on the FFT grid (1 inside, ramp at the edge)."""
    wl = wavelength_A(energy_eV)
    alpha, phi = _polar_angles(image_shape, pixel_size_A, wl)
    dalpha_u = wl / (image_shape[0] * pixel_size_A)  # angular sampling, rad
    dalpha_v = wl / (image_shape[1] * pixel_size_A)
    denom = np.sqrt((np.cos(phi) * dalpha_u) ** 2 + (np.sin(phi) * dalpha_v) ** 2)
    denom[0, 0] = 1.0
    cutoff = jnp.asarray(semiangle_mrad) * 1e-3
    ramp = jnp.clip((cutoff - alpha) / denom + 0.5, 0.0, 1.0)
    return ramp.at[0, 0].set(1.0)


def aberration_phase(
    image_shape: tuple[int, int], pixel_size_A: float, settings: ProbeSettings
) -> Float[Array, "nu nv"]:
    """χ(k) in rad, abTEM's polar series up to C50 (terms C10, C12/phi12, C30, C50)."""
    wl = settings.wavelength_A
    alpha, phi = _polar_angles(image_shape, pixel_size_A, wl)
    c10 = -settings.defocus_A
    chi = 0.5 * alpha**2 * (c10 + settings.C12_A * jnp.cos(2.0 * (phi - settings.phi12_rad)))
    chi = chi + 0.25 * alpha**4 * settings.C30_A
    chi = chi + (1.0 / 6.0) * alpha**6 * settings.C50_A
    return 2.0 * jnp.pi / wl * chi


def fresnel_propagator(
    image_shape: tuple[int, int], pixel_size_A: float, energy_eV: float, dz_A
) -> Complex[Array, "... nu nv"]:
    """exp(-iπλ dz |k|²) for a propagation distance ``dz_A`` (scalar or array) in Å."""
    wl = wavelength_A(energy_eV)
    ku, kv = spatial_frequencies(image_shape, pixel_size_A)
    k2 = ku**2 + kv**2
    dz = jnp.asarray(dz_A)[..., None, None]
    return jnp.exp(-1j * jnp.pi * wl * dz * k2)


def probe_wave_fourier(
    image_shape: tuple[int, int], pixel_size_A: float, settings: ProbeSettings
) -> Complex[Array, "nu nv"]:
    """ψ(k) = A(k) exp(-iχ(k)), normalised so that Σ_k |ψ(k)|² = 1 (as abTEM)."""
    a = aperture(image_shape, pixel_size_A, settings.energy_eV, settings.semiangle_mrad)
    chi = aberration_phase(image_shape, pixel_size_A, settings)
    psi = a * jnp.exp(-1j * chi)
    return psi / jnp.sqrt(jnp.sum(a**2))


def probe_intensity_stack(
    image_shape: tuple[int, int], pixel_size_A: float, settings: ProbeSettings, depths_A
) -> Float[Array, "k nu nv"]:
    """|ψ_z|² at each depth z (Å, relative to the plane w = 0), each summing to 1.

    The probe is centred on pixel (nu // 2, nv // 2). Differentiable in the settings.
    """
    psi_k = probe_wave_fourier(image_shape, pixel_size_A, settings)
    prop = fresnel_propagator(image_shape, pixel_size_A, settings.energy_eV, depths_A)
    psi = jnp.fft.ifft2(psi_k * prop)
    intensity = jnp.abs(psi) ** 2
    intensity = intensity / jnp.sum(intensity, axis=(-2, -1), keepdims=True)
    return jnp.fft.fftshift(intensity, axes=(-2, -1))
