"""`splitft privacy`: what an honest-but-curious server recovers from what a client sends, on held-out samples of
the configured model and data, and what each defense costs in eval ppl.

    splitft privacy --config configs/default.yaml [--cuts 1,2,4,8] [--noise 0,0.5] [--tails 1]
                    [--defenses none,keep=0.25] [--ppl-cost] [--out privacy.json] [--json]
The server knows the public pretrained weights and nothing of the client's data:
- inversion (either split shape): the activations at each cut, as sent (privacy.noise levels `--noise`), back to
  tokens by a learned inverter (fitted on public text, builtin:python_stdlib) and by optimization
  (`privacy/inversion.py`);
- labels under split.shape=u: grad_hidden of client 0's first `--steps` training steps back to the labels, for
  each tail and grad_hidden defense (`privacy/labels.py`); under the vanilla split the server reads every label
  in clear (recovery 1 by construction);
- with --ppl-cost, each defense trains the configured federation for its configured rounds (reusing finished runs
  under <metrics.out_dir>/privacy/), and ppl_cost is its final eval ppl's relative change against no defense.
The JSON (`--out`, `--json`) is the table split.privacy_floor reads (`privacy/floor.py`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch

from .. import build
from ..build import Setup
from ..config import Config, validate
from ..data.datasets import batches, load_examples
from ..data.files import STDLIB
from ..errors import UserError
from ..model.families import embedding_table, hf_of
from ..privacy.defenses import noisy_activations
from ..privacy.inversion import LearnedInverter, optimized_inversion, recovery
from ..privacy.labels import LabelScore, score_batch
from ..seeding import derive_seed
from ..transport.base import BackwardRequest
from ..transport.inproc import InProcTransport
from .experiment import run_or_reuse

SCHEMA = 1
ATTACKS = ("learned", "optimized")


@dataclass(frozen=True)
class Defense:
    """A grad_hidden defense: privacy.grad_clip, grad_noise, grad_keep (all off = none)."""

    clip: float = 0.0
    noise: float = 0.0
    keep: float = 1.0

    @property
    def name(self) -> str:
        on = [f"{k}={v:g}" for k, v, off in (("keep", self.keep, 1.0), ("clip", self.clip, 0.0),
                                              ("noise", self.noise, 0.0)) if v != off]
        return "+".join(on) or "none"

    @classmethod
    def parse(cls, text: str) -> Defense:
        """'none' | 'keep=0.25' | 'clip=1+noise=3' ... (config validation judges the values)."""
        if text.strip() == "none":
            return cls()
        values: dict[str, float] = {}
        for item in text.split("+"):
            key, _, value = item.partition("=")
            if key.strip() not in ("clip", "noise", "keep") or key.strip() in values:
                raise UserError(f"--defenses: '{text}': each defense is none or keep=K+clip=C+noise=N (each once)")
            try:
                values[key.strip()] = float(value)
            except ValueError:
                raise UserError(f"--defenses: '{item}' is not key=number") from None
        return cls(**values)


def parse_list(text: str, what: str, kind: Callable[[str], Any]) -> list[Any]:
    """'1,2,4' -> [1, 2, 4] (distinct, in order), or one line naming the option."""
    try:
        items = [kind(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"{what}: a comma-separated list of {kind.__name__}s, got {text!r}") from None
    if not items or len(set(items)) != len(items):
        raise UserError(f"{what}: a non-empty list without repeats, got {text!r}")
    return items


def audit(cfg: Config, cuts: list[int], noises: list[float], tails: list[int], defenses: list[Defense], *,
          samples: int = 8, steps: int = 6, opt_steps: int = 200, public_samples: int = 256,
          ppl_cost: bool = False) -> dict[str, Any]:
    """Every attack at every cut / tail and defense; returns the `--json` object."""
    _check(cfg, noises, tails, defenses, samples, steps, opt_steps)
    setup = build.build_setup(cfg)
    n_layer = setup.n_layer
    bad = [c for c in cuts if not 1 <= c < n_layer] + [t for t in tails if not 1 <= t < n_layer - cfg.split.cut]
    if bad:
        raise UserError(f"--cuts must lie in [1, {n_layer - 1}] and --tails in [1, {n_layer - cfg.split.cut - 1}] "
                        f"for this model ({n_layer} blocks, split.cut={cfg.split.cut}); got {bad}")
    held_out = setup.eval[:samples]
    inversion = _inversion(setup, cuts, noises, held_out, opt_steps, public_samples)
    labels = [row for t in tails for row in _labels(setup, t, defenses, steps)]
    if ppl_cost:
        _add_ppl_costs(cfg, inversion, labels, noises, defenses)
    return {"schema": SCHEMA, "model": cfg.model.source, "data": cfg.data.path, "held_out_samples": len(held_out),
            "public": STDLIB, "vanilla_labels": "the server reads every label in clear (recovery 1 by construction)",
            "attention_mask": "the server holds every sample's mask: its exact length in tokens",
            "inversion": inversion, "labels_u": labels}


def _check(cfg: Config, noises: list[float], tails: list[int], defenses: list[Defense], samples: int, steps: int,
           opt_steps: int) -> None:
    """What can be refused before the model loads, one line each (the cuts and tails need its block count)."""
    if cfg.data.path == STDLIB:
        raise UserError(f"privacy: the learned inverter trains on public text ({STDLIB}); it must not be the "
                        "client's data: set data.path to other data")
    if any(not 0 <= n < float("inf") for n in noises):
        raise UserError(f"--noise: levels must be numbers >= 0, got {noises}")
    if min(samples, steps, opt_steps) < 1:
        raise UserError(f"--samples, --steps and --opt-steps must be >= 1, got {samples}, {steps}, {opt_steps}")
    for d in defenses:  # the config's own refusals, said once per defense
        _defended_config(cfg, tails[0], d)


def _inversion(setup: Setup, cuts: list[int], noises: list[float], held_out: list, opt_steps: int,
               public_samples: int) -> list[dict[str, Any]]:
    """Rows {cut, attack, noise, recovery, tokens}: token recovery from the activations at each cut."""
    cfg = setup.cfg
    public_cfg = dataclasses.replace(cfg.data, path=STDLIB, format="auto", max_samples=public_samples)
    public, _ = load_examples(public_cfg, setup.tokenizer, cfg.federation.seed)
    table = embedding_table(hf_of(setup.peft)).detach()
    vanilla = _variant(cfg, "vanilla", **{"split.shape": "vanilla"})
    rows = []
    for cut in cuts:
        part = build.client_part(vanilla, setup.peft, setup.family, cut, setup.compute)
        part.train(False)
        inverter = LearnedInverter.fit(part, batches(public, cfg.train.batch_size, setup.pad_id))
        hits = {(a, n): [0, 0] for a in ATTACKS for n in noises}
        gen = torch.Generator(setup.device).manual_seed(derive_seed(cfg.federation.seed, "privacy", cut))
        for batch in batches(held_out, cfg.train.batch_size, setup.pad_id):
            batch = {k: v.to(setup.device) for k, v in batch.items()}
            ids, mask = batch["input_ids"], batch["attention_mask"]
            with torch.no_grad():
                acts = part.forward(ids, mask)
            for noise in noises:
                sent = noisy_activations(acts, noise, gen) if noise > 0 else acts
                guesses = {"learned": inverter.invert(sent, table),
                           "optimized": optimized_inversion(part, sent, mask, opt_steps)}
                for attack, guess in guesses.items():
                    h, n = recovery(guess, ids, mask)
                    hits[attack, noise][0] += h
                    hits[attack, noise][1] += n
        for (attack, noise), (h, n) in hits.items():
            rows.append({"cut": cut, "attack": attack, "noise": noise, "recovery": h / n, "tokens": n})
            print(f"privacy: cut {cut}, {attack} inversion, noise {noise:g}: {h / n:.1%} of {n} tokens",
                  file=sys.stderr, flush=True)
    return rows


class _Curious(InProcTransport):
    """The in-process transport keeping the server's view of each training step: the hidden states it sent
    and the grad_hidden it received (as the client's defenses left it)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.hidden: torch.Tensor | None = None
        self.grad: torch.Tensor | None = None

    def step(self, req: Any) -> Any:
        reply = super().step(req)
        self.hidden = reply.hidden
        return reply

    def backward(self, req: BackwardRequest) -> Any:
        self.grad = req.grad_hidden.detach()
        return super().backward(req)


def attack_labels(setup: Setup, cfg: Config, steps: int) -> LabelScore:
    """Every label attack on the grad_hidden of client 0's first `steps` training steps under `cfg` (a U-shaped
    split, its defenses), the server at split.cut, LoRA from the setup's initial value."""
    cut = cfg.split.cut
    server = build.split_server(cfg, setup.peft, setup.family, cut, setup.compute)
    part = build.client_part(cfg, setup.peft, setup.family, cut, setup.compute)
    client = build.split_client_with(cfg, 0, part, build.client_stream(setup, 0, setup.parts[0]))
    wire, score = _Curious(server), LabelScore()
    head = cast(torch.Tensor, setup.family.lm_head(hf_of(setup.peft)).weight).detach()
    for step in range(steps):
        req = client.begin_step(0, step)
        mask, labels = client._tail_batch  # the ground truth, which only the client holds
        reply = client.exchange(wire, req)
        assert wire.hidden is not None and wire.grad is not None, "a U-shaped step sent both"
        with torch.no_grad():  # what the server predicts from its hidden states and the public tail and head
            logits = client.part.tail_forward(wire.hidden, mask)
        client.finish_step(reply)
        score_batch(score, wire.grad, logits, labels, mask, head)
    return score


def _labels(setup: Setup, tail: int, defenses: list[Defense], steps: int) -> list[dict[str, Any]]:
    """Rows {tail, defense, attack, recovery, ...}: labels from grad_hidden of client 0's first `steps` training
    steps under a U-shaped split with this tail, for each defense (LoRA from its initial value each time)."""
    rows = []
    for d in defenses:
        score = attack_labels(setup, _defended_config(setup.cfg, tail, d), steps)
        acc, majority = score.labelled_rows()
        for attack in score.hits:
            rows.append({"tail": tail, "defense": d.name, "attack": attack, "recovery": score.recovery(attack),
                         "tokens": score.tokens, "labelled_rows_acc": acc, "labelled_rows_majority": majority})
        print(f"privacy: tail {tail}, {d.name}: argmax {score.recovery('argmax'):.1%}, direction "
              f"{score.recovery('direction'):.1%} (prior {score.recovery('prior'):.1%}) of {score.tokens} labels; "
              f"labelled rows told apart {acc:.1%} (majority {majority:.1%})", file=sys.stderr, flush=True)
    return rows


def _variant(cfg: Config, label: str, **settings: Any) -> Config:
    """A copy of cfg with dotted settings, validated (one line naming the variant and its problems)."""
    out = copy.deepcopy(cfg)
    for key, value in settings.items():
        section, name = key.split(".")
        setattr(getattr(out, section), name, value)
    problems = validate(out)
    if problems:
        raise UserError(f"{label}: " + "; ".join(problems))
    return out


def _defended_config(cfg: Config, tail: int, d: Defense) -> Config:
    return _variant(cfg, f"tail {tail}, {d.name}", **{
        "split.shape": "u", "split.tail": tail, "privacy.grad_clip": d.clip, "privacy.grad_noise": d.noise,
        "privacy.grad_keep": d.keep})


def _add_ppl_costs(cfg: Config, inversion: list[dict[str, Any]], labels: list[dict[str, Any]],
                   noises: list[float], defenses: list[Defense]) -> None:
    """Train each setting for the configured rounds (reusing finished runs) and add final_eval_ppl and ppl_cost
    (relative to the same split without defense) to its rows. Activation noise is priced at the configured split.
    A setting the config cannot train (e.g. a tail too large for a device's memory) gets `ppl_error` instead:
    the attacks' results are kept."""
    root = Path(cfg.metrics.out_dir) / "privacy"

    def final_ppl(variant: Config, name: str) -> float | str:
        variant.metrics.out_dir = str(root / name)
        try:
            return float(run_or_reuse(variant, f"privacy {name}")["final_eval_ppl"])
        except UserError as e:
            print(f"privacy: {name} not trained: {e}", file=sys.stderr, flush=True)
            return str(e)

    def price(row: dict[str, Any], ppl: float | str, base: float | str) -> None:
        if isinstance(ppl, str) or isinstance(base, str):
            row["ppl_error"] = ppl if isinstance(ppl, str) else base
        else:
            row["final_eval_ppl"], row["ppl_cost"] = ppl, ppl / base - 1

    plain = {n: final_ppl(_variant(cfg, f"noise {n:g}", **{"privacy.noise": n, "privacy.grad_clip": 0.0,
                                                          "privacy.grad_noise": 0.0, "privacy.grad_keep": 1.0}),
                          f"noise{n:g}")
             for n in sorted(set(noises) | {0.0})}
    for row in inversion:
        price(row, plain[row["noise"]], plain[0.0])
    for tail in sorted({r["tail"] for r in labels}):
        ppl = {d.name: final_ppl(_defended_config(cfg, tail, d), f"u{tail}_{d.name}")
               for d in dict.fromkeys([Defense(), *defenses])}
        for row in (r for r in labels if r["tail"] == tail):
            price(row, ppl[row["defense"]], ppl["none"])


def write_table(result: dict[str, Any], path: str) -> None:
    """The JSON table for split.privacy_table (written whole, then moved into place: never half a table)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    tmp.replace(out)


def format_audit(result: dict[str, Any]) -> str:
    """Two markdown tables for people: token recovery per cut (attack x noise), label recovery per tail/defense."""
    inv = result["inversion"]
    cols = sorted({(r["attack"], r["noise"]) for r in inv}, key=lambda k: (k[1], ATTACKS.index(k[0])))
    lines = [f"Token recovery from the activations at the cut ({result['model']}, {result['held_out_samples']} "
             f"held-out samples of {result['data']}; learned inverter fitted on {result['public']}):", "",
             "| cut | " + " | ".join(f"{a}, noise {n:g}" for a, n in cols) + " |",
             "|---" * (len(cols) + 1) + "|"]
    for cut in sorted({r["cut"] for r in inv}):
        got = {(r["attack"], r["noise"]): r["recovery"] for r in inv if r["cut"] == cut}
        lines.append(f"| {cut} | " + " | ".join(f"{got[k]:.1%}" for k in cols) + " |")
    lines += ["", "Labels: vanilla split: " + result["vanilla_labels"] + ". U-shaped split, from grad_hidden "
              "(prior: the server's own prediction, no gradient used):", "",
              "| tail | defense | argmax | direction | prior | labelled rows told apart (majority) | ppl cost |",
              "|---|---|---|---|---|---|---|"]
    for key in dict.fromkeys((r["tail"], r["defense"]) for r in result["labels_u"]):
        rows = {r["attack"]: r for r in result["labels_u"] if (r["tail"], r["defense"]) == key}
        a = rows["argmax"]
        cost = f"{a['ppl_cost']:+.1%}" if "ppl_cost" in a else "not trained" if "ppl_error" in a else "-"
        lines.append(f"| {key[0]} | {key[1]} | {a['recovery']:.1%} | {rows['direction']['recovery']:.1%} | "
                     f"{rows['prior']['recovery']:.1%} | {a['labelled_rows_acc']:.1%} "
                     f"({a['labelled_rows_majority']:.1%}) | {cost} |")
    return "\n".join(lines + ["", "The attention mask the server holds gives every sample's exact length."])
