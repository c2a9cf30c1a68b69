"""Render a tilt series from atoms: splat per depth slice, convolve with the probe, sum.

For image j (LOT eqs. 1–4):
  1. (u, v, w) = R_j · (x, y, z) + drift_j (see :mod:`atomjax.geometry`);
  2. each atom is assigned to depth slice(s) by w — ``"hard"`` (the paper's
     assignment) or ``"linear"`` (split between the two nearest slice centres, so the
     image depends smoothly on depth);
  3. O_jk(u, v) = Σ_{i in k} H_i exp(-[(u-u_i)² + (v-v_i)²] / B_i), each atom splatted
     into a local window of (2r+1)² pixels around its centre, not the whole image;
  4. I_j = Σ_k p_jk ⋆ O_jk, evaluated as one inverse FFT of Σ_k conj(P̂_k) Ô_k.

The probe enters as a stack of intensities p_k (n_slices, nu, nv), each non-negative,
summing to 1 and centred on pixel (nu//2, nv//2). The image at scan position r is
Σ_r' p(r' - r) O(r') (probe centred on r); for the centrosymmetric probes of round
lenses and 2-fold astigmatism this equals the convolution p ⊛ O of the paper.

Interaction modes, as probe objects with one method ``intensities(setup)``:
  * ``direct``: no probe (``None``), I = Σ_k O_k — the plain projection;
  * ``rigid``: :class:`FixedProbe`, a stack computed once from :class:`ProbeSettings`
    and never differentiated;
  * ``adaptive``: :class:`PixelProbe`, every pixel of every slice a parameter (LOT),
    kept non-negative and normalised by a softmax over the pixels of each slice, or a
    per-pixel correction of the physical probe, smooth in depth and kept centred; or
    :class:`PhysicalProbe`, the stack computed inside the model from differentiable
    aberrations.

Angles are processed in chunks of ``setup.angle_chunk`` images (vmapped inside a
chunk, scanned over chunks, rematerialised in the backward pass) so memory stays
bounded for long tilt series.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from . import geometry
from .atoms import Atoms
from .probe import ProbeSettings, probe_intensity_stack
from .splat import KERNELS, channel_weights, choose_kernel, splat_tiles, splat_whole
from .splat import splat_scatter as splat

MODES = ("direct", "rigid", "adaptive")


def _as_shape(shape) -> tuple[int, ...]:
    """Plain Python ints (hashable, never a traced or numpy scalar)."""
    shape = tuple(np.asarray(shape).reshape(-1).tolist())
    if len(shape) != 2 or any(int(n) != n or n < 1 for n in shape):
        raise ValueError(f"image_shape must be two positive integers, got {shape}")
    return tuple(int(n) for n in shape)


def image_bytes(
    image_shape, n_channels: int, n_atoms: int, window_px: int, split: int, itemsize: int = 4
) -> int:
    """Working memory of one image in the forward and backward pass (bytes, an estimate).

    What a chunk keeps per image: the splat updates (atoms × split × window²), the
    padded slice stack and its Fourier transform, and the image — about three copies
    of each between the forward pass, its rematerialisation and the gradient.
    """
    nu, nv = image_shape
    pad = 2 * (window_px // 2)
    splat_updates = n_atoms * split * window_px**2
    slices = n_channels * (nu + 2 * pad) * (nv + 2 * pad)
    spectra = 2 * n_channels * nu * (nv // 2 + 1)  # complex
    return int(3 * itemsize * (splat_updates + slices + spectra + nu * nv))


def available_bytes(device=None) -> int:
    """Memory a device can still give: the accelerator's free bytes, or the host's."""
    device = jax.local_devices()[0] if device is None else device
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    import os

    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def auto_angle_chunk(
    n_angles: int,
    image_shape,
    n_channels: int,
    n_atoms: int,
    window_px: int,
    split: int = 2,
    itemsize: int = 4,
    memory_bytes: int | None = None,
    fraction: float = 0.25,
    max_chunk: int = 32,
) -> int:
    """Images per chunk so one chunk's working memory stays within ``fraction`` of the
    available memory (:func:`image_bytes`, :func:`available_bytes`): a power of two
    (stable when the free memory moves a little), at least 1, at most ``max_chunk``
    and the number of angles."""
    per_image = image_bytes(image_shape, n_channels, n_atoms, window_px, split, itemsize)
    budget = fraction * (available_bytes() if memory_bytes is None else memory_bytes)
    fits = int(max(1, min(max_chunk, budget // max(per_image, 1))))
    return int(min(n_angles, 2 ** (fits.bit_length() - 1)))


def _as_basis(basis):
    """(n_slices, R) array -> nested tuples of floats (hashable); None stays None."""
    if basis is None:
        return None
    b = np.asarray(basis, dtype=float)
    if b.ndim != 2 or not np.all(np.isfinite(b)):
        raise ValueError(f"depth_basis must be a finite (n_slices, R) array, got shape {b.shape}")
    return tuple(tuple(float(x) for x in row) for row in b)


class ImagingSetup(eqx.Module):
    """Static description of the images and the slicing (hashable; a jit static argument).

    image_shape: (nu, nv) pixels. pixel_size_A: Å per pixel.
    n_slices, slice_thickness_A: depth slices centred on w = 0 (ignored in direct mode).
    max_width_A2, truncation: the splatting window radius r is chosen so that an atom
      of width B = max_width_A2 has fallen to ``truncation`` of its peak at the window
      edge; ``window_radius_px`` overrides it.
    depth_split: "linear" or "hard" slice assignment. angle_chunk: images per chunk.
    depth_basis: None, or an (n_slices, R) orthonormal basis over the slices
      (:func:`depth_basis`, stored as nested tuples so the setup stays hashable) — the
      low-rank depth interaction: atoms are splatted into R channels weighted by the
      basis at their depth (linearly interpolated between slice centres) and the image
      needs R FFTs instead of n_slices. With R = n_slices it equals the linear split.
    kernel: "auto" (the default: the cheapest for the sizes), "matmul" (matrix products,
      over the whole image or in tiles) or "scatter" (one window per atom; the
      reference), see :mod:`atomjax.splat`. tile_px: the tiles' side (None:
      :data:`atomjax.splat.DEFAULT_TILE_PX`; 0: never tiles, one product over the image).
      tile_chunk: atoms per product within a tile.
    """

    image_shape: tuple[int, int] = eqx.field(static=True, converter=_as_shape)
    pixel_size_A: float = eqx.field(static=True, converter=float)
    n_slices: int = eqx.field(static=True, default=1)
    slice_thickness_A: float = eqx.field(static=True, default=2.0, converter=float)
    max_width_A2: float = eqx.field(static=True, default=1.0, converter=float)
    truncation: float = eqx.field(static=True, default=1e-6)
    window_radius_px: int | None = eqx.field(static=True, default=None)
    depth_split: str = eqx.field(static=True, default="linear")
    angle_chunk: int = eqx.field(static=True, default=8)
    depth_basis: tuple | None = eqx.field(static=True, default=None, converter=_as_basis)
    kernel: str = eqx.field(static=True, default="auto")
    tile_px: int | None = eqx.field(static=True, default=None)
    tile_chunk: int = eqx.field(static=True, default=64)

    def __check_init__(self):
        if not (math.isfinite(self.pixel_size_A) and self.pixel_size_A > 0):
            raise ValueError(f"pixel_size_A must be a positive number, got {self.pixel_size_A}")
        if int(self.n_slices) != self.n_slices or self.n_slices < 1:
            raise ValueError(f"n_slices must be a positive integer, got {self.n_slices}")
        if not (math.isfinite(self.slice_thickness_A) and self.slice_thickness_A > 0):
            raise ValueError(
                f"slice_thickness_A must be a positive number, got {self.slice_thickness_A}"
            )
        if not self.max_width_A2 > 0:
            raise ValueError(f"max_width_A2 must be positive, got {self.max_width_A2}")
        if not 0 < self.truncation < 1:
            raise ValueError(f"truncation must lie in (0, 1), got {self.truncation}")
        if self.window_radius_px is not None and self.window_radius_px < 0:
            raise ValueError(f"window_radius_px must be >= 0, got {self.window_radius_px}")
        if self.depth_split not in ("linear", "hard"):
            raise ValueError(f"depth_split must be 'linear' or 'hard', got {self.depth_split!r}")
        if int(self.angle_chunk) != self.angle_chunk or self.angle_chunk < 1:
            raise ValueError(f"angle_chunk must be a positive integer, got {self.angle_chunk}")
        if self.kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {self.kernel!r}")
        if self.tile_px is not None and (int(self.tile_px) != self.tile_px or self.tile_px < 0):
            raise ValueError(f"tile_px must be an integer ≥ 0 or None, got {self.tile_px!r}")
        if int(self.tile_chunk) != self.tile_chunk or self.tile_chunk < 1:
            raise ValueError(f"tile_chunk must be a positive integer, got {self.tile_chunk!r}")
        if self.depth_basis is not None:
            rows, rank = len(self.depth_basis), len(self.depth_basis[0])
            if rows != self.n_slices or not 1 <= rank <= rows:
                raise ValueError(
                    f"depth_basis must have shape (n_slices, R) = ({self.n_slices}, R ≤ "
                    f"{self.n_slices}), got ({rows}, {rank})"
                )

    @property
    def depth_rank(self) -> int | None:
        """R, the number of depth components (None: the full per-slice model)."""
        return None if self.depth_basis is None else len(self.depth_basis[0])

    @property
    def radius_px(self) -> int:
        """Half-width r of the splatting window in pixels (window is 2r+1 square)."""
        if self.window_radius_px is not None:
            return int(self.window_radius_px)
        r_A = math.sqrt(self.max_width_A2 * math.log(1.0 / self.truncation))
        return int(math.ceil(r_A / self.pixel_size_A))

    @property
    def slice_centres_A(self) -> np.ndarray:
        return geometry.slice_centres_A(self.n_slices, self.slice_thickness_A)


# --------------------------------------------------------------------------- probes


class FixedProbe(eqx.Module):
    """Rigid DDI: a probe-intensity stack fixed from the settings (no gradient flows)."""

    stack: Float[Array, "k nu nv"]

    @classmethod
    def from_settings(cls, settings: ProbeSettings, setup: ImagingSetup) -> FixedProbe:
        stack = probe_intensity_stack(
            setup.image_shape, setup.pixel_size_A, settings, setup.slice_centres_A
        )
        return cls(stack=stack)

    def intensities(self, setup: ImagingSetup) -> Float[Array, "k nu nv"]:
        return jax.lax.stop_gradient(self.stack)


class PhysicalProbe(eqx.Module):
    """Adaptive DDI through the physical aberrations: the stack follows the settings.

    ``focus_offsets_A`` (m,), optional: a per-image change of defocus (Å) added to
    ``settings.defocus_A`` for image j — focus that wanders along the tilt series. With
    it the stack is computed per image inside the angle map (``per_image``).
    """

    settings: ProbeSettings
    focus_offsets_A: Float[Array, " m"] | None = None

    @property
    def per_image(self) -> bool:
        return self.focus_offsets_A is not None

    def intensities(self, setup: ImagingSetup, focus_offset_A=0.0) -> Float[Array, "k nu nv"]:
        settings = self.settings
        if not (isinstance(focus_offset_A, float) and focus_offset_A == 0.0):
            settings = eqx.tree_at(
                lambda s: s.defocus_A, settings, settings.defocus_A + focus_offset_A
            )
        return probe_intensity_stack(
            setup.image_shape, setup.pixel_size_A, settings, setup.slice_centres_A
        )

    def select(self, index) -> PhysicalProbe:
        """The probe of the images ``index`` (a mini-batch)."""
        if self.focus_offsets_A is None:
            return self
        return PhysicalProbe(self.settings, self.focus_offsets_A[index])


class PixelProbe(eqx.Module):
    """Adaptive DDI per pixel: p_k = softmax over the pixels of z_k, one slice k at a time.

    LOT's form (``base`` and ``profiles`` None): z_k = ``logits[k]``, every pixel of every
    slice free. With priors that keep the probe physical:

    * ``base`` (k, nu, nv), the log of the physical stack it starts from, and ``profiles``
      (k, R), smooth depth profiles (:func:`depth_profiles`): z_k = base_k +
      Σ_r profiles[k, r] · logits[r]. The correction to the physical probe is a
      per-pixel map that varies with depth only as R low-order polynomials do, so the
      free-space depth dependence stays and a slice cannot go its own way;
    * ``centred``: each slice is moved (a Fourier shift) so its intensity centroid sits
      on the centre pixel; a probe that drifts off centre would absorb atom
      displacements (and the atoms would move the other way).

    Neither ``base`` nor ``profiles`` is fitted (their gradient is stopped). The softmax
    keeps every slice non-negative and summing to 1 whatever the logits.
    """

    logits: Float[Array, "r nu nv"]
    base: Float[Array, "k nu nv"] | None = None
    profiles: Float[Array, "k r"] | None = None
    centred: bool = eqx.field(static=True, default=False)

    @classmethod
    def from_stack(
        cls, stack, floor: float = 1e-12, depth_rank: int | None = None, centred: bool = False
    ) -> PixelProbe:
        """From a starting stack: LOT's free pixels (``depth_rank`` None) or a
        correction of rank ``depth_rank`` over depth on top of it."""
        stack = jnp.asarray(stack)
        stack = stack / jnp.sum(stack, axis=(-2, -1), keepdims=True)
        log_stack = jnp.log(stack + floor)
        if depth_rank is None:
            return cls(logits=log_stack, centred=centred)
        profiles = jnp.asarray(depth_profiles(stack.shape[0], depth_rank), stack.dtype)
        zeros = jnp.zeros((profiles.shape[1],) + stack.shape[1:], stack.dtype)
        return cls(logits=zeros, base=log_stack, profiles=profiles, centred=centred)

    @classmethod
    def from_settings(
        cls,
        settings: ProbeSettings,
        setup: ImagingSetup,
        depth_rank: int | None = None,
        centred: bool = False,
    ) -> PixelProbe:
        stack = FixedProbe.from_settings(settings, setup).stack
        return cls.from_stack(stack, depth_rank=depth_rank, centred=centred)

    def intensities(self, setup: ImagingSetup) -> Float[Array, "k nu nv"]:
        z = self.logits
        if self.profiles is not None:
            profiles = jax.lax.stop_gradient(self.profiles)
            z = jnp.einsum("kr,ruv->kuv", profiles, z)
            if self.base is not None:
                z = z + jax.lax.stop_gradient(self.base)
        k, nu, nv = z.shape
        stack = jax.nn.softmax(z.reshape(k, nu * nv), axis=-1).reshape(k, nu, nv)
        return recentre(stack) if self.centred else stack


def depth_profiles(n_slices: int, rank: int) -> np.ndarray:
    """(n_slices, rank) orthonormal polynomial profiles over the slices: constant,
    linear, quadratic … in depth (Legendre, orthonormalised on the slice centres)."""
    if int(rank) != rank or not 1 <= rank <= n_slices:
        raise ValueError(f"depth rank must be an integer in [1, n_slices={n_slices}], got {rank}")
    t = np.linspace(-1.0, 1.0, n_slices) if n_slices > 1 else np.zeros(1)
    vander = np.polynomial.legendre.legvander(t, int(rank) - 1)
    q, r = np.linalg.qr(vander)
    return q * np.where(np.diag(r) < 0, -1.0, 1.0)  # unique signs: the constant one > 0


def centroids_px(stack) -> Array:
    """(k, 2) intensity centroid of each slice in pixels from the centre pixel."""
    k, nu, nv = stack.shape
    u = jnp.arange(nu) - nu // 2
    v = jnp.arange(nv) - nv // 2
    total = jnp.sum(stack, axis=(-2, -1))
    cu = jnp.einsum("kuv,u->k", stack, u.astype(stack.dtype)) / total
    cv = jnp.einsum("kuv,v->k", stack, v.astype(stack.dtype)) / total
    return jnp.stack([cu, cv], axis=-1)


def recentre(stack) -> Array:
    """Each slice shifted (band-limited Fourier shift) so its centroid is the centre pixel."""
    k, nu, nv = stack.shape
    c = centroids_px(stack)
    fu = jnp.fft.fftfreq(nu).astype(stack.dtype)
    fv = jnp.fft.rfftfreq(nv).astype(stack.dtype)
    phase = 2 * jnp.pi * (c[:, 0, None, None] * fu[None, :, None] + c[:, 1, None, None] * fv)
    ft = jnp.fft.rfft2(stack) * jnp.exp(1j * phase)
    return jnp.fft.irfft2(ft, s=(nu, nv))


def make_probe(mode: str, settings: ProbeSettings | None, setup: ImagingSetup):
    """The probe object for an interaction mode: None, FixedProbe or PixelProbe."""
    if mode not in MODES:
        raise ValueError(f"unknown interaction mode {mode!r}; choose one of {MODES}")
    if mode == "direct":
        return None
    if settings is None:
        raise ValueError(f"mode {mode!r} needs probe settings (ProbeSettings)")
    if mode == "rigid":
        return FixedProbe.from_settings(settings, setup)
    return PixelProbe.from_settings(settings, setup)


# ------------------------------------------------------------------------ splatting


def _slice_assignment(w_A, setup: ImagingSetup, direct: bool):
    n = w_A.shape[0]
    if direct or setup.n_slices == 1:
        return jnp.zeros((n, 1), jnp.int32), jnp.ones((n, 1), w_A.dtype)
    if setup.depth_split == "hard":
        k = geometry.hard_slice_index(w_A, setup.n_slices, setup.slice_thickness_A)
        return k[:, None], jnp.ones((n, 1), w_A.dtype)
    return geometry.linear_slice_weights(w_A, setup.n_slices, setup.slice_thickness_A)


def _splat(uvw, width, amp, alive, k_idx, k_w, n_slices: int, basis, setup: ImagingSetup):
    """Splat into the model's channels: the slices (n_slices of them, by ``k_idx`` /
    ``k_w``), or their combination into the R columns of ``basis``, by the kernel
    :func:`atomjax.splat.choose_kernel` picks for ``setup.kernel`` and the sizes."""
    n, splits = k_idx.shape
    n_channels = n_slices if basis is None else len(setup.depth_basis[0])
    kind = choose_kernel(n, n_channels, splits, setup)
    if kind == "scatter":
        slices = splat(uvw, width, amp, k_idx, k_w, n_slices, setup)
        return slices if basis is None else jnp.einsum("kr,kuv->ruv", basis, slices)
    weights = channel_weights(k_idx, k_w, n_slices)
    hw = amp[:, None] * (weights if basis is None else weights @ basis)
    if kind == "tiles":
        return splat_tiles(uvw, width, hw, setup, alive)
    return splat_whole(uvw, width, hw, setup)


def _image(pos, width, amp, alive, euler_rad, drift_A, probe_ft, setup: ImagingSetup):
    """One image from masked atom parameters; ``probe_ft`` None means direct mode.

    With ``setup.depth_basis`` the probe_ft is already projected on the basis (R, ...).
    """
    uvw = geometry.to_image_frame(pos, euler_rad, drift_A)
    direct = probe_ft is None
    if not direct and setup.depth_basis is not None:
        basis = jnp.asarray(setup.depth_basis, pos.dtype)  # (n_slices, R)
        k_idx, k_w = geometry.linear_slice_weights(
            uvw[:, 2], setup.n_slices, setup.slice_thickness_A
        )
        # the atoms' shares in the R channels: their slice weights combined by the basis
        channels = _splat(uvw, width, amp, alive, k_idx, k_w, setup.n_slices, basis, setup)
        image_ft = jnp.sum(probe_ft * jnp.fft.rfft2(channels), axis=0)
        return jnp.fft.irfft2(image_ft, s=setup.image_shape)
    k_idx, k_w = _slice_assignment(uvw[:, 2], setup, direct)
    n_out = 1 if direct else setup.n_slices
    slices = _splat(uvw, width, amp, alive, k_idx, k_w, n_out, None, setup)
    if direct:
        return slices[0]
    obj_ft = jnp.fft.rfft2(slices)
    return jnp.fft.irfft2(jnp.sum(jnp.conj(probe_ft) * obj_ft, axis=0), s=setup.image_shape)


def probe_fourier(stack: Float[Array, "k nu nv"], setup: ImagingSetup | None = None) -> Array:
    """rfft2 of a centred probe-intensity stack, moved to the origin for convolution.

    With a low-rank ``setup.depth_basis`` A (n_slices, R): D_r = Σ_k A_kr conj(P̂_k),
    the stack's conjugate transform projected on the basis (R, nu, nv // 2 + 1), so
    that an image is Σ_r D_r · FT(C_r) for the R splatted channels C_r.
    """
    ft = jnp.fft.rfft2(jnp.fft.ifftshift(stack, axes=(-2, -1)))
    if setup is None or setup.depth_basis is None:
        return ft
    basis = jnp.asarray(setup.depth_basis, stack.dtype)
    return jnp.einsum("kr,kuv->ruv", basis, jnp.conj(ft))


def depth_basis(stack, rank: int) -> np.ndarray:
    """The best rank-``rank`` basis over depth slices for a probe stack (n_slices, nu, nv).

    The left singular vectors of the slices' Fourier transforms (real and imaginary
    parts side by side, so the basis is real): projecting the stack on them leaves the
    smallest least-squares error of any ``rank`` depth profiles. Host-side, numpy.
    """
    stack = np.asarray(stack, dtype=float)
    if stack.ndim != 3:
        raise ValueError(f"stack must have shape (n_slices, nu, nv), got {stack.shape}")
    n = stack.shape[0]
    if not 1 <= int(rank) <= n:
        raise ValueError(f"rank must lie between 1 and n_slices = {n}, got {rank}")
    ft = np.fft.rfft2(np.fft.ifftshift(stack, axes=(-2, -1))).reshape(n, -1)
    u, _, _ = np.linalg.svd(np.concatenate([ft.real, ft.imag], axis=1), full_matrices=False)
    return u[:, : int(rank)]


def depth_rank_error(stack, basis) -> float:
    """Relative Fourier-space (= real-space, by Parseval) error of the projected stack."""
    stack = np.asarray(stack, dtype=float)
    ft = np.fft.rfft2(stack).reshape(stack.shape[0], -1)
    a = np.asarray(basis, dtype=float)
    approx = a @ (a.T @ ft)
    return float(np.linalg.norm(ft - approx) / np.linalg.norm(ft))


@eqx.filter_jit
def render_series(
    atoms: Atoms,
    euler_rad: Float[Array, "m 3"],
    drift_A: Float[Array, "m 3"],
    probe,
    setup: ImagingSetup,
) -> Float[Array, "m nu nv"]:
    """Images (m, nu, nv) of ``atoms`` at every orientation. Pure and jit-compiled.

    ``probe``: None (direct mode), or an object with ``intensities(setup)`` returning a
    (n_slices, nu, nv) stack (:class:`FixedProbe`, :class:`PixelProbe`,
    :class:`PhysicalProbe`), or one whose ``image_operator(setup, dtype)`` gives a
    function applied to each direct-mode image (:class:`atomjax.tail.TailKernel`); a raw
    array is taken as a fixed stack.
    """
    m = euler_rad.shape[0]
    if euler_rad.shape != (m, 3) or drift_A.shape != (m, 3):
        raise ValueError(
            f"euler_rad and drift_A must both have shape (m, 3), got {euler_rad.shape} "
            f"and {drift_A.shape}"
        )
    pos, width, amp = atoms.masked()
    alive = atoms.alive
    per_image = getattr(probe, "per_image", False)
    image_op = hasattr(probe, "image_operator")  # an operator on direct mode's images
    if image_op:
        apply_op = probe.image_operator(setup, pos.dtype)
    if probe is None or per_image or image_op:
        probe_ft = None
    else:
        stack = probe.intensities(setup) if hasattr(probe, "intensities") else probe
        expected = (setup.n_slices, *setup.image_shape)
        if stack.shape != expected:
            raise ValueError(
                f"probe stack has shape {stack.shape}, expected (n_slices, nu, nv) = {expected}"
            )
        probe_ft = probe_fourier(stack.astype(pos.dtype), setup)

    chunk = min(setup.angle_chunk, m)
    n_chunks = -(-m // chunk)
    pad = n_chunks * chunk - m
    columns = [euler_rad, drift_A]
    if per_image:
        if probe.focus_offsets_A.shape != (m,):
            raise ValueError(
                f"probe.focus_offsets_A has shape {probe.focus_offsets_A.shape}, expected ({m},) "
                "to match the angles"
            )
        columns.append(probe.focus_offsets_A[:, None])
    views = jnp.concatenate([c.astype(pos.dtype) for c in columns], axis=1)
    n_cols = views.shape[1]
    views = jnp.pad(views, ((0, pad), (0, 0))).reshape(n_chunks, chunk, n_cols)

    def one(view):
        ft = probe_fourier(probe.intensities(setup, view[6]), setup) if per_image else probe_ft
        image = _image(pos, width, amp, alive, view[:3], view[3:6], ft, setup)
        return apply_op(image) if image_op else image

    @jax.checkpoint
    def chunk_images(views_chunk):
        return jax.vmap(one)(views_chunk)

    def body(carry, views_chunk):
        return carry, chunk_images(views_chunk)

    _, images = jax.lax.scan(body, None, views)
    return images.reshape(n_chunks * chunk, *setup.image_shape)[:m]


def render_tilt_series(
    atoms: Atoms,
    euler_deg,
    setup: ImagingSetup,
    probe=None,
    drift_A=None,
) -> Float[Array, "m nu nv"]:
    """Host-side entry: check the inputs, convert degrees, and call :func:`render_series`.

    euler_deg: (m, 3) Euler triples (ψ, θ, φ) in degrees; drift_A: (m, 3) or None.
    """
    euler_deg, drift = geometry.check_views(euler_deg, drift_A)
    for name in ("positions_A", "widths_A2", "amplitudes"):
        if not bool(jnp.all(jnp.isfinite(getattr(atoms, name)))):
            raise ValueError(f"atoms.{name} contains NaN or infinite values")
    dtype = atoms.positions_A.dtype
    return render_series(
        atoms, jnp.asarray(np.deg2rad(euler_deg), dtype), jnp.asarray(drift, dtype), probe, setup
    )
