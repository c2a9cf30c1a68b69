"""Run folders a user can trust: no silent overwrite, resume from the folder alone, a
signal keeps the work, clear errors (issue 15). Each test reproduces one reported case."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from helpers import small_au_series

from atomjax import apps, fit, io, pipeline, runfolder
from atomjax.data import TiltSeries
from atomjax.outputs import read_extxyz
from atomjax.reconstruct import ReconstructConfig, reconstruct

FAST = {
    "optim": {"n_phases": 3, "steps_per_phase": 40},
    "init": {"method": "peaks", "sirt_iterations": 5},
}


@pytest.fixture(scope="module")
def series():
    return small_au_series(4.5, 7, margin_A=3.0)


def _files(folder) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != runfolder.LOCK_NAME
    }


#: Adam for every step of every phase: the pieces fall where a test expects them
ADAM = ReconstructConfig(init=FAST["init"], optim={**FAST["optim"], "method": "adam",
                                                   "converge": False})  # fmt: skip


def _run(series, out, config=None, **kwargs):
    kwargs.setdefault("figures", False)
    config = ReconstructConfig(**FAST) if config is None else config
    return reconstruct(series, config, out_dir=out, progress=False, **kwargs)


# ------------------------------------------------------------- 1. never overwrite silently


def test_a_finished_run_is_refused_and_left_as_it_was(series, tmp_path):
    out = tmp_path / "run"
    _run(series, out, figures=True)
    before = _files(out)
    assert json.loads((out / "run.json").read_text())["status"] == "finished"
    with pytest.raises(runfolder.RunFolderError, match="finished run.*overwrite=true.*resume"):
        _run(series, out)
    # max_phases=1 on a finished folder used to send its checkpoint back to phase 1
    with pytest.raises(runfolder.RunFolderError, match="finished run"):
        _run(series, out, max_phases=1)
    assert _files(out) == before


def test_overwrite_replaces_the_outputs_as_one_set(series, tmp_path):
    out = tmp_path / "run"
    _run(series, out, figures=True)
    (out / "notes.txt").write_text("the user's own file")
    (out / "truth.extxyz").write_text("an old truth file")
    result = _run(series, out, overwrite=True, max_phases=1)  # no figures this time
    left = {p.name for p in out.iterdir()}
    assert "projections.png" not in left and "truth.extxyz" not in left  # not this run's
    assert "notes.txt" in left  # not atomjax's
    record = runfolder.read_record(out)
    assert set(record["outputs"]) == {"atoms.extxyz", "report.json", "checkpoint"}
    assert record["status"] == "interrupted" and result.report["stopped_by"] == "max_phases"


def test_a_folder_another_process_writes_into_is_refused(series, tmp_path):
    out = tmp_path / "busy"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from atomjax import runfolder
            with runfolder.claim({str(out)!r}):
                print("holding", flush=True)
                time.sleep(60)
        """)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "holding"
        assert runfolder.inspect(out).status == "running"
        with pytest.raises(
            runfolder.RunFolderError, match=rf"writing into .* now \(process {holder.pid}\)"
        ):  # noqa: E501
            _run(series, out)
        with pytest.raises(runfolder.RunFolderError, match="writing into"):
            _run(series, out, overwrite=True)
    finally:
        holder.kill()
        holder.wait()
    assert runfolder.inspect(out).status == "empty"  # the lock went with the process


# ------------------------------------------------------------ 3. the same series, by content


def test_resume_refuses_the_same_images_flipped(series, tmp_path):
    out = tmp_path / "run"
    _run(series, out, max_phases=1)
    flipped = series.replace(images=series.images[:, ::-1, :].copy())
    assert flipped.image_shape == series.image_shape
    with pytest.raises(ValueError, match="differs from the one this run was started with"):
        _run(flipped, out, resume=True)
    angles = series.replace(euler_deg=series.euler_deg * [1, -1, 1])
    with pytest.raises(ValueError, match="differs from the one this run was started with"):
        _run(angles, out, resume=True)
    _run(series, out, resume=True)  # the right one continues


# ------------------------------------------------------------ Ctrl-C keeps the work


def test_a_signal_mid_phase_keeps_the_work_and_resume_is_bit_identical(
    series, tmp_path, monkeypatch
):
    full = _run(series, tmp_path / "full", config=ADAM)
    pieces = []
    original = fit.run_steps

    def run_steps_then_sigterm(*args, **kwargs):
        out = original(*args, **kwargs)
        pieces.append(1)
        if len(pieces) == 11:  # a real SIGTERM, in phase 2 (8 pieces a phase)
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(fit, "run_steps", run_steps_then_sigterm)
    out = tmp_path / "cut"
    part = _run(series, out, figures=True, config=ADAM)  # the loss figure of a phase cut short
    monkeypatch.setattr(fit, "run_steps", original)
    assert part.report["status"] == "interrupted" and part.report["stopped_by"] == "SIGTERM"
    assert part.report["progress"] == {"phase": 1, "step": 15, "n_phases": 3,
                                       "steps_per_phase": 40}  # fmt: skip
    saved = json.loads((out / "checkpoint" / "checkpoint.json").read_text())
    assert (saved["phase"], saved["step"]) == (1, 15)
    assert runfolder.read_record(out)["status"] == "interrupted"
    assert (out / "atoms.extxyz").is_file() and (out / "loss.png").is_file()
    resumed = _run(series, out, resume=True, config=ADAM)
    assert resumed.report["status"] == "finished"
    np.testing.assert_array_equal(resumed.positions_A, full.positions_A)
    np.testing.assert_array_equal(resumed.widths_A2, full.widths_A2)
    assert resumed.report["history"]["loss"] == full.report["history"]["loss"]
    assert _untimed(resumed.report["history"]["phases"]) == _untimed(
        full.report["history"]["phases"]
    )  # the seconds are wall-clock times, different in every run


def _untimed(phases):
    """The phase records without their wall-clock seconds, which must be there."""
    for record in phases:
        assert all(record[k] >= 0 for k in record if k.endswith("_seconds")), record
        assert "fit_seconds" in record, record
    return [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in phases]


# ------------------------------------------------------------ 4. clear messages


def test_empty_series_and_impossible_resumes_are_named(series, tmp_path):
    with pytest.raises(ValueError, match="holds no images"):
        TiltSeries(np.zeros((0, 8, 8)), np.zeros((0, 3)), 0.5)
    with pytest.raises(ValueError, match=r"0 × 0 px"):
        TiltSeries(np.zeros((3, 0, 0)), np.zeros((3, 3)), 0.5)
    with pytest.raises(ValueError, match="resume=True needs out_dir"):
        reconstruct(series, ReconstructConfig(**FAST), resume=True, progress=False)
    no_ckpt = ReconstructConfig(checkpoint=False, **FAST)
    with pytest.raises(ValueError, match="checkpoint=False"):
        reconstruct(series, no_ckpt, out_dir=tmp_path / "a", resume=True, progress=False)
    reconstruct(series, no_ckpt, out_dir=tmp_path / "b", progress=False, figures=False)
    with pytest.raises(runfolder.RunFolderError, match="no checkpoint.*cannot be resumed"):
        reconstruct(series, ReconstructConfig(**FAST), out_dir=tmp_path / "b", resume=True)
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        reconstruct(series, ReconstructConfig(**FAST), out_dir=tmp_path / "c", resume=True)


# ------------------------------------------------------------ 5. minor


def test_tlt_errors_name_the_file_line(tmp_path):
    import mrcfile

    with mrcfile.new(tmp_path / "ts.mrc") as mrc:
        mrc.set_data(np.zeros((3, 4, 6), np.float32))
        mrc.voxel_size = 0.25
    (tmp_path / "ts.tlt").write_text("# tilts in degrees\n-30\n\n0\nthirty\n")
    with pytest.raises(ValueError, match=r"line 5 of .*ts\.tlt: 'thirty' is not a number"):
        io.read_mrc_series(tmp_path / "ts.mrc")
    (tmp_path / "ts.tlt").write_text("-30\n0\n30\n")
    data = {"kind": "mrc", "path": str(tmp_path / "ts.mrc"), "tilt_sign": 0}
    with pytest.raises(ValueError, match="tilt_sign must be 1 or -1, got 0"):
        pipeline.load_series(data)
    assert pipeline.load_series({**data, "tilt_sign": -1}).euler_deg[0, 1] == 30


def test_tilt_series_files_are_readable_by_others(series, tmp_path):
    path = io.save_tilt_series(series, tmp_path / "s.npz")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    os.chmod(path, 0o640)
    io.save_tilt_series(series, path)  # a replaced file keeps its mode
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


# ------------------------------------------------------------ 2. the app resumes from the folder


def _app_settings(overrides):
    return apps.compose("reconstruct", overrides), list(overrides)


def test_app_resumes_from_the_folder_alone_and_keeps_its_record(series, tmp_path, capsys):
    data = io.save_tilt_series(series, tmp_path / "series.npz")
    out = tmp_path / "run"
    first = ["data=file", f"data.path={data}", "optim.n_phases=3", "optim.steps_per_phase=40",
             "optim.converge=false", "init.sirt_iterations=5", "progress=false",
             "figures=false", "max_phases=1"]  # fmt: skip
    cfg, overrides = _app_settings(first)
    apps.reconstruct_task(cfg, out, overrides=overrides)
    hydra_config = (out / ".hydra" / "config.yaml").read_text()
    assert "series.npz" in hydra_config and "max_phases: 1" in hydra_config
    record = runfolder.read_record(out)
    assert record["app"]["settings"]["data"]["path"] == str(data)  # absolute
    assert record["series"]["sha256"] == series.fingerprint()
    capsys.readouterr()

    # the README's command: nothing but resume and the folder (no simulated default series)
    cfg, overrides = _app_settings(["resume=true", "progress=false"])
    apps.reconstruct_task(cfg, out, overrides=overrides)
    assert "resuming 7 images" in capsys.readouterr().out
    assert (out / ".hydra" / "config.yaml").read_text() == hydra_config  # left as it was
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "finished" and len(report["history"]["phases"]) == 3

    # a setting that differs from the record is refused by name; more phases are allowed
    cfg, overrides = _app_settings(["resume=true", "optim.lr_positions_A=0.5"])
    with pytest.raises(ValueError, match=r"optim\.lr_positions_A=0\.5 differs .*record"):
        apps.reconstruct_task(cfg, out, overrides=overrides)
    cfg, overrides = _app_settings(["resume=true", "mode=rigid"])
    with pytest.raises(ValueError, match=r"^mode=.*differs"):
        apps.reconstruct_task(cfg, out, overrides=overrides)
    cfg, overrides = _app_settings(["resume=true", "progress=false", "optim.n_phases=4"])
    apps.reconstruct_task(cfg, out, overrides=overrides)
    assert len(json.loads((out / "report.json").read_text())["history"]["phases"]) == 4
    # a new run into it is refused before anything is loaded or written
    cfg, overrides = _app_settings(["data=file", "data.path=missing.npz"])
    with pytest.raises(runfolder.RunFolderError, match="overwrite=true"):
        apps.reconstruct_task(cfg, out, overrides=overrides)


def _app(args, cwd, **kwargs):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "", "JAX_ENABLE_X64": "0",
           "PYTHONUNBUFFERED": "1"}  # fmt: skip
    return subprocess.Popen(["atomjax-reconstruct", *args], cwd=cwd, env=env, text=True,
                            **kwargs)  # fmt: skip


@pytest.mark.slow
def test_sigint_to_the_app_then_resume_equals_an_uninterrupted_run(series, tmp_path):
    data = io.save_tilt_series(series, tmp_path / "series.npz")
    settings = ["data=file", f"data.path={data}", "optim.n_phases=2", "optim.steps_per_phase=60",
                "init.sirt_iterations=5", "progress=false", "figures=false"]  # fmt: skip
    full = _app([*settings, f"hydra.run.dir={tmp_path / 'full'}"], tmp_path)
    log = tmp_path / "cut.out"
    with open(log, "w") as fh:
        cut = _app([*settings, f"hydra.run.dir={tmp_path / 'cut'}"], tmp_path, stdout=fh,
                   stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.time() + 300
        while "reconstructing" not in log.read_text() and time.time() < deadline:
            time.sleep(0.05)
        cut.send_signal(signal.SIGINT)
        assert cut.wait(timeout=300) == 130, log.read_text()[-3000:]
    text = log.read_text()
    assert "Traceback" not in text
    command = f"atomjax-reconstruct resume=true hydra.run.dir={(tmp_path / 'cut').resolve()}"
    assert command in text, text[-2000:]
    assert json.loads((tmp_path / "cut" / "report.json").read_text())["status"] == "interrupted"
    assert "stopped by SIGINT" in (tmp_path / "cut" / "reconstruct.log").read_text()

    resumed = _app(command.split()[1:], tmp_path, stdout=subprocess.PIPE,
                   stderr=subprocess.STDOUT)  # fmt: skip
    output = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, output[-3000:]
    assert full.wait(timeout=600) == 0

    def atoms(run):
        return read_extxyz(tmp_path / run / "atoms.extxyz")

    report = {r: json.loads((tmp_path / r / "report.json").read_text()) for r in ("full", "cut")}
    assert report["cut"]["history"]["loss"] == report["full"]["history"]["loss"]
    for key in ("positions_A", "widths_A2", "amplitudes"):
        np.testing.assert_array_equal(atoms("cut")[key], atoms("full")[key])
    # the log holds both calls: the interrupted one, then the resumed one
    logged = (tmp_path / "cut" / "reconstruct.log").read_text()
    assert logged.index("reconstructing") < logged.index("resuming") < logged.rindex("RMSD")
