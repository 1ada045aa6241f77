"""How much of the labels a curious server recovers from grad_hidden under split.shape=u.

    python benchmarks/label_inference.py [--model smollm2|tiny] [--tails 1,2,4,8] [--noise 0,1,3] [--steps 6]
A U-shaped split keeps the labels on the client, but every training step sends the server grad_hidden (B, T, H),
the gradient of the client's loss w.r.t. the hidden states the server sent. The server knows the pretrained
weights (they are public). The attack is one matrix product: for position t it guesses the next token as
    argmax_v  -<grad_hidden[t], W_head[v]>
since the loss gradient at the head is softmax - onehot(label) and the residual stream carries it down
through the tail nearly unchanged. Baseline: what the server predicts without any gradient, running the public
tail and head on the hidden states it holds (the model's own argmax). Accuracy is top-1 over label tokens, on
client 0's first `--steps` training batches of configs/default.yaml (LoRA at its initial value: the attack
uses no adapter). `--noise`: Gaussian noise of std sigma x RMS(grad_hidden) added to grad_hidden before the
server sees it (a candidate defense; not a setting of splitft). Writes
benchmarks/results/label_inference_<model>.json.
"""

from __future__ import annotations

import argparse

import torch
from _common import MODELS, ROOT, record

from splitft.build import build_setup, load, split_client, split_server
from splitft.transport.base import BackwardRequest
from splitft.transport.inproc import InProcTransport


class Curious(InProcTransport):
    """The in-process transport, keeping the server's view of each training step: the hidden states it sent and
    the grad_hidden it received (noised by `noise` on the way)."""

    def __init__(self, *args, noise: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.noise, self.hidden, self.grads = noise, [], []
        self.gen = torch.Generator().manual_seed(0)

    def step(self, req):
        reply = super().step(req)
        self.hidden.append(reply.hidden)
        return reply

    def backward(self, req: BackwardRequest):
        g = req.grad_hidden
        if self.noise:
            g = g + self.noise * g.float().pow(2).mean().sqrt() * torch.randn(g.shape, generator=self.gen).to(g)
            req = BackwardRequest(req.client_id, req.round, req.step, g)
        self.grads.append(g.detach())
        return super().backward(req)


@torch.no_grad()
def _hits(grad: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, head: torch.Tensor) -> tuple[int, int, int]:
    """(attack hits, baseline hits, label tokens) for one batch: logits[t] and grad[t] predict labels[t + 1]."""
    target, mask = labels[:, 1:], labels[:, 1:] != -100
    guess = (-(grad[:, :-1].float() @ head.float().T)).argmax(-1)
    own = logits[:, :-1].argmax(-1)
    return int((guess == target)[mask].sum()), int((own == target)[mask].sum()), int(mask.sum())


def one(model: str, tail: int, noise: float, steps: int) -> dict:
    out = ROOT / "out" / "bench" / "label_inference"
    cfg = load(str(ROOT / "configs" / "default.yaml"),
               [f"model.source={MODELS[model]}", "split.shape=u", f"split.tail={tail}", "split.policy=fixed",
                "split.cut_max=0", "metrics.progress=false", f"metrics.out_dir={out}"])
    setup = build_setup(cfg)
    server = split_server(cfg, setup.peft, setup.family, cfg.split.cut, setup.compute)
    client = split_client(setup, 0, cfg.split.cut)
    wire = Curious(server, noise=noise)
    head = setup.peft.base_model.model.get_output_embeddings().weight.detach()
    total = [0, 0, 0]
    for step in range(steps):
        req = client.begin_step(0, step)
        mask, labels = client._tail_batch  # the client's own labels: the ground truth the attack is scored on
        reply = client.exchange(wire, req)
        with torch.no_grad():  # what the server predicts from the hidden states and the public tail and head
            logits = client.part.tail_forward(wire.hidden[-1], mask)
        client.finish_step(reply)
        total = [a + b for a, b in zip(total, _hits(wire.grads[-1], logits, labels, head))]
    attack, own, n = total
    return {"tail": tail, "noise": noise, "label_tokens": n, "attack_top1": attack / n, "model_argmax_top1": own / n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="smollm2")
    ap.add_argument("--tails", default="1,2,4,8")
    ap.add_argument("--noise", default="0")
    ap.add_argument("--steps", type=int, default=6)
    args = ap.parse_args()
    rows = []
    for tail in map(int, args.tails.split(",")):
        for noise in map(float, args.noise.split(",")):
            rows.append(one(args.model, tail, noise, args.steps))
            print(rows[-1], flush=True)
    record(f"label_inference_{args.model}", {"config": "configs/default.yaml", "model": MODELS[args.model],
                                             "steps": args.steps, "client": 0,
                                             "attack": "argmax_v -<grad_hidden[t], W_head[v]>"},
           rows, ["tail", "noise", "label_tokens", "attack_top1", "model_argmax_top1"])


if __name__ == "__main__":
    main()
