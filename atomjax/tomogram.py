"""A quick voxel tomogram in JAX: bilinear projector pair, SIRT and peak finding.

Used to initialise atoms and to look for missing atoms in residual images. The
conventions are those of :mod:`atomjax.geometry`:

* voxel i along an axis of n voxels sits at ``(i - n // 2) * voxel_size_A`` in the
  object frame (x, y, z), the rotation centre on voxel n // 2;
* image j sees (u, v, w) = R_j · (x, y, z) + drift_j; pixel i along an image axis of
  n pixels sits at ``(i - n // 2) * pixel_size_A``.

The projector is voxel driven: a point (voxel centre) at image coordinates (u, v) is
spread bilinearly over the four pixels around it (nothing outside the image). For a
volume on the :func:`volume_grid_A` grid seen by views tilted about y only (the usual
single-axis series), :func:`project_grid_y` and :func:`back_project_grid_y` compute the
same operators as two matrix products per view (y planes map to image rows): SIRT uses
them when they apply.

* :func:`project` is the forward operator A: ``A x`` (m, nu, nv), every point's value
  split over its four pixels in every image (a ray sum, no 1/m factor).
* :func:`back_project` is ``(1/m) Aᵀ``: the mean over images of the bilinear
  interpolation of each image at the point's projected (u, v). Hence
  ``<project(x), y> = m · <x, back_project(y)>``.

Both are jit-compiled and process the angles in chunks (vmapped inside a chunk,
scanned over chunks) so memory stays bounded for long series and big volumes.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float
from scipy import ndimage
from scipy.spatial import cKDTree

from . import geometry

__all__ = [
    "volume_grid_A",
    "bin_images",
    "back_project",
    "back_project_grid_y",
    "back_project_volume",
    "is_single_axis_y",
    "project",
    "project_grid_y",
    "sirt",
    "find_peaks",
    "check_series",
]

ANGLE_CHUNK = 8


# ------------------------------------------------------------------------ checks


def _positive(name: str, value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number, got {value!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number, got {value}")
    return value


def _volume_shape(volume_shape) -> tuple[int, int, int]:
    shape = tuple(np.asarray(volume_shape).reshape(-1).tolist())
    if len(shape) != 3 or any(int(n) != n or n < 1 for n in shape):
        raise ValueError(f"volume_shape must be three positive integers, got {volume_shape}")
    return tuple(int(n) for n in shape)


def check_series(images, euler_deg, drift_A, pixel_size_A):
    """Host-side checks of a tilt series; returns (images, euler_deg, drift_A, pixel_size_A).

    images: (m, nu, nv) finite numbers; euler_deg: (m, 3) degrees (a 1D array is
    refused: use :func:`atomjax.geometry.euler_from_tilts_deg`); drift_A: (m, 3) Å or
    None (zeros); pixel_size_A: positive.
    """
    images = np.asarray(images, dtype=float)
    if images.ndim != 3:
        raise ValueError(f"images must have shape (angles, nu, nv), got {images.shape}")
    if min(images.shape) < 1:
        raise ValueError(f"images must not be empty, got shape {images.shape}")
    if not np.all(np.isfinite(images)):
        raise ValueError("images contain NaN or infinite values")
    euler, drift = geometry.check_views(euler_deg, drift_A, n_images=images.shape[0])
    return images, euler, drift, _positive("pixel_size_A", pixel_size_A)


# ------------------------------------------------------------------------- grids


def volume_grid_A(volume_shape, voxel_size_A: float) -> np.ndarray:
    """Voxel centres (V, 3) in Å, voxel i of n at (i - n // 2) · voxel_size_A.

    Flattened in C order of (nx, ny, nz), so ``values.reshape(volume_shape)`` is the
    volume of per-point ``values``.
    """
    shape = _volume_shape(volume_shape)
    voxel_size_A = _positive("voxel_size_A", voxel_size_A)
    axes = [geometry.pixel_coordinates_A(n, voxel_size_A) for n in shape]
    grids = np.meshgrid(*axes, indexing="ij")
    return np.stack([g.ravel() for g in grids], -1)


def _bin_matrix(n: int, factor: int) -> np.ndarray:
    """(N, n) weights of a box of ``factor`` pixels centred on every ``factor``-th pixel.

    Output pixel k sits on input pixel n//2 + (k - N//2)·factor, so the binned grid
    keeps the (i - n//2)·pixel convention with pixel → factor·pixel. Pixels are boxes:
    for odd factors the box covers ``factor`` whole pixels; for even factors its edges
    fall on pixel centres, so the two edge pixels count half. Every interior input
    pixel contributes a total weight of 1/factor. N is the largest count whose boxes
    all lie inside the image (the remainder is cropped, symmetrically up to a pixel).
    """
    h = factor // 2
    centre = n // 2
    for count in range(n // factor + 1, 0, -1):
        first = centre - (count // 2) * factor
        last = centre + (count - 1 - count // 2) * factor
        if first - h >= 0 and last + h <= n - 1:
            break
    else:
        raise ValueError(f"cannot bin an axis of {n} pixels by a factor of {factor}")
    profile = np.ones(2 * h + 1)
    if factor % 2 == 0:
        profile[0] = profile[-1] = 0.5
    profile /= factor
    w = np.zeros((count, n))
    for k in range(count):
        c = first + k * factor
        w[k, c - h : c + h + 1] = profile
    return w


def bin_images(images, factor: int):
    """Average-pool the last two axes (u, v) by an integer ``factor``.

    The binned pixel size is ``factor · pixel_size_A`` and binned pixel k of N lies at
    (k - N//2) · factor · pixel_size_A, exactly on input pixel n//2 + (k - N//2)·factor:
    the coordinate convention of :mod:`atomjax.geometry` is kept. Each output pixel is
    the mean over a ``factor`` × ``factor`` pixel-area box centred there (for an even
    factor the box edges fall on pixel centres, which then count half). Pixels beyond
    the last whole box are cropped (as symmetrically as the centring allows), so the
    output may be one pixel smaller than ``n // factor``. The sum of an image whose
    signal lies inside the kept region is conserved up to the factor², i.e. its mean
    per unit area is conserved. Accepts (..., nu, nv); returns a jax array.
    """
    if int(factor) != factor or factor < 1:
        raise ValueError(f"factor must be a positive integer, got {factor}")
    factor = int(factor)
    images = jnp.asarray(images)
    if images.ndim < 2:
        raise ValueError(
            f"images must have at least 2 dimensions (..., nu, nv), got {images.shape}"
        )
    if factor == 1:
        return images
    nu, nv = images.shape[-2:]
    if min(nu, nv) < factor:
        raise ValueError(f"images of {nu}×{nv} pixels are too small to bin by {factor}")
    dtype = images.dtype if jnp.issubdtype(images.dtype, jnp.floating) else float
    wu = jnp.asarray(_bin_matrix(nu, factor), dtype)
    wv = jnp.asarray(_bin_matrix(nv, factor), dtype)
    return jnp.einsum("ai,...ij,bj->...ab", wu, images.astype(dtype), wv)


# ------------------------------------------------------------------- projectors


def _bilinear(points_A, euler_rad, drift_A, pixel_size_A, image_shape):
    """Flat pixel indices (V, 4) and bilinear weights (V, 4) of every point in one image.

    Neighbours outside the image get weight 0 (and a harmless clipped index).
    """
    nu, nv = image_shape
    uvw = geometry.to_image_frame(points_A, euler_rad, drift_A)
    fu = uvw[:, 0] / pixel_size_A + nu // 2
    fv = uvw[:, 1] / pixel_size_A + nv // 2
    iu0 = jnp.floor(fu)
    iv0 = jnp.floor(fv)
    tu = fu - iu0
    tv = fv - iv0
    iu0 = iu0.astype(jnp.int32)
    iv0 = iv0.astype(jnp.int32)
    iu = jnp.stack([iu0, iu0, iu0 + 1, iu0 + 1], -1)
    iv = jnp.stack([iv0, iv0 + 1, iv0, iv0 + 1], -1)
    w = jnp.stack([(1 - tu) * (1 - tv), (1 - tu) * tv, tu * (1 - tv), tu * tv], -1)
    inside = (iu >= 0) & (iu < nu) & (iv >= 0) & (iv < nv)
    w = jnp.where(inside, w, 0.0)
    flat = jnp.clip(iu, 0, nu - 1) * nv + jnp.clip(iv, 0, nv - 1)
    return flat, w


def _chunked_views(euler_rad, drift_A, dtype, chunk):
    """Stack (ψ, θ, φ, drift) per image, zero-padded to whole chunks: (n_chunks, chunk, 6)."""
    m = euler_rad.shape[0]
    chunk = min(chunk, m)
    n_chunks = -(-m // chunk)
    pad = n_chunks * chunk - m
    views = jnp.concatenate([euler_rad, drift_A], axis=1).astype(dtype)
    return jnp.pad(views, ((0, pad), (0, 0))).reshape(n_chunks, chunk, 6), pad


def _check_views(euler_rad, drift_A, m=None):
    if euler_rad.ndim != 2 or euler_rad.shape[1] != 3 or drift_A.shape != euler_rad.shape:
        raise ValueError(
            f"euler_rad and drift_A must both have shape (m, 3), got {euler_rad.shape} "
            f"and {drift_A.shape}"
        )
    if m is not None and euler_rad.shape[0] != m:
        raise ValueError(f"{euler_rad.shape[0]} Euler triples for {m} images")


@functools.partial(jax.jit, static_argnames=("chunk",))
def back_project(
    images: Float[Array, "m nu nv"],
    euler_rad: Float[Array, "m 3"],
    drift_A: Float[Array, "m 3"],
    pixel_size_A,
    points_A: Float[Array, "V 3"],
    chunk: int = ANGLE_CHUNK,
) -> Float[Array, " V"]:
    """Mean over images of each image, bilinearly interpolated at the points' (u, v).

    Zero outside the image. Equals ``(1/m) Aᵀ images`` for A = :func:`project`.
    Angles in radians; ``chunk`` images are processed at a time.
    """
    m, nu, nv = images.shape
    _check_views(euler_rad, drift_A, m)
    dtype = jnp.result_type(images.dtype, points_A.dtype, float)
    points_A = points_A.astype(dtype)
    views, pad = _chunked_views(euler_rad, drift_A, dtype, chunk)
    flat_images = jnp.pad(images.astype(dtype).reshape(m, nu * nv), ((0, pad), (0, 0)))
    flat_images = flat_images.reshape(views.shape[0], views.shape[1], nu * nv)

    def one(view, image):
        idx, w = _bilinear(points_A, view[:3], view[3:], pixel_size_A, (nu, nv))
        return jnp.sum(image[idx] * w, axis=-1)

    def body(total, xs):
        views_chunk, images_chunk = xs
        return total + jnp.sum(jax.vmap(one)(views_chunk, images_chunk), axis=0), None

    total, _ = jax.lax.scan(body, jnp.zeros(points_A.shape[0], dtype), (views, flat_images))
    return total / m


@functools.partial(jax.jit, static_argnames=("image_shape", "chunk"))
def project(
    values: Float[Array, " V"],
    points_A: Float[Array, "V 3"],
    euler_rad: Float[Array, "m 3"],
    drift_A: Float[Array, "m 3"],
    image_shape: tuple[int, int],
    pixel_size_A,
    chunk: int = ANGLE_CHUNK,
) -> Float[Array, "m nu nv"]:
    """Forward projection A: every point's value spread bilinearly over 4 pixels per image.

    The exact adjoint of :func:`back_project` up to its 1/m factor (this function has
    none): ``<project(x), y> = m · <x, back_project(y)>``. ``image_shape`` (nu, nv)
    must be a tuple of ints (a static argument). Angles in radians.
    """
    nu, nv = image_shape
    _check_views(euler_rad, drift_A)
    m = euler_rad.shape[0]
    dtype = jnp.result_type(values.dtype, points_A.dtype, float)
    points_A = points_A.astype(dtype)
    values = values.astype(dtype)
    views, _ = _chunked_views(euler_rad, drift_A, dtype, chunk)

    def one(view):
        idx, w = _bilinear(points_A, view[:3], view[3:], pixel_size_A, (nu, nv))
        return jnp.zeros(nu * nv, dtype).at[idx].add(values[:, None] * w)

    def body(carry, views_chunk):
        return carry, jax.vmap(one)(views_chunk)

    _, out = jax.lax.scan(body, None, views)
    return out.reshape(-1, nu, nv)[:m]


# ----------------------------------------------- single-axis tilts: separable projector


def is_single_axis_y(euler_rad) -> bool:
    """Every view a pure tilt about y (ψ = φ = 0): the volume's y planes then project
    onto image rows v independently, and :func:`project_grid_y` applies (host-side)."""
    e = np.asarray(euler_rad, dtype=float)
    return bool(e.ndim == 2 and e.shape[1] == 3 and np.all(e[:, [0, 2]] == 0.0))


def _linear_weights(coord_px, n: int) -> Array:
    """(k, n) bilinear weights of points at fractional pixel ``coord_px`` (k,) on n pixels
    (0 beyond the edges): the one-dimensional part of :func:`_bilinear`."""
    i0 = jnp.floor(coord_px)
    t = coord_px - i0
    pix = jnp.arange(n)
    lo = (i0[:, None] == pix).astype(coord_px.dtype) * (1 - t)[:, None]
    hi = ((i0 + 1)[:, None] == pix).astype(coord_px.dtype) * t[:, None]
    return lo + hi


def _grid_y_operators(euler_rad, drift_A, pixel_size_A, volume_shape, voxel_size_A, image_shape):
    """For one view tilted about y: P (nx·nz, nu) and Q (ny, nv), the bilinear weights
    of the voxel columns along u and of the y planes along v."""
    nx, ny, nz = volume_shape
    nu, nv = image_shape
    dtype = drift_A.dtype
    x = jnp.asarray(geometry.pixel_coordinates_A(nx, voxel_size_A), dtype)
    y = jnp.asarray(geometry.pixel_coordinates_A(ny, voxel_size_A), dtype)
    z = jnp.asarray(geometry.pixel_coordinates_A(nz, voxel_size_A), dtype)
    theta = euler_rad[1]
    u = (jnp.cos(theta) * x[:, None] + jnp.sin(theta) * z[None, :]).reshape(-1) + drift_A[0]
    p = _linear_weights(u / pixel_size_A + nu // 2, nu)
    q = _linear_weights((y + drift_A[1]) / pixel_size_A + nv // 2, nv)
    return p, q


@functools.partial(jax.jit, static_argnames=("volume_shape", "image_shape"))
def project_grid_y(values, volume_shape, voxel_size_A, euler_rad, drift_A, image_shape,
                   pixel_size_A):  # fmt: skip
    """:func:`project` of a volume on the :func:`volume_grid_A` grid, for views tilted
    about y only: per view two matrix products, Pᵀ · V · Q, instead of a scatter."""
    nx, ny, nz = volume_shape
    vol = values.reshape(nx, ny, nz).transpose(0, 2, 1).reshape(nx * nz, ny)
    dtype = jnp.result_type(values.dtype, float)

    def one(view):
        p, q = _grid_y_operators(view[:3], view[3:], pixel_size_A, volume_shape, voxel_size_A,
                                 image_shape)  # fmt: skip
        return p.T @ vol.astype(dtype) @ q

    views = jnp.concatenate([euler_rad, drift_A], axis=1).astype(dtype)
    return jax.lax.map(one, views)


@functools.partial(jax.jit, static_argnames=("volume_shape",))
def back_project_grid_y(images, euler_rad, drift_A, pixel_size_A, volume_shape, voxel_size_A):
    """:func:`back_project` onto the :func:`volume_grid_A` grid for views tilted about y
    only: per view P · image · Qᵀ. Returns (V,) in the grid's C order."""
    m, nu, nv = images.shape
    nx, ny, nz = volume_shape
    dtype = jnp.result_type(images.dtype, float)

    def add(total, xs):
        view, image = xs
        p, q = _grid_y_operators(view[:3], view[3:], pixel_size_A, volume_shape, voxel_size_A,
                                 (nu, nv))  # fmt: skip
        return total + p @ image.astype(dtype) @ q.T, None

    views = jnp.concatenate([euler_rad, drift_A], axis=1).astype(dtype)
    total, _ = jax.lax.scan(add, jnp.zeros((nx * nz, ny), dtype), (views, images))
    return (total / m).reshape(nx, nz, ny).transpose(0, 2, 1).reshape(-1)


def back_project_volume(images, euler_rad, drift_A, pixel_size_A, volume_shape, voxel_size_A):
    """:func:`back_project` onto the :func:`volume_grid_A` grid of ``volume_shape``
    (V,), by the separable operators when every view is tilted about y only."""
    shape = _volume_shape(volume_shape)
    if is_single_axis_y(euler_rad):
        return back_project_grid_y(images, euler_rad, drift_A, pixel_size_A, shape,
                                   voxel_size_A)  # fmt: skip
    dtype = jnp.result_type(images.dtype, float)
    points = jnp.asarray(volume_grid_A(shape, voxel_size_A), dtype)
    return back_project(images, euler_rad, drift_A, pixel_size_A, points)


# -------------------------------------------------------------------------- SIRT


@functools.partial(jax.jit, static_argnames=("image_shape",))
def _sirt_step(
    x, b, row_inv, col_inv, nonnegative, points, euler_rad, drift_A, pixel_size_A, image_shape
):
    """x ← x + col_inv · Aᵀ(row_inv · r), r = b − A x; returns (x_new, r, ||r||).

    Also computes the SIRT weights, so that one compiled function does everything:
    with x = 1, b = 0 the residual is −A 1 (row sums); with x = 0, b = 1, row_inv = 1,
    col_inv = 1 and no clipping the update is Aᵀ 1 (column sums).
    """
    m = b.shape[0]
    r = b - project(x, points, euler_rad, drift_A, image_shape, pixel_size_A)
    x_new = x + col_inv * m * back_project(r * row_inv, euler_rad, drift_A, pixel_size_A, points)
    x_new = jnp.where(nonnegative, jnp.maximum(x_new, 0.0), x_new)
    return x_new, r, jnp.linalg.norm(r)


@functools.partial(jax.jit, static_argnames=("image_shape", "volume_shape"))
def _sirt_step_y(
    x, b, row_inv, col_inv, nonnegative, voxel_size_A, euler_rad, drift_A, pixel_size_A,
    image_shape, volume_shape,
):  # fmt: skip
    """:func:`_sirt_step` on the grid for views tilted about y (separable projector)."""
    m = b.shape[0]
    ax = project_grid_y(x, volume_shape, voxel_size_A, euler_rad, drift_A, image_shape,
                        pixel_size_A)  # fmt: skip
    r = b - ax
    bp = back_project_grid_y(r * row_inv, euler_rad, drift_A, pixel_size_A, volume_shape,
                             voxel_size_A)  # fmt: skip
    x_new = x + col_inv * m * bp
    x_new = jnp.where(nonnegative, jnp.maximum(x_new, 0.0), x_new)
    return x_new, r, jnp.linalg.norm(r)


def _safe_inverse(s):
    return jnp.where(s > 0, 1.0 / jnp.where(s > 0, s, 1.0), 0.0)


def sirt(
    images,
    euler_deg,
    drift_A,
    pixel_size_A: float,
    volume_shape,
    voxel_size_A: float,
    n_iter: int = 10,
    nonnegative: bool = True,
    progress: bool = False,
    return_residuals: bool = False,
    field_of_view: bool = True,
):
    """SIRT reconstruction (nx, ny, nz) of a tilt series on the :func:`volume_grid_A` grid.

    x ← x + C Aᵀ R (b − A x), with R = 1 / row sums (A 1) and C = 1 / column sums
    (Aᵀ 1), zero where a sum vanishes; starting from x = 0 and clipped at 0 when
    ``nonnegative``. The images are first binned (:func:`bin_images`) by
    round(voxel_size_A / pixel_size_A) so the binned pixel is close to a voxel: a
    voxel-driven bilinear projector with voxels much coarser than pixels leaves gaps.
    The result is in image-intensity units per voxel along a ray.

    With ``field_of_view`` only voxels that project inside every image are
    reconstructed; the others stay 0. (Voxels seen by only some images, such as the
    corners of a cube as wide as the images, otherwise collect streak artefacts as
    strong as 20 % of the atoms' peaks.)

    euler_deg: (m, 3) degrees; drift_A: (m, 3) Å or None. With ``return_residuals``
    also returns the relative residuals ||b − A x_k|| / ||b|| for k = 0 .. n_iter
    (on the binned images; the first is that of x = 0, i.e. 1).
    """
    images, euler_deg, drift, pixel_size_A = check_series(images, euler_deg, drift_A, pixel_size_A)
    shape = _volume_shape(volume_shape)
    voxel_size_A = _positive("voxel_size_A", voxel_size_A)
    if int(n_iter) != n_iter or n_iter < 0:
        raise ValueError(f"n_iter must be a non-negative integer, got {n_iter}")
    factor = max(1, int(round(voxel_size_A / pixel_size_A)))
    dtype = jnp.result_type(float)
    b = bin_images(jnp.asarray(images, dtype), factor)
    image_shape = tuple(int(n) for n in b.shape[1:])
    views = (
        jnp.asarray(np.deg2rad(euler_deg), dtype),
        jnp.asarray(drift, dtype),
        jnp.asarray(pixel_size_A * factor, dtype),
        image_shape,
    )
    if is_single_axis_y(euler_deg):  # the separable projector: matrix products per view
        step = functools.partial(_sirt_step_y, volume_shape=shape)
        args = (jnp.asarray(voxel_size_A, dtype), *views)
    else:
        step = _sirt_step
        args = (jnp.asarray(volume_grid_A(shape, voxel_size_A), dtype), *views)
    n_voxels = int(np.prod(shape))
    ones_v, zeros_v = jnp.ones(n_voxels, dtype), jnp.zeros(n_voxels, dtype)
    ones_b, zeros_b = jnp.ones_like(b), jnp.zeros_like(b)
    no, yes = jnp.asarray(False), jnp.asarray(bool(nonnegative))
    m = b.shape[0]
    cols, _, _ = step(zeros_v, ones_b, ones_b, ones_v, no, *args)
    active = ones_v
    if field_of_view:
        # the bilinear weights of a point sum to 1 in every image that holds it whole
        # (to the rounding of a sum of m weights: float32 misses m by ~1e-7 · m)
        active = (cols >= m * (1.0 - 1e3 * jnp.finfo(dtype).eps)).astype(dtype)
        if not bool(jnp.any(active > 0)):
            raise ValueError(
                "no voxel projects inside every image (check drift_A, volume_shape and "
                "voxel_size_A, or pass field_of_view=False)"
            )
    _, minus_rows, _ = step(active, zeros_b, zeros_b, zeros_v, no, *args)
    row_inv, col_inv = _safe_inverse(-minus_rows), active * _safe_inverse(cols)

    x = zeros_v
    norm_b = float(jnp.linalg.norm(b)) or 1.0
    residuals = []
    steps = range(int(n_iter))
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="SIRT", unit="it")
    for _ in steps:
        x, _, res = step(x, b, row_inv, col_inv, yes, *args)
        residuals.append(float(res) / norm_b)
    volume = np.asarray(x).reshape(shape)
    if not return_residuals:
        return volume
    _, _, res = step(x, b, row_inv, col_inv, yes, *args)
    residuals.append(float(res) / norm_b)
    return volume, np.asarray(residuals)


# -------------------------------------------------------------------- peak finding


def _ball_footprint(radius_vox: float) -> np.ndarray:
    """Offsets within ``radius_vox`` (at least the 3×3×3 neighbourhood)."""
    r = int(math.floor(max(radius_vox, 1.0)))
    o = np.arange(-r, r + 1)
    d2 = o[:, None, None] ** 2 + o[None, :, None] ** 2 + o[None, None, :] ** 2
    ball = d2 <= radius_vox**2 + 1e-9
    ball |= np.max(np.abs(np.stack(np.meshgrid(o, o, o, indexing="ij"))), axis=0) <= 1
    return ball


def _parabolic_offsets(volume: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Sub-voxel offsets (p, 3) of peaks at integer ``idx`` by a 3-point parabola per axis.

    Zero at the volume edge or where the three samples are not strictly concave;
    clipped to [-0.5, 0.5].
    """
    offsets = np.zeros(idx.shape, dtype=float)
    v0 = volume[tuple(idx.T)]
    for axis in range(3):
        n = volume.shape[axis]
        ok = (idx[:, axis] > 0) & (idx[:, axis] < n - 1)
        lo = idx.copy()
        hi = idx.copy()
        lo[:, axis] = np.clip(lo[:, axis] - 1, 0, n - 1)
        hi[:, axis] = np.clip(hi[:, axis] + 1, 0, n - 1)
        vm = volume[tuple(lo.T)]
        vp = volume[tuple(hi.T)]
        denom = vm - 2.0 * v0 + vp
        ok &= denom < 0
        safe = np.where(ok, denom, -1.0)
        off = np.where(ok, 0.5 * (vm - vp) / safe, 0.0)
        offsets[:, axis] = np.clip(off, -0.5, 0.5)
    return offsets


def _suppress(positions: np.ndarray, min_distance: float) -> np.ndarray:
    """Greedy non-maximum suppression, vectorised per round (not per peak).

    ``positions`` are sorted strongest first. Returns a keep mask such that no two kept
    points are closer than ``min_distance``; the result equals the sequential greedy
    pass (keep the strongest, drop its neighbours, repeat). Each round decides every
    point whose stronger neighbours are all already decided.
    """
    n = positions.shape[0]
    status = np.zeros(n, dtype=np.int8)  # 0 undecided, 1 kept, -1 dropped
    if n == 0:
        return status.astype(bool)
    tree = cKDTree(positions)
    # pairs strictly closer than min_distance (query_pairs includes the radius itself)
    pairs = tree.query_pairs(r=min_distance * (1.0 - 1e-12), output_type="ndarray")
    if pairs.size == 0:
        return np.ones(n, dtype=bool)
    strong = np.minimum(pairs[:, 0], pairs[:, 1])  # lower index = stronger
    weak = np.maximum(pairs[:, 0], pairs[:, 1])
    while np.any(status == 0):
        # a kept point drops its weaker neighbours
        drop = np.zeros(n, dtype=bool)
        drop[weak[status[strong] == 1]] = True
        status[drop & (status == 0)] = -1
        # an undecided point whose stronger neighbours are all dropped is kept
        blocked = np.zeros(n, dtype=bool)
        blocked[weak[status[strong] != -1]] = True
        status[(status == 0) & ~blocked] = 1
    return status == 1


def find_peaks(
    volume,
    voxel_size_A: float,
    threshold: float,
    min_distance_A: float,
    refine: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Local maxima of a volume strictly above ``threshold``, at least min_distance_A apart.

    A voxel is a candidate when it equals the maximum over a ball of radius
    min_distance_A (at least its 26 neighbours; outside the volume counts as −∞) and
    exceeds ``threshold``. With ``refine`` each candidate moves by a 3-point parabolic
    fit along each axis (at most half a voxel). Candidates closer than min_distance_A
    (plateaus of equal values, or peaks moved together by the refinement) are then
    thinned greedily, strongest first, ties broken by voxel index in C order.

    Returns positions (p, 3) in Å on the :func:`volume_grid_A` convention and the
    voxel values (p,) at the peaks, strongest first.
    """
    volume = np.asarray(volume, dtype=float)
    if volume.ndim != 3:
        raise ValueError(f"volume must have shape (nx, ny, nz), got {volume.shape}")
    if not np.all(np.isfinite(volume)):
        raise ValueError("volume contains NaN or infinite values")
    voxel_size_A = _positive("voxel_size_A", voxel_size_A)
    min_distance_A = _positive("min_distance_A", min_distance_A)
    threshold = float(threshold)
    if math.isnan(threshold):
        raise ValueError("threshold is NaN")
    footprint = _ball_footprint(min_distance_A / voxel_size_A)
    local_max = ndimage.maximum_filter(volume, footprint=footprint, mode="constant", cval=-np.inf)
    idx = np.argwhere((volume >= local_max) & (volume > threshold))  # C order
    values = volume[tuple(idx.T)]
    order = np.argsort(-values, kind="stable")  # stable: ties keep C order
    idx, values = idx[order], values[order]
    pos_vox = idx.astype(float)
    if refine and idx.shape[0]:
        pos_vox = pos_vox + _parabolic_offsets(volume, idx)
    centre = np.array([n // 2 for n in volume.shape], dtype=float)
    positions = (pos_vox - centre) * voxel_size_A
    keep = _suppress(positions, min_distance_A)
    return positions[keep], values[keep]
