"""The ta_film benchmark (benchmarks/bench_ta_film.py): its core geometry, and a short run
of the preset on the real data (skipped when ../shared/data is absent)."""

import pathlib
import sys

import numpy as np
import pytest

BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import bench_ta_film as btf  # noqa: E402

from atomjax import apps, io  # noqa: E402
from atomjax.data import TiltSeries  # noqa: E402
from atomjax.geometry import euler_from_tilts_deg  # noqa: E402

# A short version of the preset: the preset's box, init and adapt settings, fewer and
# shorter phases (about a minute on 2 CPU cores in float64).
TEST_OVERRIDES = ["optim.n_phases=3", "optim.steps_per_phase=40"]


def toy_series(tilts_deg, shape=(101, 41), pixel_A=0.4) -> TiltSeries:
    m = len(tilts_deg)
    return TiltSeries(np.zeros((m, *shape), np.float32), euler_from_tilts_deg(tilts_deg), pixel_A)


def test_core_is_what_every_image_sees():
    s = toy_series([-60.0, 0.0, 60.0])  # u half-width 20 Å, v half-width 8 Å
    pts = np.array([
        [0.0, 0.0, 0.0],     # centre: core
        [15.0, 0.0, 0.0],    # inside at 0°, at ±60° u = 7.5: core
        [0.0, 0.0, 15.0],    # u = ±13 at ±60°: core
        [0.0, 0.0, 21.0],    # u = ±18.2 at ±60°: inside, but within the 2 Å margin
        [30.0, 0.0, 0.0],    # outside the crop at 0° (seen at ±60°: u = 15)
        [0.0, 7.5, 0.0],     # within 2 Å of the v edge
        [0.0, 12.0, 0.0],    # beyond the v edge: seen by no image
    ])  # fmt: skip
    np.testing.assert_array_equal(btf.in_core(s, pts, 2.0), [1, 1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(btf.in_core(s, pts, 0.0), [1, 1, 1, 1, 0, 1, 0])
    np.testing.assert_array_equal(btf.in_some_image(s, pts, 0.0), [1, 1, 1, 1, 1, 1, 0])


def test_core_scores_count_matches_in_the_core():
    s = toy_series([-60.0, 0.0, 60.0])
    rng = np.random.default_rng(0)
    ref = rng.uniform([-12, -5, -10], [12, 5, 10], (60, 3))
    found = ref + rng.normal(0, 0.05, ref.shape)
    found[:6] += [2.0, 0.0, 0.0]  # 6 atoms moved far: 6 misses and 6 false positives
    sc = btf.core_scores(s, found, ref, margin_A=0.0)
    assert sc["n_reference_core"] == sc["n_found_core"] == 60
    assert sc["n_matched_core"] == 54
    assert sc["tp_core"] == pytest.approx(0.9) and sc["fp_core"] == pytest.approx(0.1)
    assert 5 < sc["rmsd_core_pm"] < 12  # σ = 5 pm per axis: ~8.7 pm


def test_preset_never_reads_the_reference():
    cfg = apps.compose("reconstruct", ["data=ta_film", "+experiment=ta_film"])
    assert cfg["data"]["truth"] is None
    assert cfg["mode"]["name"] == "direct"
    box = cfg["init"]["box_A"]
    assert box[0] > 3 * 131 * io.TA_FILM_PIXEL_SIZE_A  # well past the crop along x


@pytest.mark.data
def test_ta_film_preset_short_run(shared_data, tmp_path):
    cfg = btf.compose_settings(shared_data, quick=False, extra=TEST_OVERRIDES)
    assert cfg["optim"]["n_phases"] == 3
    series = io.load_dataset("ta_film", shared_data)
    blind = series.replace(atoms_positions_A=None, atoms_species=None)
    res, obs, calc, _ = btf.run_ours(cfg, blind, tmp_path / "run")
    assert res.report["series"]["n_angles"] == 46
    assert "metrics" not in res.report  # it was given no reference
    sc = btf.core_scores(series, res.positions_A, series.atoms_positions_A)
    rf = btf.r_factors(obs, calc, series.euler_deg[:, 1])
    print(f"\nta_film short run: {len(res.positions_A)} atoms, core TP {sc['tp_core']:.3f} "
          f"FP {sc['fp_core']:.3f} RMSD {sc['rmsd_core_pm']:.1f} pm, "
          f"R {rf['mean']:.4f}")  # fmt: skip
    # the core holds ~400 reference atoms; random atoms at the film's density would
    # match ~5 % of them within 0.75 Å
    assert sc["n_reference_core"] > 300
    assert sc["tp_core"] > 0.4 and sc["fp_core"] < 0.5
    assert sc["rmsd_core_pm"] < 45
    # the published model's own (fixed-position) fit gives R ≈ 0.25
    assert np.isfinite(rf["mean"]) and rf["mean"] < 0.32
    # atoms beyond the crop's edges were fitted (material that enters at high tilt)
    edge = 131 // 2 * io.TA_FILM_PIXEL_SIZE_A
    assert np.sum(np.abs(res.positions_A[:, 0]) > edge + 2.0) > 10
