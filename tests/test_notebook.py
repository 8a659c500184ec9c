"""notebooks/supcon_digits.ipynb runs top to bottom (nbclient) against a tiny export."""

import json
import os

import nbformat
import pytest
from nbclient import NotebookClient

from test_export import REPO, shared_export

NOTEBOOK = os.path.join(REPO, "notebooks", "supcon_digits.ipynb")


def _outputs_text(cell):
    return "".join(
        output.get("text", "") for output in cell.get("outputs", [])
        if output.get("output_type") == "stream"
    )


def test_notebook_is_colab_ready_and_stored_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert "google.colab" in code_cells[0].source and "pip" in code_cells[0].source
    assert all(not cell.outputs and cell.execution_count is None for cell in code_cells)
    assert "hub.KerasLayer" in "".join(cell.source for cell in code_cells)


@pytest.mark.slow
@pytest.mark.tf_keras
def test_notebook_runs_end_to_end(tmp_path_factory, tmp_path, monkeypatch):
    exported = shared_export(tmp_path_factory)
    output_dir = tmp_path / "notebook_out"
    # The kernel inherits this environment: the notebook reads its parameters from it.
    monkeypatch.setenv("SUPCON_EXPORT_DIR", exported["export_dir"])
    monkeypatch.setenv("SUPCON_OUTPUT_DIR", str(output_dir))
    monkeypatch.setenv("SUPCON_FINETUNE_STEPS", "3")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    # The checkout, not whatever supcon_tf an installed copy points at.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        notebook, timeout=240, kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    ).execute()  # raises CellExecutionError, with the cell's traceback, if any cell fails

    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    results = json.loads(_outputs_text(code_cells[-1]).strip().splitlines()[-1])
    for key in ("knn_top1", "linear_probe_top1", "finetune_top1"):
        assert 0.0 <= results[key] <= 1.0, results
    assert results["finetune_steps"] == 3
    assert results["knn_k"] == 200  # more than 200 digits in the train split

    images = [
        output for cell in code_cells for output in cell.outputs
        if "image/png" in output.get("data", {})
    ]
    assert len(images) == 1
    with open(output_dir / "embedding_pca.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"

