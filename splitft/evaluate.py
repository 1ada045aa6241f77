"""`splitft evaluate RUN_DIR [--adapter DIR] [--json]`: held-out loss, perplexity and next-token accuracy of an
exported adapter, loaded with PEFT's own `PeftModel.from_pretrained` on the run's base model, on the run's
held-out data (rebuilt from the run's config.yaml, so the same examples).

A run exports exactly the model it evaluates (`FedAvgServer.global_model`), so for a finished run this gives
summary.json's final_eval_ppl back: a check that what you ship is what was measured. Plain PEFT and
transformers do the forward pass here, not SplitFT's split code, in the run's dtypes (its model.dtype and
train.compute_dtype as this machine resolves them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .build import load, load_base, load_data, pad_id_of, precision_of
from .config import Config
from .data.datasets import Example, batches
from .data.render import last_target
from .errors import UserError
from .loss import token_loss
from .metrics import perplexity
from .precision import Precision


@dataclass
class RunModel:
    """A finished run's base model with an exported adapter (PEFT's own loader), with its config and tokenizer."""

    cfg: Config
    model: Any  # a peft.PeftModel: generate() and the rest of transformers' API
    tokenizer: Any
    device: torch.device
    adapter: Path

    @property
    def precision(self) -> Precision:
        return precision_of(self.cfg)

    @torch.no_grad()
    def continue_ids(self, ids: list[int], max_new_tokens: int, sample: dict[str, Any] | None = None,
                     streamer: Any = None) -> list[int]:
        """The tokens the model adds after `ids`, eos included when it stops there: greedy, unless `sample`
        holds transformers' sampling arguments (do_sample, temperature, top_p)."""
        tok = self.tokenizer
        eos = tok.eos_token_id
        x = torch.tensor([ids], device=self.device)
        how = sample or {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        with self.precision.autocast():
            out = self.model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens,
                                      eos_token_id=eos, pad_token_id=tok.pad_token_id if tok.pad_token_id is not None
                                      else eos, streamer=streamer, **how)
        return out[0, x.shape[1]:].tolist()


def load_run_model(run_dir: str | Path, adapter: str | Path | None, command: str) -> RunModel:
    """The run's own base weights (tiny models: the same seeded init) with `adapter` (default: RUN_DIR/adapter).

    Raises:
        UserError: not a run directory, no adapter there, or an adapter PEFT cannot load on this base model.
    """
    run = Path(run_dir)
    if not (run / "config.yaml").is_file():
        raise UserError(f"{command}: '{run}' is not a run directory (no config.yaml)")
    folder = adapter_folder(run, adapter, command)
    cfg = load(run / "config.yaml")
    base, tokenizer, device = load_base(cfg)
    return RunModel(cfg, with_adapter(base, folder, command), tokenizer, device, folder)


def evaluate_run(run_dir: str | Path, adapter: str | Path | None = None, generate: int = 0,
                 max_new_tokens: int = 128) -> dict[str, Any]:
    """Evaluate `adapter` (default: the run's adapter/) on the run's held-out data; with `generate` > 0 also
    the greedy answers to the first `generate` held-out prompts (`answer_scores`)."""
    rm = load_run_model(run_dir, adapter, "evaluate")
    _, held_out, _ = load_data(rm.cfg, rm.tokenizer)
    with rm.precision.autocast():
        result = evaluate_model(rm.model, held_out, rm.cfg.train.batch_size, pad_id_of(rm.tokenizer))
    answers = answer_scores(rm, held_out, generate, max_new_tokens) if generate else {}
    return {"run": str(run_dir), "adapter": str(rm.adapter), **result, **answers, **rm.precision.record()}


def run_answers(run_dir: str | Path, n: int, max_new_tokens: int = 128) -> dict[str, Any]:
    """`answer_scores` of a run's adapter on its held-out data, without the perplexity pass `evaluate_run` makes
    (a finished run's summary has its perplexity already)."""
    rm = load_run_model(run_dir, None, "evaluate")
    _, held_out, _ = load_data(rm.cfg, rm.tokenizer)
    return answer_scores(rm, held_out, n, max_new_tokens)


def answer_scores(rm: RunModel, examples: list[Example], n: int, max_new_tokens: int) -> dict[str, Any]:
    """Greedy answers to the prompts of the first `n` held-out examples (each up to its last target), scored
    against that target: ROUGE-L F1 (the `rouge-score` package, no stemming) and exact match (stripped text).

    Raises:
        UserError: no held-out example has a prompt (plain-text data), or rouge-score is not installed.
    """
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise UserError("--generate: ROUGE-L needs the rouge-score package; pip install rouge-score") from None
    pairs = [(ex.input_ids[:start], ex.input_ids[start:end]) for ex in examples
             for start, end in [last_target(ex.labels)] if start > 0][:n]
    if not pairs:
        raise UserError("--generate: no held-out sample has a prompt to answer (plain-text data trains on every "
                        "token); generation metrics are for conversational and instruction data")
    tok, eos = rm.tokenizer, rm.tokenizer.eos_token_id
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    samples = []
    for prompt, target in pairs:
        new = rm.continue_ids(prompt, max_new_tokens)
        answer = tok.decode([i for i in new if i != eos], skip_special_tokens=True).strip()
        reference = tok.decode([i for i in target if i != eos], skip_special_tokens=True).strip()
        samples.append({"reference": reference, "answer": answer,
                        "rouge_l": scorer.score(reference, answer)["rougeL"].fmeasure,
                        "exact": answer == reference})
    return {"generated": len(samples), "rouge_l": sum(s["rouge_l"] for s in samples) / len(samples),
            "exact_match": sum(s["exact"] for s in samples) / len(samples), "answers": samples}


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
