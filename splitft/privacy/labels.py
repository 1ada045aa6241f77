"""Attacks on grad_hidden under a U-shaped split: the labels (the next tokens) back from the gradients a client
sends, by a server that knows the public pretrained head W (V, H).

At the head the loss's gradient is softmax - onehot(label); the residual stream carries it down through the
tail nearly unchanged, so row t of grad_hidden (B, T, H) points away from W[label of t]:
    argmax:     argmax_v  -<g_t, W[v]>
    direction:  argmax_v  -<g_t, W[v]> / |W[v]|      (cosine: a token with a long head row does not win by length;
                                                     a zero row, e.g. an unused pad token's, scores 0)
    prior:      the server's own prediction, the public tail and head run on the hidden states it sent (no
                gradient used: what any defense leaves it)
A row's norm says more: it is exactly zero where nothing after it has a label (padding, a trailing prompt),
small where the loss reaches it only through attention (a prompt token) and grows with the loss.
`labelled_rows` scores how well the norms alone tell labelled tokens from the rest (beside the majority guess).
Recovery is top-1 over label tokens; logits[t] and grad_hidden[t] predict labels[t + 1].
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class LabelScore:
    """Hits of each attack over the label tokens seen so far; `rows_*` for the labelled-row attack."""

    hits: dict[str, int] = field(default_factory=lambda: {"argmax": 0, "direction": 0, "prior": 0})
    tokens: int = 0
    rows_right: int = 0
    rows: int = 0
    rows_labelled: int = 0

    def recovery(self, attack: str) -> float:
        return self.hits[attack] / max(self.tokens, 1)

    def labelled_rows(self) -> tuple[float, float]:
        """(accuracy of telling labelled real tokens from unlabelled ones by norm, the majority guess's)."""
        share = self.rows_labelled / max(self.rows, 1)
        return self.rows_right / max(self.rows, 1), max(share, 1 - share)


@torch.no_grad()
def score_batch(score: LabelScore, grad: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor,
                mask: torch.Tensor, head: torch.Tensor) -> None:
    """Add one batch: grad (B, T, H) as received, logits (B, T, V) of the public tail on the server's hidden
    states, labels and mask (B, T) of the client (the ground truth), head W (V, H)."""
    target, has = labels[:, 1:], labels[:, 1:] != -100
    g, w = grad[:, :-1].float(), head.float()
    scores = -(g @ w.T)  # (B, T-1, V)
    guesses = {"argmax": scores.argmax(-1), "direction": (scores / w.norm(dim=-1).clamp_min(1e-12)).argmax(-1),
               "prior": logits[:, :-1].argmax(-1)}
    for name, guess in guesses.items():
        score.hits[name] += int((guess == target)[has].sum())
    score.tokens += int(has.sum())
    real = mask[:, :-1].bool()
    said = _two_means(g.norm(dim=-1)[real])
    score.rows_right += int((said == has[real]).sum())
    score.rows += int(real.sum())
    score.rows_labelled += int(has[real].sum())


def _two_means(norms: torch.Tensor, iters: int = 20) -> torch.Tensor:
    """The server's guess of which rows (N,) carry a label (True): a row of exactly zero does not (no later token
    depends on it); the others split into a low and a high group by 1-D 2-means on log(norm), high = labelled
    (the loss's gradient enters a labelled row directly, a prompt token's only through attention)."""
    out = torch.zeros_like(norms, dtype=torch.bool)
    nonzero = norms > 0
    x = norms[nonzero].double().log()
    if x.numel() == 0:
        return out
    lo, hi = x.min(), x.max()
    high = torch.ones_like(x, dtype=torch.bool)
    for _ in range(iters if hi - lo > 1e-9 else 0):
        high = (x - lo).abs() > (x - hi).abs()
        if high.all() or not high.any():
            break
        lo, hi = x[~high].mean(), x[high].mean()
    out[nonzero] = high
    return out
