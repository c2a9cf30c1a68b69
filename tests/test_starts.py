"""Several starts kept by their final loss (atomjax.starts)."""

import json

import numpy as np
import pytest

from atomjax import simulate, starts, structures
from atomjax.outputs import read_extxyz
from atomjax.reconstruct import ReconstructConfig, reconstruct

FAST = {
    "optim": {"n_phases": 2, "steps_per_phase": 30},
    "init": {"method": "peaks", "sirt_iterations": 3},
}


@pytest.fixture(scope="module")
def series():
    particle = structures.rotate_off_zone_axes(structures.fcc_sphere("Au", 5.5), seed=1)
    return simulate.simulate_fast(particle, np.linspace(-60, 60, 9), pixel_size_A=0.35,
                                  margin_A=3.0, noise_std_rel=0.05, progress=False)  # fmt: skip


def test_start_configs_vary_only_the_start_tomogram():
    base = ReconstructConfig(**FAST)
    configs = starts.start_configs(base, starts.MAX_STARTS)
    assert configs[0] == base
    got = [(c.init.sirt_iterations, c.init.voxel_size_A) for c in configs]
    assert got == [(3, 0.5), (9, 0.5), (9, pytest.approx(0.35)), (3, pytest.approx(0.35))]
    for c in configs:  # nothing else changes
        assert c.optim == base.optim and c.adapt == base.adapt and c.mode == base.mode
    for bad in (0, starts.MAX_STARTS + 1, 2.5, True):
        with pytest.raises(ValueError, match="n_starts"):
            starts.start_configs(base, bad)


def test_the_lowest_final_loss_is_kept_and_the_run_folder_holds_every_start(series, tmp_path):
    out = tmp_path / "run"
    result = starts.reconstruct_starts(series, FAST, n_starts=2, out_dir=out, progress=False,
                                       figures=False)  # fmt: skip
    record = result.report["starts"]
    losses = [s["loss_final"] for s in record["starts"]]
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert record["best"] == int(np.argmin(losses))
    # the winner is exactly that start run alone (the same settings, the same fit)
    alone = reconstruct(series, starts.start_configs(FAST, 2)[record["best"]], progress=False,
                        figures=False)  # fmt: skip
    np.testing.assert_array_equal(result.positions_A, alone.positions_A)
    assert starts.final_loss(alone.report) == losses[record["best"]]
    # the folder: a run folder per start, the summary and the winner's atoms
    for k in (0, 1):
        assert (out / f"start_{k}" / "report.json").is_file()
    assert json.loads((out / starts.STARTS_FILE).read_text())["best"] == record["best"]
    back = read_extxyz(out / "atoms.extxyz")
    np.testing.assert_allclose(back["positions_A"], result.positions_A, atol=1e-6)
    # a second call neither replaces nor mixes: refused without resume / overwrite ...
    with pytest.raises(Exception, match="resume|overwrite"):
        starts.reconstruct_starts(series, FAST, n_starts=2, out_dir=out, progress=False,
                                  figures=False)  # fmt: skip
    # ... and resumed, the same winner
    again = starts.reconstruct_starts(series, FAST, n_starts=2, out_dir=out, resume=True,
                                      progress=False, figures=False)  # fmt: skip
    assert again.report["starts"]["best"] == record["best"]
    np.testing.assert_array_equal(again.positions_A, result.positions_A)


def test_final_loss_skips_non_finite_entries():
    assert starts.final_loss({"history": {"loss": [3.0, 2.0, None]}}) == 2.0
    assert starts.final_loss({"history": {"loss": [None]}}) == float("inf")
