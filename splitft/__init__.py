"""SplitFT: federated split LoRA fine-tuning of causal language models.

    from splitft import load_config, run_simulation
    summary = run_simulation(load_config("configs/default.yaml", ["federation.rounds=2"]))

`run_simulation` is imported when first asked for, so `import splitft.config` (a launcher checking a config, a
docs build) loads no torch.
"""

from typing import Any

from .config import load_config

__all__ = ["load_config", "run_simulation"]


def __getattr__(name: str) -> Any:
    if name == "run_simulation":
        from .sim.runner import run_simulation

        return run_simulation
    raise AttributeError(f"module 'splitft' has no attribute {name!r}")
