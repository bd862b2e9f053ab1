"""demo/demo.ipynb runs top to bottom (nbclient, the venv's kernel) on a tiny experiment and tiny phantom cases."""
import sys
from pathlib import Path

import nbformat
import nibabel as nib
import numpy as np
import pytest
from conftest import ROOT, save_tiny_experiment
from nbclient import NotebookClient

NOTEBOOK = ROOT / "demo" / "demo.ipynb"
SHAPE = (48, 40, 6)


def write_phantom_case(folder: Path, case: str, seed: int) -> None:
    """A skull-stripped ellipsoid 'brain' with a lesion, BraTS naming: <case>_{flair,t2,t1,t1ce,seg}.nii.gz."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.arange(n, dtype=float) for n in SHAPE), indexing="ij")
    brain = ((x - 24) / 18) ** 2 + ((y - 20) / 15) ** 2 + ((z - 2.5) / 3) ** 2 < 1
    lesion = ((x - 28) / 5) ** 2 + ((y - 17) / 4) ** 2 + ((z - 3) / 1.5) ** 2 < 1
    folder.mkdir(parents=True)
    for i, name in enumerate(("flair", "t2", "t1", "t1ce")):
        data = (100 + 40 * i + 30 * rng.random(SHAPE) + (60 - 25 * i) * lesion) * brain
        nib.save(nib.Nifti1Image(data.astype(np.float32), np.diag([1.5, 1.5, 3.0, 1])),
                 folder / f"{case}_{name}.nii.gz")
    nib.save(nib.Nifti1Image(lesion.astype(np.uint8) * 2, np.diag([1.5, 1.5, 3.0, 1])), folder / f"{case}_seg.nii.gz")


def test_demo_notebook_executes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every cell runs without error and the metrics table lists each case."""
    save_tiny_experiment(tmp_path / "results" / "tiny")
    for i in range(2):
        write_phantom_case(tmp_path / "cases" / f"Phantom_{i:03d}", f"Phantom_{i:03d}", seed=i)
    monkeypatch.setenv("MUDIFF_DEMO_EXPERIMENT", str(tmp_path / "results" / "tiny"))
    monkeypatch.setenv("MUDIFF_DEMO_CASES", str(tmp_path / "cases"))
    monkeypatch.setenv("MUDIFF_DEMO_DEVICE", "cpu")
    # One intra-op thread in the kernel: tiny networks on a busy machine run faster without thread hand-offs.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # kernel "python3" is ipykernel's own spec, which jupyter_client starts with this interpreter (the venv's);
    # a last, test-only cell reports which one ran.
    notebook.cells.append(nbformat.v4.new_code_cell("import sys; print('kernel python:', sys.executable)"))
    client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT / "demo")}})
    client.execute()
    text = "\n".join(out.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                     for out in cell.get("outputs", []))
    assert "FLAIR, T2, T1 -> T1ce; T = 2" in text
    assert "Phantom_000" in text and "Phantom_001" in text
    images = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
              if "image/png" in out.get("data", {})]
    assert len(images) == 1
    assert f"kernel python: {sys.executable}" in text
