"""`splitft evaluate RUN_DIR [--adapter DIR] [--json]`: held-out loss, perplexity and next-token accuracy of an
exported adapter, loaded with PEFT's own `PeftModel.from_pretrained` on the run's base model, on the run's
held-out data (rebuilt from the run's config.yaml, so the same examples).

A run exports exactly the model it evaluates (`FedAvgServer.global_model`), so for a finished run this gives
summary.json's final_eval_ppl back: a check that what you ship is what was measured. Plain PEFT and
transformers do the forward pass here, not SplitFT's split code, in the run's dtypes (its model.dtype and
train.compute_dtype as this machine resolves them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .build import load, load_base, load_data, pad_id_of, precision_of
from .data.datasets import Example, batches
from .errors import UserError
from .loss import token_loss
from .metrics import perplexity


def evaluate_run(run_dir: str | Path, adapter: str | Path | None = None) -> dict[str, Any]:
    """Evaluate `adapter` (default: the run's adapter/) on the run's held-out data.

    Raises:
        UserError: not a run directory, no adapter there, or an adapter PEFT cannot load on this base model.
    """
    run = Path(run_dir)
    if not (run / "config.yaml").is_file():
        raise UserError(f"evaluate: '{run}' is not a run directory (no config.yaml)")
    folder = adapter_folder(run, adapter, "evaluate")
    cfg = load(run / "config.yaml")
    base, tokenizer, _ = load_base(cfg)  # the run's own base weights (tiny models: the same seeded init)
    model = with_adapter(base, folder, "evaluate")
    _, held_out, _ = load_data(cfg, tokenizer)
    precision = precision_of(cfg)
    with precision.autocast():
        result = evaluate_model(model, held_out, cfg.train.batch_size, pad_id_of(tokenizer))
    return {"run": str(run), "adapter": str(folder), **result, **precision.record()}


def adapter_folder(run: Path, adapter: str | Path | None, command: str) -> Path:
    """`adapter`, or the run's adapter/; raises UserError when it holds no PEFT adapter."""
    folder = Path(adapter) if adapter is not None else run / "adapter"
    if not (folder / "adapter_config.json").is_file():
        raise UserError(f"{command}: no PEFT adapter in '{folder}' (no adapter_config.json); a run writes "
                        f"adapter/ when it finishes")
    return folder


def with_adapter(base: torch.nn.Module, folder: Path, command: str) -> torch.nn.Module:
    """`base` with the PEFT adapter in `folder`, in eval mode (PEFT's own loader)."""
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(base, str(folder)).eval()
    except (ValueError, RuntimeError, OSError, KeyError) as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise UserError(f"{command}: PEFT cannot load the adapter in '{folder}' on this run's base model: "
                        f"{reason}") from None


@torch.no_grad()
def evaluate_model(model: torch.nn.Module, examples: list[Example], batch_size: int, pad_id: int) -> dict[str, Any]:
    """Next-token loss over label tokens (the training objective), its perplexity, and argmax accuracy."""
    device = next(model.parameters()).device
    loss_sum, n_tok, n_ok = 0.0, 0, 0
    for batch in batches(examples, batch_size, pad_id):
        batch = {k: v.to(device) for k, v in batch.items()}
        stats = token_loss(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                           batch["labels"])
        loss_sum, n_tok, n_ok = loss_sum + stats.loss_sum.item(), n_tok + stats.n_tokens, n_ok + stats.n_correct
    loss = loss_sum / max(n_tok, 1)
    return {"eval_loss": loss, "eval_ppl": perplexity(loss), "eval_acc": n_ok / max(n_tok, 1), "eval_tokens": n_tok}
