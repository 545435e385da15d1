"""notebooks/golfjax_quickstart.ipynb runs top to bottom on CPU (smoke variant)."""

import json
import pathlib

import jax
import nbclient
import nbformat
import pytest

from golfjax.models import config as model_config_lib
from golfjax.models import hf
from golfjax.models import transformer

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "golfjax_quickstart.ipynb"


def _outputs(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.get("output_type") == "stream")


@pytest.mark.slow
def test_quickstart_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    # The notebook's "local Hugging Face checkpoint": a tiny random Qwen 2 model.
    model_config = model_config_lib.get_preset("tiny_qwen2")
    hf.save(str(tmp_path / "hf"), model_config, transformer.init_params(model_config, jax.random.PRNGKey(0)))
    # The kernel inherits this environment: the notebook's parameters, and one
    # CPU device as on a laptop (not conftest.py's eight).
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("GOLFJAX_VARIANT", "smoke")
    monkeypatch.setenv("GOLFJAX_WORKDIR", str(tmp_path / "run"))
    monkeypatch.setenv("GOLFJAX_HF_CHECKPOINT", str(tmp_path / "hf"))
    monkeypatch.delenv("GOLFJAX_REPO", raising=False)  # Installed here: the clone must not run.

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}},
    ).execute()

    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert "variant smoke" in _outputs(code[2])
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 4 and "eval/accuracy" in records[-1]  # 2 cold-start + 2 GOLF steps
    assert any("image/png" in o.get("data", {}) for o in code[3].outputs), "no learning-curve plot"
    rollouts = _outputs(code[4])
    assert rollouts.count("=== problem") == 2 and "critique:" in rollouts
    assert rollouts.count("  sample  reward") == 2 * 4  # smoke: 2 problems x G = 4 samples shown
    loaded = _outputs(code[5])
    assert "qwen2" in loaded and f"vocab {model_config.vocab_size}" in loaded and "next-token ids" in loaded
