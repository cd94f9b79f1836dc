"""The notebooks run offline, end to end, at a small size (MATROYSHKA_NB_SMALL=1)."""
from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
EXPECTED = {"quickstart.ipynb": "Matroyshka L30 + BM25", "shapes.ipynb": "L30:r4@4", "training.ipynb": "L30:r2@4"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_runs(name, data_dir, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("MATROYSHKA_NB_SMALL", "1")
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=1800, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOKS.parent)}})
    client.execute()
    text = "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
                     for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", []))
    assert EXPECTED[name] in text
    assert not any(o.get("output_type") == "error" for c in notebook.cells for o in c.get("outputs", []))
