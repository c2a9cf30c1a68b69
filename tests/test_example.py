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
