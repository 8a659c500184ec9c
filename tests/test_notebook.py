"""notebooks/supcon_digits.ipynb stands alone: it installs from one source setting, trains,
exports, fine-tunes through hub.KerasLayer and plots, top to bottom under nbclient."""

import importlib.metadata
import os
import re
import subprocess
import sys

import nbformat
import pytest
from conftest import REPO
from nbclient import NotebookClient

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
    install = code_cells[0].source
    # One setting names the source; the environment variable only overrides it.
    assert len(re.findall(r"^SUPCON_TF_SOURCE = \"[^\"]+\"$", install, re.M)) == 1
    assert "git\", \"clone\", \"--depth\", \"1\"" in install and "\"-e\", PROJECT_DIR" in install
    assert all(not cell.outputs and cell.execution_count is None for cell in code_cells)
    source = "".join(cell.source for cell in code_cells)
    for step in ("main.py", "export_hub.py", "hub.KerasLayer", ".fit(", "savefig"):
        assert step in source, step


@pytest.mark.tf_keras  # the cell pins tf-keras to the plain tensorflow distribution, as on Colab
def test_install_cell_clones_a_url_and_installs_from_the_clone(tmp_path, monkeypatch):
    """A git URL is cloned (a file:// URL of this checkout stands in for GitHub) and pip
    is asked for an editable install of the clone; pip itself is not run."""
    install = nbformat.read(NOTEBOOK, as_version=4).cells[1].source
    real_popen = subprocess.Popen
    pip_commands = []

    def popen(command, **kwargs):
        command = list(command)
        if command[1:3] == ["-m", "pip"]:
            pip_commands.append(command[3:])
            command = [sys.executable, "-c", "pass"]
        return real_popen(command, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", popen)
    monkeypatch.setenv("SUPCON_TF_SOURCE", f"file://{REPO}")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    namespace = {}
    exec(compile(install, "install_cell", "exec"), namespace)

    clone = str(tmp_path / "supcon_tf_source")
    assert namespace["PROJECT_DIR"] == clone and os.path.isfile(os.path.join(clone, "main.py"))
    major, minor = importlib.metadata.version("tensorflow").split(".")[:2]
    assert pip_commands == [["install", "-q", "-e", clone],
                            ["install", "-q", f"tf-keras~={major}.{minor}.0"]]
    assert sys.path[0] == clone


@pytest.mark.slow
@pytest.mark.tf_keras
def test_notebook_runs_end_to_end(tmp_path, monkeypatch):
    work_dir = tmp_path / "notebook_work"
    # The kernel inherits this environment: the notebook reads its overrides from it.
    monkeypatch.setenv("SUPCON_TF_SOURCE", REPO)
    monkeypatch.setenv("SUPCON_NOTEBOOK_DIR", str(work_dir))
    monkeypatch.setenv("SUPCON_TRAIN_EPOCHS", "1")
    monkeypatch.setenv("SUPCON_FINETUNE_EPOCHS", "2")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    # The checkout's supcon_tf imports from REPO, so the install cell installs nothing.
    monkeypatch.setenv("PYTHONPATH",
                       os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        notebook, timeout=300, kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    ).execute()  # raises CellExecutionError, with the cell's traceback, if any cell fails

    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    printed = "".join(_outputs_text(cell) for cell in code_cells)
    # The checkout's supcon_tf was importable already: no install over it.
    assert f"supcon_tf already imports from {REPO} (nothing to install)" in printed
    assert re.search(r"stage one: step 11/11 ", printed)  # 1 epoch of 1,437 at batch 128
    accuracy = re.search(r"fine-tuned test top-1: (\d\.\d{3}) \(360 digits, after 2 epochs\)",
                         printed)
    assert accuracy and 0.0 <= float(accuracy.group(1)) <= 1.0, printed[-3000:]
    assert (work_dir / "hub" / "encoder" / "saved_model.pb").exists()

    images = [output for cell in code_cells for output in cell.outputs
              if "image/png" in output.get("data", {})]
    assert len(images) == 1
    with open(work_dir / "supcon_digits.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
