"""The fit: jit-compiled phases of optax steps that match rendered images to a tilt series.

Parameters (:class:`Params`, a pytree): the atoms, a drift (u, v, w) per image, and
the probe (None in direct mode, a fixed stack in rigid mode, per-pixel logits or
physical aberrations with a per-image focus in adaptive mode).

One optax transformation per parameter group (positions, widths, amplitudes, drift,
probe pixels, defocus, astigmatism, Cs), composed with :func:`optax.partition`; the
groups are read from the pytree paths, so a new probe type needs only a label.
A phase is ``n_steps`` steps inside one ``lax.scan`` (one compilation per capacity;
equal shapes never recompile). Every step:

1. picks the images (all of them, or a random mini-batch of angles),
2. evaluates loss and gradient,
3. applies the update scaled by ``lr_scale · lr_mult``,
4. projects widths into [width_min_A2, setup.max_width_A2] (the splatting window is
   sized for max_width_A2) and amplitudes to ≥ 0,
5. rejects the step if the loss, a gradient or a new parameter is not finite: the
   parameters and optimizer state stay as they were and ``lr_scale`` is multiplied by
   ``nan_lr_factor`` — a bad step lowers the learning rate instead of ending the run.

Between phases the host may change the atoms (merge, prune, add: :mod:`atomjax.adapt`);
:func:`resize_state` then carries every surviving atom's optimizer moments to its new
slot and gives added atoms zero moments.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import pose as pose_lib
from .atoms import Atoms
from .loss import LOSSES
from .render import FixedProbe, ImagingSetup, PhysicalProbe, PixelProbe, render_series
from .tail import TailKernel


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Optimisation settings (plain values; hashable, so a jit static argument).

    Learning rates are Adam step sizes in the parameter's own unit per step;
    ``lr_amplitudes_rel`` is relative to the median initial amplitude (the image
    scale is data-dependent). A learning rate of 0 freezes its group.
    """

    loss: str = "mse"
    method: str = "auto"  # "auto" | "adam" | "lm" (atomjax.optimizers)
    n_phases: int = 6
    steps_per_phase: int | None = None  # None: STEPS_PER_PHASE of the method
    batch_angles: int | None = None  # None: all images every step
    lr_positions_A: float = 0.02
    lr_widths_A2: float = 0.005
    lr_amplitudes_rel: float = 0.01
    lr_drift_A: float = 0.0  # per-image shifts (u, v, w); the pose (atomjax.pose):
    lr_tilt_deg: float = 0.0  # ... per-image tilt offsets
    lr_rotation_deg: float = 0.0  # ... per-image in-plane rotations
    lr_axis_deg: float = 0.0  # ... the tilt axis's direction in the image plane
    lr_background: float = 1e-3  # per-image constant offset, in normalised intensity
    lr_probe_logits: float = 0.01  # adaptive, per-pixel probe
    lr_defocus_A: float = 2.0  # adaptive, physical probe: defocus and per-image focus
    lr_astigmatism_A: float = 1.0
    lr_astigmatism_angle_rad: float = 0.01
    lr_cs_A: float = 0.0
    lr_tail: float = 0.05  # the profile tail's logit share and log width (Adam; LM: Gauss–Newton)
    lr_decay_per_phase: float = 0.8
    width_min_A2: float = 0.05
    tie_widths: bool = False  # one width B for every atom (a single element), fitted
    nan_lr_factor: float = 0.5
    b1: float = 0.9
    b2: float = 0.999
    converge: bool = True  # end a phase (and the run) early once converged
    converge_rtol: float = 1e-5  # ... when a piece's loss falls by less than this, relative
    converge_move_A: float = 0.005  # ... and no atom moves more than this in it (0.5 pm)
    lm_lambda0: float = 1e-3  # Levenberg–Marquardt: the first damping (× diag of the blocks)
    lm_cg_iterations: int = 4  # conjugate-gradient iterations per step (0: block-Jacobi)
    lm_cg_tol: float = 0.1  # ... stopping at this relative residual
    lm_probe_steps: int = 10  # adaptive mode: Adam steps on the probe after each LM step

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; choose one of {sorted(LOSSES)}")
        for name in ("n_phases", "steps_per_phase"):
            v = getattr(self, name)
            if v is None and name == "steps_per_phase":
                continue
            if int(v) != v or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v}")
        if self.batch_angles is not None and (
            int(self.batch_angles) != self.batch_angles or self.batch_angles < 1
        ):
            raise ValueError(f"batch_angles must be a positive integer or None, got {self}")
        for f in dataclasses.fields(self):
            if f.name.startswith("lr_"):
                v = getattr(self, f.name)
                if not (math.isfinite(v) and v >= 0):
                    raise ValueError(f"{f.name} must be a finite number >= 0, got {v}")
        if not 0 < self.nan_lr_factor < 1:
            raise ValueError(f"nan_lr_factor must lie in (0, 1), got {self.nan_lr_factor}")
        if not self.width_min_A2 > 0:
            raise ValueError(f"width_min_A2 must be positive, got {self.width_min_A2}")
        if not isinstance(self.tie_widths, (bool, np.bool_)):
            raise ValueError(f"tie_widths must be a bool, got {self.tie_widths!r}")
        if not isinstance(self.converge, (bool, np.bool_)):
            raise ValueError(f"converge must be a bool, got {self.converge!r}")
        for name in ("converge_rtol", "converge_move_A"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v}")
        if self.method not in ("auto", "adam", "lm"):
            raise ValueError(f"method must be 'auto', 'adam' or 'lm', got {self.method!r}")
        if not (math.isfinite(self.lm_lambda0) and self.lm_lambda0 > 0):
            raise ValueError(f"lm_lambda0 must be a positive number, got {self.lm_lambda0}")
        if int(self.lm_cg_iterations) != self.lm_cg_iterations or self.lm_cg_iterations < 0:
            raise ValueError(
                f"lm_cg_iterations must be an integer ≥ 0, got {self.lm_cg_iterations}"
            )
        if int(self.lm_probe_steps) != self.lm_probe_steps or self.lm_probe_steps < 0:
            raise ValueError(f"lm_probe_steps must be an integer ≥ 0, got {self.lm_probe_steps}")
        if not 0 < self.lm_cg_tol < 1:
            raise ValueError(f"lm_cg_tol must lie in (0, 1), got {self.lm_cg_tol}")

    @classmethod
    def from_dict(cls, d: dict | None) -> OptimConfig:
        return settings_from_dict(cls, d)


#: steps per phase when ``OptimConfig.steps_per_phase`` is None, by method. LM: 15
#: measured against 10 and 20 (benchmarks/README.md, time to result): 959 atoms 50 /
#: 61 / 53 s at the same RMSD, 428 atoms 41 / 36 s, aSi_208 206 atoms at 10.28 pm both
STEPS_PER_PHASE = {"adam": 150, "lm": 15}


def settings_from_dict(cls, d):
    """``cls(**d)`` for a settings dataclass, refusing unknown keys by name (typos)."""
    if isinstance(d, cls):
        return d
    d = dict(d or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} settings {unknown}; known: {sorted(known)}")
    return cls(**d)


class Params(eqx.Module):
    """Everything the fit may change.

    ``pose``: None, or a :class:`atomjax.pose.Pose` — corrections to the series' angles
    (tilt and in-plane rotation offsets, the tilt axis) when the fit refines them.

    ``background`` (m,): a constant added to every pixel of image j — the vacuum level
    after normalisation, which noise moves away from 0 (LOT eq. 6 subtracts the
    minimum, and with noise the minimum lies below the vacuum). Without it the fit
    places spurious atoms in the vacuum to raise the level.
    """

    atoms: Atoms
    drift_A: jax.Array  # (m, 3)
    probe: Any = None  # None | FixedProbe | PixelProbe | PhysicalProbe | tail.TailKernel
    background: jax.Array | None = None  # (m,)
    pose: Any = None  # None | atomjax.pose.Pose

    def euler(self, euler_rad, index=None):
        """The Euler angles (radians) the images ``index`` (all when None) are seen at:
        the series' own, corrected by the fitted pose."""
        e = euler_rad if index is None else euler_rad[index]
        return e if self.pose is None else self.pose.euler(e, index)

    def images(self, euler_rad, setup: ImagingSetup, index=None):
        """Model images of the views ``index`` (all when None), background included."""
        if index is None:
            index = jnp.arange(euler_rad.shape[0])
        calc = render_series(
            self.atoms,
            self.euler(euler_rad, index),
            self.drift_A[index],
            batch_probe(self.probe, index),
            setup,
        )
        if self.background is not None:
            calc = calc + self.background[index][:, None, None]
        return calc


# ------------------------------------------------------------------ parameter groups

# pytree attribute name -> (group label, OptimConfig field with its learning rate)
_GROUPS = {
    "positions_A": ("positions", "lr_positions_A"),
    "widths_A2": ("widths", "lr_widths_A2"),
    "amplitudes": ("amplitudes", "lr_amplitudes_rel"),
    "drift_A": ("drift", "lr_drift_A"),
    "background": ("background", "lr_background"),
    "logits": ("probe_logits", "lr_probe_logits"),
    "defocus_A": ("defocus", "lr_defocus_A"),
    "focus_offsets_A": ("defocus", "lr_defocus_A"),
    "C12_A": ("astigmatism", "lr_astigmatism_A"),
    "phi12_rad": ("astigmatism_angle", "lr_astigmatism_angle_rad"),
    "C30_A": ("cs", "lr_cs_A"),
    "share_logit": ("tail", "lr_tail"),
    "log_width_A2": ("tail", "lr_tail"),
    **pose_lib.GROUPS,
}


def _names(path) -> list[str]:
    return [k.name for k in path if isinstance(k, jax.tree_util.GetAttrKey)]


def _group(path) -> str | None:
    for name in reversed(_names(path)):
        if name in _GROUPS:
            return _GROUPS[name][0]
    return None


@dataclasses.dataclass(frozen=True)
class Rates:
    """Absolute learning rates per group (the host computes them once per run)."""

    values: tuple[tuple[str, float], ...]

    @classmethod
    def from_config(cls, config: OptimConfig, amplitude_scale: float) -> Rates:
        out = {}
        for label, field in _GROUPS.values():
            lr = pose_lib.rate_in_rad(field, float(getattr(config, field)))
            if field == "lr_amplitudes_rel":
                lr *= float(amplitude_scale)
            out[label] = lr
        return cls(tuple(sorted(out.items())))

    def as_dict(self) -> dict[str, float]:
        return dict(self.values)


def _labels(diff, rates: Rates):
    lr = rates.as_dict()

    def label(path, leaf):
        g = _group(path)
        return g if g is not None and lr.get(g, 0.0) > 0 else "frozen"

    return jax.tree_util.tree_map_with_path(label, diff)


def build_optimizer(config: OptimConfig, rates: Rates) -> optax.GradientTransformation:
    """Adam per parameter group with its own learning rate; frozen groups get no update."""
    transforms = {
        label: optax.adam(lr, b1=config.b1, b2=config.b2) for label, lr in rates.values if lr > 0
    }
    transforms["frozen"] = optax.set_to_zero()
    return optax.partition(transforms, lambda diff: _labels(diff, rates))


def trainable(params: Params):
    """(diff, static): the inexact arrays the optimizer sees, and the rest."""
    return eqx.partition(params, eqx.is_inexact_array)


def init_state(params: Params, config: OptimConfig, rates: Rates):
    diff, _ = trainable(params)
    return build_optimizer(config, rates).init(diff)


# ------------------------------------------------------------------------ the phase


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if eqx.is_inexact_array(x)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def tied(values, alive):
    """Every entry set to the mean of the alive ones (one shared parameter)."""
    mean = jnp.sum(jnp.where(alive, values, 0.0)) / jnp.maximum(jnp.sum(alive), 1)
    return jnp.full_like(values, mean)


def _project(diff, config: OptimConfig, setup: ImagingSetup, alive=None, euler_rad=None,
             weights=None):  # fmt: skip
    """Keep the parameters feasible: widths in [width_min, max_width] (and tied to their
    mean over the ``alive`` atoms with ``config.tie_widths``), amplitudes ≥ 0, per-image
    focus offsets at zero mean; given the series' ``euler_rad`` (and the padded images'
    ``weights``), the pose's and shifts' gauge fixed (:func:`atomjax.pose.fix_gauge`)."""
    atoms = diff.atoms
    widths = atoms.widths_A2
    if config.tie_widths:
        widths = tied(widths, alive)
    widths = jnp.clip(widths, config.width_min_A2, setup.max_width_A2)
    amps = jnp.maximum(atoms.amplitudes, 0.0)
    diff = eqx.tree_at(lambda d: (d.atoms.widths_A2, d.atoms.amplitudes), diff, (widths, amps))
    probe = diff.probe
    if isinstance(probe, PhysicalProbe) and probe.focus_offsets_A is not None:
        # the mean per-image offset and the global defocus are one parameter: keep the
        # offsets at zero mean and the common part in the defocus (same model exactly)
        mean = jnp.mean(probe.focus_offsets_A)
        diff = eqx.tree_at(
            lambda d: (d.probe.settings.defocus_A, d.probe.focus_offsets_A),
            diff,
            (probe.settings.defocus_A + mean, probe.focus_offsets_A - mean),
        )
    if euler_rad is not None:
        diff = pose_lib.fix_gauge(diff, euler_rad, config, pose_lib.has_depth(diff), weights)
    return diff


def batch_probe(probe, index):
    return probe.select(index) if isinstance(probe, PhysicalProbe) else probe


def objective(params: Params, observed, euler_rad, index, setup: ImagingSetup, loss: str):
    """Loss of the images ``index`` (the whole series when index covers all angles)."""
    return LOSSES[loss](observed[index], params.images(euler_rad, setup, index))


@eqx.filter_jit
def run_phase(
    params: Params,
    opt_state,
    lr_scale,
    lr_mult,
    key,
    observed,
    euler_rad,
    setup: ImagingSetup,
    config: OptimConfig,
    rates: Rates,
    n_steps: int,
):
    """``n_steps`` optimisation steps in one compiled scan.

    Returns (params, opt_state, lr_scale, losses (n_steps,), n_rejected). The loss of
    step s is evaluated before its update.
    """
    keys = jax.random.split(key, n_steps)
    return run_steps(
        params, opt_state, lr_scale, lr_mult, keys, observed, euler_rad, setup, config, rates
    )


@eqx.filter_jit
def run_steps(
    params: Params,
    opt_state,
    lr_scale,
    lr_mult,
    keys,
    observed,
    euler_rad,
    setup: ImagingSetup,
    config: OptimConfig,
    rates: Rates,
    mesh=None,
    weights=None,
):
    """One optimisation step per key of ``keys`` (k, 2), in one compiled scan.

    Splitting a phase's keys into consecutive pieces and calling this once per piece
    (carrying params, opt_state and lr_scale) gives the same steps as one call.
    mesh: a :func:`atomjax.sharding.angle_mesh` to split the images over its devices;
    observed, euler_rad, weights and the per-image parameters are then padded to the
    mesh (:mod:`atomjax.sharding`) and mini-batches are drawn per device.
    """
    m = observed.shape[0]
    optimizer = build_optimizer(config, rates)
    diff0, static = trainable(params)
    batch = config.batch_angles
    use_batch = batch is not None and batch < m
    if mesh is not None:
        from .sharding import sharded_loss

        per_device = -(-batch // mesh.size) if use_batch else None

    def step(carry, step_key):
        diff, state, scale, n_bad = carry
        if use_batch:
            index = jax.random.permutation(step_key, m)[:batch]
        else:
            index = jnp.arange(m)

        def f(d):
            p = eqx.combine(d, static)
            if mesh is not None:
                return sharded_loss(
                    p, observed, euler_rad, weights, setup, config.loss, mesh, per_device, step_key
                )
            return objective(p, observed, euler_rad, index, setup, config.loss)

        loss, grads = jax.value_and_grad(f)(diff)
        updates, new_state = optimizer.update(grads, state, diff)
        updates = jax.tree.map(lambda u: u * (scale * lr_mult).astype(u.dtype), updates)
        new_diff = _project(eqx.apply_updates(diff, updates), config, setup, static.atoms.alive,
                            euler_rad, weights)  # fmt: skip
        ok = jnp.isfinite(loss) & _all_finite(grads) & _all_finite(new_diff)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)  # noqa: E731
        diff = keep(new_diff, diff)
        state = keep(new_state, state)
        scale = jnp.where(ok, scale, scale * config.nan_lr_factor)
        return (diff, state, scale, n_bad + (~ok).astype(jnp.int32)), loss

    init = (diff0, opt_state, jnp.asarray(lr_scale, observed.dtype), jnp.asarray(0, jnp.int32))
    (diff, opt_state, lr_scale, n_bad), losses = jax.lax.scan(step, init, keys)
    return eqx.combine(diff, static), opt_state, lr_scale, losses, n_bad


# -------------------------------------------------------------- state edits (host side)


def _is_atom_path(path) -> bool:
    return "atoms" in _names(path)


def resize_state(opt_state, new_params: Params, source: np.ndarray, config, rates):
    """Optimizer state for ``new_params`` after the atoms changed on the host.

    ``source[i]`` is the old slot whose moments atom i inherits (-1: a new atom, zero
    moments); slots beyond ``len(source)`` (dead padding) get zeros. Non-atom state
    (drift, probe, step counts) is kept as it is.
    """
    template = init_state(new_params, config, rates)
    source = np.asarray(source, dtype=np.int64)
    n = source.size

    def edit(path, new_leaf, old_leaf):
        if not _is_atom_path(path) or not eqx.is_array(new_leaf):
            return old_leaf
        old = np.asarray(old_leaf)
        out = np.zeros(new_leaf.shape, old.dtype)
        valid = source >= 0
        out[:n][valid] = old[source[valid]]
        return jnp.asarray(out)

    return jax.tree_util.tree_map_with_path(edit, template, opt_state)


def probe_kind(probe) -> str:
    kinds = ((FixedProbe, "fixed"), (PixelProbe, "pixel"), (PhysicalProbe, "physical"),
             (TailKernel, "tail"))  # fmt: skip
    for cls, name in kinds:
        if isinstance(probe, cls):
            return name
    return "none"
