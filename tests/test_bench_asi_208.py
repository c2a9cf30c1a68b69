"""A short run of the aSi_208 benchmark (preset conf/experiment/asi_208.yaml) on the
third-party data; skips when ../shared/data is absent."""

import json
import pathlib
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import bench_asi_208 as bench  # noqa: E402

pytestmark = pytest.mark.data


def test_quick_preset_run_finds_the_particle_and_reproduces_the_published_score(
    shared_data, tmp_path, monkeypatch
):
    monkeypatch.setattr(bench, "CACHE", tmp_path / "cache")
    argv = ["--quick", "--variants", "mse", "--data-root", str(shared_data),
            "--out", str(tmp_path)]  # fmt: skip
    assert bench.main(argv) == 0
    res = json.loads((tmp_path / "results_asi_208.json").read_text())
    assert (tmp_path / "asi_208.png").is_file() and (tmp_path / "asi_208_mse.extxyz").is_file()
    pub = res["rows"]["published"]
    # the published pipeline's own figure, reproduced by its scoring
    assert pub["aet_rmsd_pm"] == pytest.approx(17.3, abs=0.05) and pub["aet_n_matched"] == 208
    ours = res["rows"]["atomjax mse"]
    assert ours["loss"] == "mse" and ours["mode"] == "direct" and "positions_A" not in pub
    # a quick run (2 × 60 steps) is far from converged, but every atom is there
    print("\nquick aSi_208:", {k: ours[k] for k in ("n_matched", "n_false_positive", "rmsd_pm",
                                                   "aet_rmsd_pm", "r_factor")})  # fmt: skip
    assert ours["n_matched"] >= 200 and ours["n_false_positive"] <= 4, ours
    assert ours["rmsd_pm"] < 25 and ours["aet_rmsd_pm"] < 30, ours
