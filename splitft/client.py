"""SplitClient: holds its private data, the client part (embeddings + blocks [0, cut)) and its optimizer;
runs split steps against a `Transport`. Raw tokens never leave; activations, labels and masks do.
"""

from __future__ import annotations

from typing import Iterable

import torch

from . import lora
from .data.datasets import BatchStream, Example, collate
from .model.split import ClientPart
from .optim import clip, make_optimizer
from .transport.base import LABEL_DTYPE, MASK_DTYPE, AdapterUpdate, ForwardRequest, StepReply, Transport


class SplitClient:
    def __init__(self, client_id: int, part: ClientPart, stream: BatchStream, *, lr: float,
                 weight_decay: float = 0.0, max_grad_norm: float = 0.0):
        self.client_id = client_id
        self.part = part
        self.stream = stream
        self.params = part.lora_parameters()
        self.opt = make_optimizer(self.params, lr, weight_decay)
        self.max_grad_norm = max_grad_norm
        self.device = next(part.module.parameters()).device
        self.samples_seen = 0  # since the last push; the FedAvg weight
        self.part.train()

    @property
    def cut(self) -> int:
        return self.part.cut

    def _request(self, batch: dict[str, torch.Tensor], acts: torch.Tensor, round_: int, step: int,
                 train: bool) -> ForwardRequest:
        return ForwardRequest(self.client_id, round_, step, self.cut, acts.detach(),
                              batch["attention_mask"].to(MASK_DTYPE), batch["labels"].to(LABEL_DTYPE), train)

    def train_step(self, transport: Transport, round_: int, step: int) -> StepReply:
        """Forward to the cut -> send activations -> receive grad_activations -> backward -> AdamW step."""
        batch = {k: v.to(self.device) for k, v in self.stream.next().items()}
        acts = self.part.forward(batch["input_ids"], batch["attention_mask"])  # (B, T, H)
        reply = transport.step(self._request(batch, acts, round_, step, train=True))
        assert reply.grad_activations is not None and reply.grad_activations.shape == acts.shape
        self.opt.zero_grad(set_to_none=True)
        acts.backward(reply.grad_activations.to(acts.device, acts.dtype))
        clip(self.params, self.max_grad_norm)
        self.opt.step()
        self.samples_seen += batch["input_ids"].shape[0]
        return reply

    @torch.no_grad()
    def evaluate(self, transport: Transport, examples: list[Example], batch_size: int, pad_id: int,
                 round_: int) -> tuple[float, int, int]:
        """(loss_sum, n_tokens, n_correct) of the current adapters on `examples` (no updates anywhere)."""
        loss_sum, n_tok, n_ok = 0.0, 0, 0
        self.part.train(False)
        for i, batch in enumerate(_batches(examples, batch_size, pad_id)):
            batch = {k: v.to(self.device) for k, v in batch.items()}
            acts = self.part.forward(batch["input_ids"], batch["attention_mask"])
            reply = transport.step(self._request(batch, acts, round_, i, train=False))
            loss_sum, n_tok, n_ok = loss_sum + reply.loss_sum, n_tok + reply.n_tokens, n_ok + reply.n_correct
        self.part.train(True)
        return loss_sum, n_tok, n_ok

    def push(self, transport: Transport, round_: int) -> None:
        """Send this round's adapters (blocks [0, cut)) and the samples behind them."""
        transport.push_adapters(AdapterUpdate(self.client_id, round_, lora.adapter_state_dict(self.part.module),
                                              self.samples_seen))
        self.samples_seen = 0

    def pull(self, transport: Transport) -> None:
        """Load the global adapters for this client's blocks (in place: optimizer state is kept)."""
        lora.load_adapter_state_dict(self.part.module, transport.pull_adapters(self.client_id, self.cut))


def _batches(examples: list[Example], batch_size: int, pad_id: int) -> Iterable[dict[str, torch.Tensor]]:
    for i in range(0, len(examples), batch_size):
        yield collate(examples[i : i + batch_size], pad_id)
