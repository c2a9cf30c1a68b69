"""The Hydra apps and their configs: defaults agree with the library, every option
composes, the installed console script runs a sweep, and bad input fails clearly."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from atomjax import (
    AdaptConfig,
    InitConfig,
    OptimConfig,
    ProbeSettings,
    apps,
    io,
    pipeline,
    simulate,
    structures,
)
from atomjax.outputs import read_json, write_extxyz
from atomjax.reconstruct import ReconstructConfig

CONF = apps.CONF_DIR
OPTIONS = {g: sorted(p.stem for p in (CONF / g).glob("*.yaml")) for g in
           ("data", "mode", "probe", "init", "optim", "adapt", "experiment")}  # fmt: skip


def _compose(name: str, overrides=()) -> dict:
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=name, overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=True)


def _defaults(cls) -> dict:
    return {
        f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
        for f in dataclasses.fields(cls)
    }


_build = pipeline.config_from_settings


# ------------------------------------------------------------------ the configs


def test_config_defaults_equal_the_library_defaults():
    cfg = _compose("reconstruct")
    assert cfg["init"] == _defaults(InitConfig)
    assert cfg["optim"] == _defaults(OptimConfig)
    assert cfg["adapt"] == _defaults(AdaptConfig)
    library = _defaults(ReconstructConfig)
    groups = {"mode", "probe_fit", "focus_per_image", "probe_depth_rank", "probe_centred"}
    groups |= {"probe", "init", "optim", "adapt", "seed"}
    assert set(cfg["reconstruct"]) == set(library) - groups  # every setting is reachable
    for key, value in cfg["reconstruct"].items():
        assert value == library[key], key
    probe = ProbeSettings().to_dict()
    assert cfg["probe"] == pytest.approx(probe)
    sim = {k: v for k, v in cfg["data"].items() if k not in ("kind", "truth", "probe")}
    assert sim == {k: v for k, v in pipeline.SIMULATED_DEFAULTS.items() if k != "probe"}
    assert cfg["data"]["probe"] == cfg["probe"]  # physical simulations use the same probe
    # the first command is the built-in example: a 135-atom Au particle, 15 tilts, direct
    assert cfg["mode"]["name"] == "direct" and cfg["data"]["kind"] == "simulated"
    particle = structures.build_particle(**{
        "kind": cfg["data"]["particle"]["kind"], "element": cfg["data"]["particle"]["element"],
        "size_A": cfg["data"]["particle"]["size_A"],
    })  # fmt: skip
    assert len(particle) == 135
    assert len(simulate.parse_tilts(cfg["data"]["tilts"])) == 15


@pytest.mark.parametrize(
    "group, option",
    [(g, o) for g in ("mode", "init", "optim", "adapt", "experiment") for o in OPTIONS[g]],
)
def test_every_option_composes_to_a_valid_config(group, option):
    prefix = "+" if group == "experiment" else ""
    cfg = _compose("reconstruct", [f"{prefix}{group}={option}"])
    config = _build(cfg)
    if group == "mode":
        assert config.mode == cfg["mode"]["name"] in ("direct", "rigid", "adaptive")
    if group == "init":
        assert config.init.method == option
    pipeline.simulation_spec(cfg["data"]) if cfg["data"]["kind"] == "simulated" else None


def test_modes_differ_as_documented():
    built = {o: _build(_compose("reconstruct", [f"mode={o}"])) for o in OPTIONS["mode"]}
    assert {o: (c.mode, c.probe_fit) for o, c in built.items() if c.mode == "adaptive"} == {
        "adaptive": ("adaptive", "pixel"),
        "adaptive_physical": ("adaptive", "physical"),
    }
    assert built["direct"].mode == "direct" and built["rigid"].mode == "rigid"


@pytest.mark.parametrize("option", [o for o in OPTIONS["data"] if o != "simulated"])
def test_data_options_name_their_required_files(option):
    cfg = _compose("reconstruct", [f"data={option}"])
    assert cfg["data"]["kind"] in pipeline.DATA_KINDS
    data = {k: (None if v == "???" else v) for k, v in cfg["data"].items()}
    if data["kind"] == "dataset":
        data["root"] = "/nonexistent/shared/data"
        with pytest.raises(FileNotFoundError, match="data.root"):
            pipeline.load_series(data)
    else:
        with pytest.raises(ValueError, match=r"data\.\w+ must be given"):
            pipeline.load_series(data)


def test_simulated_experiment_presets_are_what_they_say():
    wedge = _compose("reconstruct", ["+experiment=missing_wedge"])
    assert len(simulate.parse_tilts(wedge["data"]["tilts"])) == 47  # ±70° at 3°
    assert wedge["data"]["noise_std_rel"] == 0.05
    prism = _compose("reconstruct", ["+experiment=modes_prism", "mode=rigid"])
    assert prism["data"]["protocol"] == "physical" and prism["mode"]["name"] == "rigid"


def test_third_party_preset_reads_the_dataset_and_not_its_truth():
    cfg = apps.compose("reconstruct", ["+experiment=asi_208"])
    assert cfg["data"] == {**cfg["data"], "kind": "dataset", "name": "aSi_208", "truth": None}
    config = _build(cfg)
    assert config.mode == "direct" and config.adapt.residual == "signed"


# ------------------------------------------------------------------ the pipeline


def test_load_series_reads_files_and_attaches_truth(tmp_path):
    particle = structures.fcc_sphere("Au", 4.5)
    series = simulate.simulate_fast(particle, [-30.0, 0.0, 30.0], progress=False)
    path = io.save_tilt_series(series.replace(atoms_positions_A=None, atoms_species=None),
                               tmp_path / "s.npz")  # fmt: skip
    truth = tmp_path / "truth.xyz"
    particle.write(truth)
    loaded = pipeline.load_series({"kind": "file", "path": str(path), "truth": str(truth)})
    np.testing.assert_array_equal(loaded.images, series.images)
    np.testing.assert_allclose(loaded.atoms_positions_A, particle.positions, atol=1e-6)
    assert list(loaded.atoms_species) == ["Au"] * len(particle)
    with pytest.raises(ValueError, match=r"does not take \['pixel_size'\]"):
        pipeline.load_series({"kind": "file", "path": str(path), "pixel_size": 1.0})
    with pytest.raises(ValueError, match="data.kind must be one of"):
        pipeline.load_series({"kind": "hdf5", "path": str(path)})
    with pytest.raises(FileNotFoundError, match="not found"):
        pipeline.load_series({"kind": "file", "path": str(tmp_path / "missing.npz")})


def test_simulated_series_is_cached_by_its_settings(tmp_path):
    data = {"kind": "simulated", "particle": {"size_A": 4.5}, "tilts": "-30:30:30"}
    first = pipeline.load_series(data, cache_dir=tmp_path, progress=False)
    cached = list(tmp_path.glob("*.npz"))
    assert len(cached) == 1 and len(first.atoms_positions_A) == 19
    again = pipeline.load_series(data, cache_dir=tmp_path, progress=False)
    np.testing.assert_array_equal(again.images, first.images)
    assert len(list(tmp_path.glob("*.npz"))) == 1  # read back, not simulated again
    noisy = pipeline.load_series({**data, "noise_std_rel": 0.1}, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 2 and not np.allclose(noisy.images, first.images)
    with pytest.raises(ValueError, match="data.particle does not take"):
        pipeline.load_series({**data, "particle": {"radius": 4}})
    with pytest.raises(ValueError, match="protocol"):
        pipeline.load_series({**data, "protocol": "exact"})


def test_simulate_then_evaluate_tasks(tmp_path, capsys):
    cfg = _compose("simulate", ["data.particle.size_A=4.5", "data.tilts=-30:30:30",
                                "data.dose_e_per_A2=500", "progress=false"])  # fmt: skip
    out = apps.simulate_task(cfg, tmp_path)
    series = io.load_tilt_series(out)
    assert out == str(tmp_path / "series.npz")
    assert series.n_angles == 3 and series.dose_e_per_A2 == 500
    assert series.provenance["simulation"]["particle"]["size_A"] == 4.5
    assert "19 atoms" in capsys.readouterr().out
    with pytest.raises(ValueError, match="needs data=simulated"):
        apps.simulate_task(_compose("simulate", ["data=file", "data.path=x"]), tmp_path)

    # evaluate: a run folder with truth.extxyz, one atom moved by 0.1 Å and one extra
    truth = series.atoms_positions_A
    found = np.vstack([truth + [0.1, 0.0, 0.0], [[9.0, 9.0, 9.0]]])
    apps._write_truth(tmp_path / "truth.extxyz", truth, series.atoms_species)
    apps._write_truth(tmp_path / "atoms.extxyz", found, None)
    cfg = _compose("evaluate", [f"found={tmp_path}", f"json={tmp_path / 'score.json'}"])
    result = apps.evaluate_task(cfg)
    assert result["n_matched"] == 19 and result["n_found"] == 20
    assert result["rmsd_pm"] == pytest.approx(10.0, abs=1e-6)
    assert read_json(tmp_path / "score.json")["fp_rate"] == pytest.approx(1 / 20)
    assert result["confusion"] is None  # unclassified found atoms ("X") are not scored
    assert "TP rate" in capsys.readouterr().out
    assert "calibration" not in result  # no σ columns
    # found atoms with error bars (σ 0.1 Å): the calibration of the matched ones
    from atomjax.uncertainty import SIGMA_NAMES

    write_extxyz(tmp_path / "atoms.extxyz", found, np.full(20, 0.5), np.ones(20),
                 columns={k: np.full(20, 0.1) for k in SIGMA_NAMES})  # fmt: skip
    result = apps.evaluate_task(cfg)
    assert result["calibration"]["z_mean"] == pytest.approx([1, 0, 0])  # all moved by 1σ
    assert "within 1σ" in capsys.readouterr().out
    with pytest.raises(ValueError, match="truth must be given"):
        apps.evaluate_task(_compose("evaluate", [f"found={tmp_path / 'atoms.extxyz'}"]))


def _run_app(args, cwd, timeout=600):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "", "JAX_ENABLE_X64": "0"}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_app_reports_bad_input_in_one_line(tmp_path):
    done = _run_app(["atomjax-reconstruct", "data=file", "data.path=nope.npz"], tmp_path)
    assert done.returncode == 2
    assert "atomjax-reconstruct: error: tilt-series file not found: nope.npz" in done.stderr
    assert "Traceback" not in done.stderr
    done = _run_app(["atomjax-reconstruct", "data=mrc"], tmp_path)
    assert done.returncode == 1 and "required setting is missing: data.path" in done.stderr


# ------------------------------------------------------------------ the console script


@pytest.mark.slow
def test_multirun_over_the_three_modes_writes_one_result_per_run(tmp_path):
    command = [
        "atomjax-reconstruct", "-m", "mode=direct,rigid,adaptive",
        "data.particle.size_A=4.5", "data.tilts=-60:60:30", "optim=quick",
        "figures=false", "progress=false", f"cache_dir={tmp_path / 'cache'}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]  # fmt: skip
    done = _run_app(command, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    reports = sorted((tmp_path / "sweep").glob("*/report.json"))
    assert len(reports) == 3
    modes = [json.loads(r.read_text())["settings"]["mode"] for r in reports]
    assert modes == ["direct", "rigid", "adaptive"]
    summary = read_json(tmp_path / "sweep" / "summary.json")
    assert [row["mode"] for row in summary] == modes
    for row in summary:  # 19 atoms, 5 tilts: every mode finds them all
        assert row["n_truth"] == 19 and row["tp_rate"] == 1.0 and row["fp_rate"] == 0.0
        assert row["rmsd_pm"] < 10.0
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1  # simulated once for 3 runs
    assert "matched within 0.75 Å" in done.stdout and "sweep: 3 runs" in done.stdout
    for report in reports:
        assert (report.parent / "atoms.extxyz").is_file()
        assert (report.parent / "truth.extxyz").is_file()
