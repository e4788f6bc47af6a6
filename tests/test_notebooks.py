"""Notebooks are executed so they never rot: against the published results/ folder."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_RESULTS", str(ROOT / "results"))
    monkeypatch.setenv("HARNESS_FIGURES", str(tmp_path))
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("runs in" in o.get("text", "") for o in outputs)
    assert list(tmp_path.glob("*_ppl_vs_fraction.png"))  # the figures were drawn
