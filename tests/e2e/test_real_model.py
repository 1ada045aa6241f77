"""The real default model (SmolLM2-135M-Instruct GGUF) end to end; minutes of CPU, so marked slow."""

import pytest

from splitft.config import load_config
from splitft.sim.runner import run_simulation

pytestmark = pytest.mark.slow


def test_default_config_trains_smollm2_and_lowers_eval_ppl(tmp_path):
    cfg = load_config("configs/default.yaml", ["federation.rounds=1", "federation.local_steps=3",
                                                "data.max_eval_samples=16", "metrics.progress=false",
                                                f"metrics.out_dir={tmp_path / 'run'}"])
    summary = run_simulation(cfg)
    assert summary["final_eval_ppl"] < summary["initial_eval_ppl"]
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()
