"""SplitFT: federated split LoRA fine-tuning of causal language models.

    from splitft import load_config, run_simulation
    summary = run_simulation(load_config("configs/default.yaml", ["federation.rounds=2"]))
"""

from .config import load_config
from .sim.runner import run_simulation

__all__ = ["load_config", "run_simulation"]
