"""Execute the exploration notebook (quick setting) and check what it leaves behind."""

import json
import os
import pathlib

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = pathlib.Path(__file__).resolve().parents[1] / "notebooks" / "explore.ipynb"


def _kernel_xla_flags(flags: str) -> str:
    """XLA_FLAGS without the fake-device count conftest.py adds for the test process."""
    kept = [f for f in flags.split() if "xla_force_host_platform_device_count" not in f]
    return " ".join(kept)


def test_notebook_is_committed_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "the notebook has no code cells"
    assert all(not c.outputs and c.execution_count is None for c in code)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and "ATOMJAX_NOTEBOOK_QUICK" in tagged[0].source


@pytest.mark.slow
def test_notebook_runs_quick(tmp_path, monkeypatch):
    # the kernel is a child process: it inherits this environment when it starts
    monkeypatch.setenv("ATOMJAX_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.setenv("XLA_FLAGS", _kernel_xla_flags(os.environ.get("XLA_FLAGS", "")))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError on the first failing cell

    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"
    ]
    assert not errors
    images = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if "image/png" in o.get("data", {})
    ]
    assert len(images) >= 6, "the figures were not drawn inline"

    run = tmp_path / "runs" / "notebook" / "adaptive"
    assert (run / "atoms.extxyz").is_file()
    report = json.loads((run / "report.json").read_text())
    assert report["settings"]["mode"] == "adaptive"
    m = report["metrics"]
    assert m["n_truth"] == 43
    assert m["tp_rate"] >= 0.95
    assert m["fp_rate"] <= 0.05
    assert m["rmsd_pm"] < 5.0
    assert (tmp_path / "runs" / "notebook" / "direct" / "report.json").is_file()
