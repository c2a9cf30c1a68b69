"""The optimizers a reconstruction can fit with, behind one small interface.

The driver (:mod:`atomjax.reconstruct`) holds an :class:`Optimizer` and never asks which
one: it runs compiled pieces of steps (:meth:`Optimizer.run`), gives the optimizer its
state back after the atoms changed between phases (:meth:`Optimizer.resize`), and saves
whatever the state is in checkpoints. Two implementations:

* :class:`Adam` — optax Adam per parameter group, the learning rate decaying per
  phase (:func:`atomjax.fit.run_steps`); fits everything, in every mode, on any number
  of devices, with mini-batches of angles;
* :class:`LevenbergMarquardt` — second-order steps on the atoms and the background,
  and on the per-image pose and shifts where they are fitted (:mod:`atomjax.levenberg`);
  MSE or Poisson loss, one device, all images every step;
* :class:`LevenbergMarquardtWithProbe` — adaptive mode: those steps with the probe
  held, each followed by ``optim.lm_probe_steps`` Adam steps on the probe alone;
* :class:`LevenbergMarquardtWithTail` — direct mode with the atoms' profile tail
  (:mod:`atomjax.tail`): those steps with the tail held, each piece of them followed
  by Gauss–Newton steps on the tail's two parameters.

:func:`make_optimizer` picks one from ``OptimConfig.method`` ("auto": Levenberg–
Marquardt where it applies, else Adam).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from . import fit, levenberg, tail
from .fit import OptimConfig, Params, Rates

METHODS = ("auto", "adam", "lm")


@dataclasses.dataclass(frozen=True)
class FitData:
    """What every step sees: the images as fitted, their angles, the imaging setup, and
    the device mesh (None: one device) with the padded images' weights."""

    observed: Any
    euler_rad: Any
    setup: Any
    mesh: Any = None
    weights: Any = None


class Optimizer(Protocol):
    """The interface the driver uses (see the module docstring)."""

    name: str

    def init(self, params: Params) -> Any:
        """A fresh state for ``params``."""

    def resize(self, state, new_params: Params, source: np.ndarray) -> Any:
        """The state after the atoms changed: ``source[i]`` the old slot atom i comes
        from, -1 for a new atom."""

    def run(self, params: Params, state, phase: int, keys, data: FitData):
        """Steps of phase ``phase``, one per key: (params, state, losses (k,), rejected)."""

    def describe(self, state) -> dict[str, float]:
        """A few numbers of the state for the phase's record."""


@dataclasses.dataclass(frozen=True)
class Adam:
    config: OptimConfig
    rates: Rates
    name: str = "adam"

    def init(self, params):
        dtype = params.atoms.positions_A.dtype
        return fit.init_state(params, self.config, self.rates), jnp.asarray(1.0, dtype)

    def resize(self, state, new_params, source):
        opt_state, lr_scale = state
        return fit.resize_state(opt_state, new_params, source, self.config, self.rates), lr_scale

    def run(self, params, state, phase, keys, data):
        opt_state, lr_scale = state
        dtype = data.observed.dtype
        lr_mult = jnp.asarray(self.config.lr_decay_per_phase**phase, dtype)
        params, opt_state, lr_scale, losses, n_bad = fit.run_steps(
            params, opt_state, jnp.asarray(lr_scale, dtype), lr_mult, keys, data.observed,
            data.euler_rad, data.setup, self.config, self.rates, mesh=data.mesh,
            weights=data.weights,
        )  # fmt: skip
        return params, (opt_state, lr_scale), losses, n_bad

    def describe(self, state):
        return {"lr_scale": float(state[1])}


@dataclasses.dataclass(frozen=True)
class LevenbergMarquardt:
    config: OptimConfig
    rates: Rates
    name: str = "lm"

    def init(self, params):
        return levenberg.LMState.create(self.config, params.atoms.positions_A.dtype)

    def resize(self, state, new_params, source):
        # nothing is kept per atom; the damping starts afresh for the changed atoms
        return self.init(new_params)

    def run(self, params, state, phase, keys, data):
        return levenberg.run_steps(params, state, keys, data.observed, data.euler_rad,
                                   data.setup, self.config, self.rates)  # fmt: skip

    def describe(self, state):
        return {"lm_lambda": float(state.lam)}


#: the parameter groups of a fitted probe (adaptive mode)
PROBE_GROUPS = ("probe_logits", "defocus", "astigmatism", "astigmatism_angle", "cs")


def _split_rates(rates: Rates) -> tuple[Rates, Rates]:
    """(every group but the probe's, the probe's alone); the others' rates set to 0."""
    atoms = tuple((k, 0.0 if k in PROBE_GROUPS else v) for k, v in rates.values)
    probe = tuple((k, v if k in PROBE_GROUPS else 0.0) for k, v in rates.values)
    return Rates(atoms), Rates(probe)


@dataclasses.dataclass(frozen=True)
class LevenbergMarquardtWithProbe:
    """Alternating blocks: Levenberg–Marquardt steps on the atoms, the background and
    the pose with the probe held, then ``config.lm_probe_steps`` Adam steps per LM step
    on the probe with everything else held. Measured on the 1,111-atom Pt decahedron at
    35 mrad (benchmarks/README.md, modes in the regime): Adam on everything under-fits
    the first phase there, and the prune after it removed 630 of 1,111 atoms."""

    config: OptimConfig
    rates: Rates
    name: str = "lm"

    def _parts(self) -> tuple[LevenbergMarquardt, Adam]:
        atoms, probe = _split_rates(self.rates)
        return LevenbergMarquardt(self.config, atoms), Adam(self.config, probe)

    def init(self, params):
        lm, adam = self._parts()
        return lm.init(params), adam.init(params)

    def resize(self, state, new_params, source):
        lm, adam = self._parts()
        return lm.resize(state[0], new_params, source), adam.resize(state[1], new_params, source)

    def run(self, params, state, phase, keys, data):
        lm, adam = self._parts()
        params, lm_state, losses, n_bad = lm.run(params, state[0], phase, keys, data)
        probe_keys = jax.random.split(keys[-1], len(keys) * int(self.config.lm_probe_steps))
        params, adam_state, _, n_bad_probe = adam.run(params, state[1], phase, probe_keys, data)
        return params, (lm_state, adam_state), losses, n_bad + n_bad_probe

    def describe(self, state):
        lm, adam = self._parts()
        return {**lm.describe(state[0]), **adam.describe(state[1])}


@dataclasses.dataclass(frozen=True)
class LevenbergMarquardtWithTail:
    """Levenberg–Marquardt steps on the atoms, the background and the pose with the
    tail kernel held (LM moves only those), then :data:`atomjax.tail.ITERATIONS`
    Gauss–Newton steps on the kernel with everything else held (:func:`atomjax.tail.refine`)."""

    config: OptimConfig
    rates: Rates
    name: str = "lm"

    def _lm(self) -> LevenbergMarquardt:
        return LevenbergMarquardt(self.config, self.rates)

    def init(self, params):
        return self._lm().init(params)

    def resize(self, state, new_params, source):
        return self._lm().resize(state, new_params, source)

    def run(self, params, state, phase, keys, data):
        params, state, losses, n_bad = self._lm().run(params, state, phase, keys, data)
        if self.rates.as_dict().get("tail", 0.0) > 0:
            params = tail.refine(params, data.observed, data.euler_rad, data.setup,
                                 self.config.loss)  # fmt: skip
        return params, state, losses, n_bad

    def describe(self, state):
        return self._lm().describe(state)


def lm_limits(config: OptimConfig, mode: str, probe_fit: str, shard_devices):
    """Why Levenberg–Marquardt cannot fit this run (a list of reasons; empty: it can)."""
    why = []
    if mode == "adaptive" and config.lm_probe_steps < 1:
        why.append("mode 'adaptive' fits the probe, and optim.lm_probe_steps is 0")
    if config.loss not in levenberg.LM_LOSSES:
        why.append(f"loss {config.loss!r} (it takes {levenberg.LM_LOSSES})")
    if shard_devices not in (None, 1):
        why.append("shard_devices (it runs on one device)")
    if config.batch_angles is not None:
        why.append("batch_angles (it uses all images every step)")
    return why


def resolve_method(config: OptimConfig, mode: str, probe_fit: str = "pixel",
                   shard_devices=None) -> str:  # fmt: skip
    """ "adam" or "lm" for ``config.method``; "auto" is "lm" wherever it applies."""
    why = lm_limits(config, mode, probe_fit, shard_devices)
    if config.method == "lm" and why:
        raise ValueError("optim.method='lm' cannot be used here: " + "; ".join(why))
    if config.method == "auto":
        return "adam" if why else "lm"
    return config.method


#: what the fit moves besides the atoms, background and pose -> its Levenberg–Marquardt
_LM_WITH = {None: LevenbergMarquardt, "probe": LevenbergMarquardtWithProbe,
            "tail": LevenbergMarquardtWithTail}  # fmt: skip


def fitted_extra(probe) -> str | None:
    """What of ``probe`` (a :class:`atomjax.fit.Params`' probe) the fit moves: "probe"
    (adaptive mode's pixel or physical probe), "tail" (direct mode's profile tail) or
    None (no probe, or rigid mode's fixed one)."""
    if isinstance(probe, tail.TailKernel):
        return "tail"
    if isinstance(probe, fit.PixelProbe | fit.PhysicalProbe):
        return "probe"
    return None


def make_optimizer(
    method: str, config: OptimConfig, rates: Rates, fitted: str | None = None
) -> Optimizer:
    """The optimizer for a resolved ``method`` ("adam" or "lm"); ``fitted``: what else
    is fitted (:func:`fitted_extra`): "probe" (adaptive mode), "tail" or None. Adam fits
    every group with a learning rate, whatever it is."""
    if fitted not in _LM_WITH:
        raise ValueError(f"fitted must be one of {sorted(_LM_WITH, key=str)}, got {fitted!r}")
    if method == "lm":
        return _LM_WITH[fitted](config, rates)
    if method == "adam":
        return Adam(config, rates)
    raise ValueError(f"unknown optimizer {method!r}; choose one of {METHODS}")


def max_displacement_A(before: Params, after: Params) -> float:
    """The largest move of an atom that is alive in both (Å), host-side."""
    alive = np.asarray(before.atoms.alive) & np.asarray(after.atoms.alive)
    if not alive.any():
        return 0.0
    move = np.asarray(after.atoms.positions_A) - np.asarray(before.atoms.positions_A)
    return float(np.max(np.linalg.norm(move[alive], axis=1)))


__all__ = [
    "METHODS",
    "Adam",
    "FitData",
    "LevenbergMarquardt",
    "LevenbergMarquardtWithProbe",
    "LevenbergMarquardtWithTail",
    "PROBE_GROUPS",
    "fitted_extra",
    "Optimizer",
    "make_optimizer",
    "max_displacement_A",
    "resolve_method",
]
