"""Several starts kept by their final loss (atomjax.starts)."""

import dataclasses
import json

import numpy as np
import pytest
from helpers import TWO_PHASES, noisy_small_au_series

from atomjax import apps, io, pipeline, runfolder, starts, uncertainty
from atomjax.outputs import read_extxyz
from atomjax.reconstruct import ReconstructConfig, reconstruct

FAST = TWO_PHASES


@pytest.fixture(scope="module")
def series():
    return noisy_small_au_series()


def test_start_configs_vary_only_the_start_tomogram():
    base = ReconstructConfig(**FAST, restarts=1)
    configs = starts.start_configs(base, starts.MAX_STARTS)
    # no restarts within a start: the other starts measure the search instead
    assert {c.restarts for c in configs} == {0}
    assert dataclasses.replace(configs[0], restarts=base.restarts) == base
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
    # the σ: the winner's own widened by the search's error, from the other start's atoms
    other = read_extxyz(out / f"start_{1 - record['best']}" / "atoms.extxyz")["positions_A"]
    search = uncertainty.search_variance(result.positions_A, [other])
    for j, axis in enumerate("xyz"):
        name = f"sigma_{axis}_A"
        widened = np.sqrt(alone.sigmas[name] ** 2 + search[:, j])
        np.testing.assert_allclose(result.sigmas[name], widened, rtol=1e-6)
        np.testing.assert_allclose(back["columns"][name], widened, rtol=1e-6)
        np.testing.assert_allclose(back["columns"][f"sigma_search_{axis}_A"],
                                   np.sqrt(search[:, j]), rtol=1e-6, atol=1e-12)  # fmt: skip
    u = result.report["uncertainty"]
    assert u["statistical"]["predicted_rmsd_pm"] == alone.report["uncertainty"]["predicted_rmsd_pm"]
    assert u["predicted_rmsd_pm"] >= u["statistical"]["predicted_rmsd_pm"]
    assert u["search"]["fits_compared"] == 1 and "z_std" in u["calibration"]
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


# ------------------------------------------------------------------ through the app


def _app(overrides):
    return apps.compose("reconstruct", overrides)


def _run_app(overrides, out):
    return apps.reconstruct_task(_app(overrides), out, overrides=list(overrides))


def test_the_app_runs_starts_into_one_guarded_run_folder(series, tmp_path, capsys):
    data = io.save_tilt_series(series, tmp_path / "series.npz")
    out = tmp_path / "run"
    first = ["data=file", f"data.path={data}", "optim.n_phases=2", "optim.steps_per_phase=30",
             "init.sirt_iterations=3", "progress=false", "figures=false", "starts=2",
             "max_phases=1"]  # fmt: skip
    _run_app(first, out)
    text = capsys.readouterr().out
    # max_phases counts phases per call, as for one run: start 1 stops after its first
    assert "stopped as max_phases asked, in start 1 of 2, after 1 of 2 phases" in text
    assert str(out / "start_0" / "atoms.extxyz") in text
    assert "interrupted  ← stopped here" in text
    listed = next(line for line in text.splitlines() if line.startswith("outputs:"))
    assert "start_0" in listed and "report.json" not in listed  # only what exists so far
    record = runfolder.read_record(out)
    assert record["status"] == "interrupted" and record["parts"] == ["start_0", "start_1"]
    assert runfolder.inspect(out).has_checkpoint  # resumable through its parts
    assert not (out / "start_1").exists()
    # a new run into it is refused, naming the way out
    with pytest.raises(runfolder.RunFolderError, match="overwrite=true"):
        _run_app(first[:-1], out)

    # resumed from the folder alone: start 1 continues, start 2 runs, the lowest loss wins
    _run_app(["resume=true", "progress=false"], out)
    report = json.loads((out / "report.json").read_text())
    best = report["starts"]["best"]
    losses = [s["loss_final"] for s in report["starts"]["starts"]]
    assert report["status"] == "finished" and best == int(np.argmin(losses))
    kept, own = (
        read_extxyz(out / "atoms.extxyz"),
        read_extxyz(out / f"start_{best}" / "atoms.extxyz"),
    )
    np.testing.assert_array_equal(kept["positions_A"], own["positions_A"])
    assert "sigma_search_z_A" in kept["columns"]  # its σ widened by the other start
    assert runfolder.read_record(out)["status"] == "finished"
    assert (out / "truth.extxyz").is_file()
    # the same as one call of the library, uninterrupted
    config = pipeline.config_from_settings(_app(first))
    alone = starts.reconstruct_starts(series, config, n_starts=2, progress=False, figures=False)
    np.testing.assert_allclose(read_extxyz(out / "atoms.extxyz")["positions_A"],
                               alone.positions_A, atol=1e-6)  # fmt: skip

    # overwrite replaces the whole run: a single run leaves no start folders behind
    _run_app([*first[:-2], "starts=1", "overwrite=true"], out)
    assert not (out / "start_0").exists() and not (out / "starts.json").exists()
    assert (out / "checkpoint").is_dir()
    # ... and a single run is not resumed as starts
    with pytest.raises(runfolder.RunFolderError, match="single run"):
        starts.reconstruct_starts(series, FAST, n_starts=2, out_dir=out, resume=True,
                                  progress=False, figures=False)  # fmt: skip


@pytest.mark.parametrize("bad", ["0", "5", "2.5"])
def test_a_bad_start_count_is_refused_before_any_work(tmp_path, bad):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="n_starts must be an integer from 1 to 4"):
        _run_app([f"starts={bad}", "data=file", "data.path=missing.npz"], out)
    assert not out.exists()


def test_a_stop_between_two_starts_ends_the_run_as_interrupted(series, tmp_path, monkeypatch):
    from atomjax import interrupt

    real = starts.reconstruct

    def then_a_signal(*args, **kwargs):  # a SIGINT lands as the first start ends
        result = real(*args, **kwargs)
        interrupt._ACTIVE[-1].request("SIGINT")
        return result

    monkeypatch.setattr(starts, "reconstruct", then_a_signal)
    out = tmp_path / "run"
    result = starts.reconstruct_starts(series, FAST, n_starts=2, out_dir=out, progress=False,
                                       figures=False)  # fmt: skip
    assert result.report["status"] == "interrupted" and result.report["stopped_by"] == "SIGINT"
    assert [s["status"] for s in result.report["starts"]["starts"]] == ["finished"]
    assert runfolder.read_record(out)["status"] == "interrupted"
    assert not (out / "start_1").exists() and not (out / "report.json").exists()
    # resumed, the second start runs and the run ends
    monkeypatch.setattr(starts, "reconstruct", real)
    again = starts.reconstruct_starts(series, FAST, n_starts=2, out_dir=out, resume=True,
                                      progress=False, figures=False)  # fmt: skip
    assert again.report["status"] == "finished" and len(again.report["starts"]["starts"]) == 2
