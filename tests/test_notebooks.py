"""Execute the notebooks in notebooks/ with tiny settings (BLINDLENS_NOTEBOOK_TINY=1)."""

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def _run(name, tmp_path, monkeypatch):
    monkeypatch.setenv("BLINDLENS_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("JAX_PLATFORMS", os.environ.get("JAX_PLATFORMS", "cpu"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    return "".join(
        out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
    )


def test_survey_lens_notebook_runs(tmp_path, monkeypatch):
    outputs = _run("survey_lens.ipynb", tmp_path, monkeypatch)
    assert "noise from: ERR" in outputs and "lens_light_amp" in outputs and "'SIE', 'SHEAR'" in outputs
    for name in ("model", "lens_light", "lensed_source", "normalized_residual", "source_mean", "source_sd"):
        assert (tmp_path / f"survey_lens_{name}.fits").exists(), name
    assert (tmp_path / "survey_lens_posterior.nc").exists()


def test_custom_lens_model_notebook_runs(tmp_path, monkeypatch):
    outputs = _run("custom_lens_model.ipynb", tmp_path, monkeypatch)
    assert "custom lens model" in outputs and "theta_E" in outputs
    assert (tmp_path / "custom_lens_posterior.nc").exists()
