"""The benchmarks' shared helpers: settings merged over a case's, summaries over seeds."""

import pathlib
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import common  # noqa: E402


def test_deep_merge_merges_nested_keys_and_changes_neither_argument():
    base = {"optim": {"loss": "poisson", "n_phases": 6}, "mode": "direct"}
    over = {"optim": {"n_phases": 10}, "adapt": {"min_distance_A": 1.5}}
    merged = common.deep_merge(base, over)
    assert merged == {"optim": {"loss": "poisson", "n_phases": 10}, "mode": "direct",
                      "adapt": {"min_distance_A": 1.5}}  # fmt: skip
    assert base == {"optim": {"loss": "poisson", "n_phases": 6}, "mode": "direct"}
    assert over == {"optim": {"n_phases": 10}, "adapt": {"min_distance_A": 1.5}}
    # a non-dict value replaces a dict and the other way round
    assert common.deep_merge({"a": {"b": 1}}, {"a": 2}) == {"a": 2}
    assert common.deep_merge({"a": 2}, {"a": {"b": 1}}) == {"a": {"b": 1}}


def test_over_seeds_groups_and_summarises():
    rows = [
        {"case": "x", "method": "atomjax", "seed": 0, "n_matched": 270, "rmsd_pm": 16.0},
        {"case": "x", "method": "sart", "seed": 0, "n_matched": 220, "rmsd_pm": None},
        {"case": "x", "method": "atomjax", "seed": 1, "n_matched": 264, "rmsd_pm": 11.0},
        {"case": "x", "method": "atomjax", "seed": 2, "n_matched": 271, "rmsd_pm": 13.0},
    ]
    out = common.over_seeds(rows, ("n_matched", "rmsd_pm"))
    assert [(r["case"], r["method"]) for r in out] == [("x", "atomjax"), ("x", "sart")]
    aj, sart = out
    assert aj["seeds"] == [0, 1, 2]
    assert aj["n_matched"] == {"mean": pytest.approx(805 / 3), "min": 264, "max": 271}
    assert aj["rmsd_pm"] == {"mean": pytest.approx(40 / 3), "min": 11.0, "max": 16.0}
    assert sart["seeds"] == [0] and sart["n_matched"]["mean"] == 220
    assert sart["rmsd_pm"] is None  # no value to summarise


def test_parse_seeds_reads_a_list_and_refuses_other_text():
    import argparse

    parser = argparse.ArgumentParser(prog="bench")
    assert common.parse_seeds("0, 1,2", parser) == [0, 1, 2]
    for bad in ("x", "1.5", "", " , "):
        with pytest.raises(SystemExit):
            common.parse_seeds(bad, parser)


def test_the_starts_option_takes_one_to_four():
    import argparse

    parser = argparse.ArgumentParser()
    common.add_starts_option(parser)
    assert parser.parse_args([]).starts == 1
    assert parser.parse_args(["--starts", "4"]).starts == 4
    for bad in ("0", "5", "two"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--starts", bad])


def test_the_settings_option_reads_a_json_object_and_refuses_other_text():
    import argparse

    parser = argparse.ArgumentParser(prog="bench")
    common.add_settings_option(parser)
    args = parser.parse_args(
        ["--settings", '{"profile_tail": true, "adapt": {"min_distance_A": 1.5}}']
    )
    assert common.parse_settings(args.settings, parser) == {
        "profile_tail": True, "adapt": {"min_distance_A": 1.5}
    }  # fmt: skip
    assert common.parse_settings(parser.parse_args([]).settings, parser) == {}
    for bad in ("{profile_tail: true}", "[1, 2]", "3"):
        with pytest.raises(SystemExit):
            common.parse_settings(bad, parser)
