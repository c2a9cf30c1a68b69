"""The README's first command (the built-in example) runs and its numbers make sense."""

from atomjax import example


def test_example_runs_and_direct_mode_matches_abtem(tmp_path, capsys):
    rows = example.run(radius_A=5.0, tilts="-60:60:60", out=tmp_path, n_slices=4, seed=0)
    assert set(rows) == {"direct", "rigid", "adaptive"}
    # the fast abTEM protocol is a blurred projection: the direct mode must match it
    assert rows["direct"]["ncc"] > 0.99
    for row in rows.values():
        assert 0 <= row["r_factor"] < 0.2
    assert (tmp_path / "forward_example.png").stat().st_size > 0
    assert "NCC vs abTEM" in capsys.readouterr().out


def test_reconstruction_demo_prints_its_accuracy(tmp_path, capsys):
    m = example.reconstruct_demo(
        radius_A=4.5, tilts="-60:60:20", out=tmp_path, seed=0, n_phases=2, steps_per_phase=60,
        progress=False,
    )  # fmt: skip
    assert m["tp_rate"] == 1.0 and m["fp_rate"] == 0.0
    printed = capsys.readouterr().out
    assert "RMSD" in printed and "matched within 0.75 Å" in printed
    assert (tmp_path / "atoms.extxyz").is_file() and (tmp_path / "report.json").is_file()
