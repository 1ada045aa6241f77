"""Clients: each holds its private data, its part of the model and its optimizer.

`SplitClient` holds embeddings + blocks [0, cut) and runs split steps against a `Transport`: raw tokens never
leave; activations and masks do, and labels under split.shape=vanilla. Under split.shape=u it also holds the
tail (the last blocks, norm and head) and computes the loss itself: labels stay, hidden states come down and
their gradient goes up. `LocalClient` holds the whole model and trains where its data is (the
no-split baselines); only its adapters cross the transport. Both push/pull adapters the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from . import lora
from .data.datasets import BatchStream, Example, batches
from .model.split import ClientPart, FullPart
from .optim import LrSchedule, NonFiniteStep, clip, load_optimizer_state, make_optimizer, optimizer_state, set_lr
from .precision import LossScaler
from .privacy.defenses import defended_grad, noisy_activations
from .transport.base import (
    LABEL_DTYPE,
    MASK_DTYPE,
    AdapterUpdate,
    BackwardRequest,
    ForwardRequest,
    StepReply,
    Transport,
    TransportError,
)


@dataclass
class StepTiming:
    """What the last training step cost this client, as measured: its own compute (forward, backward, update),
    the link (round trip minus the time the server held the step), and the batch's padded tokens B*T."""

    compute_s: float
    link_s: float = 0.0
    tokens: int = 0


class _Client:
    """Data stream, optimizer over the part's LoRA, and the adapter exchange shared by both client kinds."""

    part: ClientPart | FullPart
    opt: torch.optim.Optimizer

    def __init__(self, client_id: int, part: ClientPart | FullPart, stream: BatchStream, *, lr: float,
                 weight_decay: float = 0.0, max_grad_norm: float = 0.0, r_cut: int | None = None,
                 schedule: LrSchedule | None = None):
        self.client_id, self.stream, self.r_cut = client_id, stream, r_cut
        self.lr, self.weight_decay, self.max_grad_norm = lr, weight_decay, max_grad_norm
        self.schedule = schedule or LrSchedule(lr)
        self.at = (0, 0)  # (round, step) of the step in progress: its lr
        self.samples_seen = 0  # since the last push; the FedAvg weight
        self.last_loss: float | None = None  # mean step loss of the last round (the policy's performance signal)
        self.timing: StepTiming | None = None  # of the last training step (a deployed client's measurements)
        self.budget: tuple[float | None, int | None] = (None, None)  # (seconds, most steps) of this round
        self.scaler = LossScaler(part.compute.precision.scaled)  # float16 only; a plain backward otherwise
        self.replace_part(part)

    def replace_part(self, part: ClientPart | FullPart) -> None:
        """Take a new part (a new cut): the LoRA tensors both parts hold keep their values and AdamW state; the
        new part's other blocks keep what they came with (the next pull loads the global adapters)."""
        old = lora.lora_parameters(self.part.module) if hasattr(self, "part") else {}
        self.part = part
        named = lora.lora_parameters(part.module)
        self.params = list(named.values())
        opt = make_optimizer(self.params, self.lr, self.weight_decay)
        with torch.no_grad():
            for n, p in named.items():
                if n in old and old[n].shape == p.shape:
                    p.copy_(old[n])
                    if old[n] in self.opt.state:
                        opt.state[p] = self.opt.state[old[n]]
        self.opt = opt
        self.device = next(part.module.parameters()).device
        self.part.train()

    @property
    def cut(self) -> int:
        return self.part.cut if isinstance(self.part, ClientPart) else self.part.n_layer

    def state_dict(self) -> dict[str, Any]:
        """What the client carries from round to round: its cut, LoRA and AdamW state, its last loss, the
        samples since its last push, and where its batch stream stands."""
        scale = {"loss_scale": self.scaler.state_dict()} if self.scaler.enabled else {}
        return {"cut": self.cut, "lora": lora.adapter_state_dict(self.part.module),
                "opt": optimizer_state(self.opt, lora.lora_parameters(self.part.module)),
                "last_loss": self.last_loss, "samples_seen": self.samples_seen, "stream": self.stream.state_dict(),
                **scale}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()`; the part must already be at the saved cut (the federation re-cuts first,
        since only it can build a part)."""
        assert state["cut"] == self.cut, f"client {self.client_id}: saved at cut {state['cut']}, part at {self.cut}"
        lora.load_adapter_state_dict(self.part.module, state["lora"])
        load_optimizer_state(self.opt, lora.lora_parameters(self.part.module), state["opt"])
        self.last_loss, self.samples_seen = state["last_loss"], state["samples_seen"]
        self.stream.load_state_dict(state["stream"])
        if "loss_scale" in state:
            self.scaler.load_state_dict(state["loss_scale"])

    def payload(self) -> dict[str, torch.Tensor]:
        """This round's adapters as a push carries them: blocks [0, cut), the cut layer at r_cut."""
        sd = lora.adapter_state_dict(self.part.module)
        if isinstance(self.part, ClientPart) and self.r_cut is not None:
            sd = lora.cut_payload(sd, self.part.family, self.cut, self.r_cut, self.part.tail_cut)
        return sd

    def push(self, transport: Transport, round_: int, report: dict[str, Any] | None = None) -> None:
        """Send this round's adapters (`payload`) and the samples behind them."""
        transport.push_adapters(AdapterUpdate(self.client_id, round_, self.payload(), self.samples_seen, report or {}))
        self.samples_seen = 0

    def pull(self, transport: Transport, round_: int, report: dict[str, Any] | None = None,
             recut: Callable[[int], ClientPart | FullPart] | None = None) -> int:
        """Load the global adapters for this client's blocks (in place: optimizer state is kept). When the server
        answers with another cut (a deployed server's policy), `recut` builds the part for it first. Returns the
        cut of the round."""
        pulled = transport.pull_adapters(self.client_id, self.cut, round_, report)
        self.budget = (pulled.budget_s, pulled.max_steps)  # the round's time budget, if the server set one
        if pulled.cut != self.cut:
            if recut is None:
                raise TransportError(f"client {self.client_id}: the server assigned cut {pulled.cut} to a client "
                                     f"that cannot change its cut (at {self.cut})")
            self.replace_part(recut(pulled.cut))
        lora.load_adapter_state_dict(self.part.module, pulled.adapters)
        return pulled.cut

    def _next_batch(self) -> dict[str, torch.Tensor]:
        batch = {k: v.to(self.device) for k, v in self.stream.next().items()}
        self.last_shape = tuple(batch["input_ids"].shape)  # (B, T): what the virtual clock charges
        return batch

    def _backward(self, root: torch.Tensor, seed: torch.Tensor | None, leaves: Sequence[torch.Tensor]) -> None:
        """Gradients of `root` (times `seed`) into `leaves` (this part's LoRA, and what goes back up), loss-scaled
        under float16 compute."""
        if not self.scaler.backward(root, seed, leaves):
            raise NonFiniteStep(f"client {self.client_id}: a gradient is NaN/Inf at every loss scale; lower train.lr "
                                "or use train.compute_dtype=bfloat16 or float32")

    def _update(self) -> None:
        clip(self.params, self.max_grad_norm)
        set_lr(self.opt, self.schedule.at(*self.at))
        self.opt.step()

    @property
    def current_lr(self) -> float:
        """The lr of the last optimizer step."""
        return float(self.opt.param_groups[0]["lr"])

    def _sync(self) -> None:
        """Wait for queued GPU work, so step timings measure the compute (no-op on the CPU)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @torch.no_grad()
    def evaluate(self, transport: Transport, examples: list[Example], batch_size: int, pad_id: int,
                 round_: int) -> tuple[float, int, int]:
        """(loss_sum, n_tokens, n_correct) of the current adapters on `examples` (no updates anywhere)."""
        total = [0.0, 0, 0]
        self.part.train(False)
        for i, batch in enumerate(batches(examples, batch_size, pad_id)):
            batch = {k: v.to(self.device) for k, v in batch.items()}
            total = [a + b for a, b in zip(total, self._eval_batch(transport, batch, round_, i), strict=True)]
        self.part.train(True)
        return total[0], int(total[1]), int(total[2])

    def _eval_batch(self, transport: Transport, batch: dict[str, torch.Tensor], round_: int,
                    i: int) -> tuple[float, int, int]:
        raise NotImplementedError


class SplitClient(_Client):
    part: ClientPart
    noise: float = 0.0
    _tail_s: float = 0.0  # seconds of the U-shaped tail in the current step (compute, not link)
    _pending: tuple[torch.Tensor, int, float] | None = None  # a begun step: (activations, rows, forward seconds)
    _noise_gen: torch.Generator | None = None

    grad_clip: float = 0.0
    grad_noise: float = 0.0
    grad_keep: float = 1.0

    def set_noise(self, noise: float, seed: int, grad_clip: float = 0.0, grad_noise: float = 0.0,
                  grad_keep: float = 1.0) -> None:
        """Add N(0, (noise * rms)^2) to every activation sent (rms of that batch), and under U keep, clip and
        noise grad_hidden (`_defended`); a private generator keeps the global RNG, and so the rest of the run,
        untouched."""
        self.noise, self._noise_seed, self.grad_clip, self.grad_noise = noise, seed, grad_clip, grad_noise
        self.grad_keep = grad_keep

    def _generator(self, device: torch.device) -> torch.Generator:
        if self._noise_gen is None or self._noise_gen.device != device:
            self._noise_gen = torch.Generator(device).manual_seed(self._noise_seed)
        return self._noise_gen

    def state_dict(self) -> dict[str, Any]:
        """The client's state and, once the first noisy request has drawn from it, the noise generator's."""
        state = super().state_dict()
        if self._noise_gen is not None:
            state["noise_rng"] = self._noise_gen.get_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if "noise_rng" in state:
            self._noise_gen = torch.Generator(self.device)
            self._noise_gen.set_state(state["noise_rng"])

    def _sent(self, acts: torch.Tensor) -> torch.Tensor:
        """What leaves the client: the activations, plus noise when configured (`defenses.noisy_activations`)."""
        sent = acts.detach()
        return noisy_activations(sent, self.noise, self._generator(sent.device)) if self.noise > 0 else sent

    def _defended(self, grad: torch.Tensor) -> torch.Tensor:
        """grad_hidden (B, T, H) as it leaves a U-shaped client (`defenses.defended_grad`)."""
        return defended_grad(grad, self.grad_clip, self.grad_noise, self.grad_keep, self._generator(grad.device))

    def _request(self, batch: dict[str, torch.Tensor], acts: torch.Tensor, round_: int, step: int,
                 train: bool) -> ForwardRequest:
        labels = None if self.u_shaped else batch["labels"].to(LABEL_DTYPE)  # under U the labels stay here
        return ForwardRequest(self.client_id, round_, step, self.cut, self._sent(acts),
                              batch["attention_mask"].to(MASK_DTYPE), labels, train)

    @property
    def u_shaped(self) -> bool:
        return self.part.tail_cut is not None

    def train_step(self, transport: Transport, round_: int, step: int) -> StepReply:
        """Forward to the cut -> send activations -> (U: hidden states down, tail + loss + backward, grad_hidden
        up) -> receive grad_activations -> backward -> AdamW step."""
        request = self.begin_step(round_, step)
        sent = time.perf_counter()
        reply = self.exchange(transport, request)
        self.finish_step(reply, time.perf_counter() - sent)
        return reply

    def exchange(self, transport: Transport, req: ForwardRequest, reply: StepReply | None = None) -> StepReply:
        """What a begun step needs from the server: its reply (vanilla), or under U the hidden states, then this
        client's tail forward, loss and tail backward (its tail's LoRA gradients), then the server's backward.
        Returns the reply `finish_step` takes: grad_activations, and the loss as computed here under U. `reply`:
        the server's reply to `req` when the caller has it already (the simulator serves requests it sent ahead)."""
        reply = transport.step(req) if reply is None else reply
        if reply.hidden is None:
            return reply
        start = time.perf_counter()
        mask, labels = self._tail_batch
        hidden = reply.hidden.to(self.device).detach().requires_grad_(True)
        stats = self.part.tail_loss(hidden, mask, labels)
        self._backward(stats.loss_sum / max(stats.n_tokens, 1), None, [*self.params, hidden])  # tail LoRA, hidden
        self._sync()
        self._tail_s = time.perf_counter() - start
        assert hidden.grad is not None, "the tail's backward reached the hidden states"
        back = transport.backward(BackwardRequest(req.client_id, req.round, req.step, self._defended(hidden.grad)))
        return StepReply(stats.loss_sum.item(), stats.n_tokens, stats.n_correct, back.grad_activations,
                         reply.server_s + back.server_s)

    def begin_step(self, round_: int, step: int) -> ForwardRequest:
        """The first half of a step: the next batch, the forward to the cut, the request to send. It depends on
        this client's state alone, so it may run before the server serves the steps of other clients (the
        simulation does, to order steps by arrival)."""
        batch = self._next_batch()
        start = time.perf_counter()
        self.at = (round_, step)
        self.opt.zero_grad(set_to_none=True)  # a U-shaped tail accumulates its gradients before finish_step
        acts = self.part.forward(batch["input_ids"], batch["attention_mask"])  # (B, T, H)
        self._pending = (acts, batch["input_ids"].shape[0], time.perf_counter() - start)
        self._tail_batch, self._tail_s = (batch["attention_mask"], batch["labels"]), 0.0
        return self._request(batch, acts, round_, step, train=True)

    def finish_step(self, reply: StepReply, round_trip_s: float = 0.0) -> None:
        """The second half: backward from grad_activations, AdamW step, timing of the whole step."""
        assert self._pending is not None, "finish_step follows begin_step"
        acts, rows, forward_s = self._pending
        start = time.perf_counter()
        assert reply.grad_activations is not None and reply.grad_activations.shape == acts.shape
        self._backward(acts, reply.grad_activations.to(acts.device, acts.dtype), self.params)
        self._update()
        self._sync()
        self.timing = StepTiming(compute_s=forward_s + self._tail_s + (time.perf_counter() - start),
                                 link_s=max(round_trip_s - reply.server_s - self._tail_s, 0.0),
                                 tokens=acts.shape[0] * acts.shape[1])
        self.samples_seen += rows
        self._pending = None

    def _eval_batch(self, transport: Transport, batch: dict[str, torch.Tensor], round_: int,
                    i: int) -> tuple[float, int, int]:
        acts = self.part.forward(batch["input_ids"], batch["attention_mask"])
        reply = transport.step(self._request(batch, acts, round_, i, train=False))
        if reply.hidden is None:
            return reply.loss_sum, reply.n_tokens, reply.n_correct
        stats = self.part.tail_loss(reply.hidden.to(self.device), batch["attention_mask"], batch["labels"])
        return stats.loss_sum.item(), stats.n_tokens, stats.n_correct


class LocalClient(_Client):
    """Trains the whole model on its own data (FedAvg-LoRA; with one client holding all data, centralized LoRA).

    Replies are built locally, so the loss bookkeeping is the split client's; nothing but adapters is sent.
    """

    part: FullPart

    def train_step(self, transport: Transport, round_: int, step: int) -> StepReply:
        batch = self._next_batch()
        start = time.perf_counter()
        self.at = (round_, step)
        stats = self.part.loss(batch["input_ids"], batch["attention_mask"], batch["labels"])
        self.opt.zero_grad(set_to_none=True)
        self._backward(stats.loss_sum / max(stats.n_tokens, 1), None, self.params)
        self._update()
        self._sync()
        self.timing = StepTiming(time.perf_counter() - start, tokens=batch["input_ids"].numel())
        self.samples_seen += batch["input_ids"].shape[0]
        return StepReply(stats.loss_sum.item(), stats.n_tokens, stats.n_correct)

    def _eval_batch(self, transport: Transport, batch: dict[str, torch.Tensor], round_: int,
                    i: int) -> tuple[float, int, int]:
        stats = self.part.loss(batch["input_ids"], batch["attention_mask"], batch["labels"])
        return stats.loss_sum.item(), stats.n_tokens, stats.n_correct
