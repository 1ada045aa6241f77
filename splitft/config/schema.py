"""The config's sections: one typed dataclass per section, every field with its default and a docstring that
says what it means; `Config` holds them all.

Every key has an audience (each section's `AUDIENCE`, "*" its default): `shared` (every party of a deployment
must hold it alike: the handshake compares exactly these, `keys_for(SHARED)`), `server` or `client` (read by
that party only), `each` (each party's own, may differ), `simulation` (no deployed party reads it). The
deployment's sections are by audience: `server`, `client`, `codec` (shared), `transport` (the wire, each).
"""

from __future__ import annotations

import dataclasses
import reprlib
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..errors import UserError
from .audience import CLIENT, EACH, SERVER, SHARED, SIMULATION, audience_of
from .parties import ClientConfig, CodecConfig, MeasureConfig, ServerConfig, TransportConfig


@dataclass
class ModelConfig:
    AUDIENCE: ClassVar[dict[str, str]] = {"*": EACH, "dtype": SHARED}  # the source: by its fingerprint
    source: str = "builtin:smollm2-135m-instruct"
    """builtin:<name>, tiny:<family>, a Hugging Face folder, or a .gguf file (see splitft/model/loader.py)."""
    dtype: str = "float32"
    """float32 | bfloat16 | float16 | auto: the storage dtype of the frozen base weights (auto: the compute dtype
    when that is 16-bit, else float32). 16-bit storage halves a party's weights and needs 16-bit compute. What
    crosses the cut is codec.up's and codec.down's alone (splitft/precision.py has all three dtypes)."""
    device: str = "auto"
    """auto (cuda if available, else cpu) | cpu | cuda | cuda:N."""


@dataclass
class LoraConfig:
    AUDIENCE: ClassVar[dict[str, str]] = {"*": SHARED}
    r: int = 16
    """LoRA rank of every block except the cut layer."""
    r_cut: int = 16
    """LoRA rank of the last client block and the first server block (SplitFT uses 8 with r=16)."""
    alpha: float = 32.0
    """LoRA alpha. Every module, the cut layer included, is scaled by alpha / r (r = lora.r, the stored rank; the
    cut layer's r_cut is a mask over components, not a smaller rank), so the exported rank-r adapter loads in
    PEFT at exactly this scale. See the convention in splitft/lora.py."""
    dropout: float = 0.0
    targets: list[str] = field(default_factory=list)
    """Module-name suffixes to wrap; empty = the family's attention projections."""


@dataclass
class SplitConfig:
    AUDIENCE: ClassVar[dict[str, str]] = {"*": SERVER, **dict.fromkeys(
        ("shape", "tail", "cut", "policy", "cut_min", "cut_max"), SHARED)}  # the policy's knobs: the server's
    shape: str = "vanilla"
    """vanilla: the client holds embeddings + blocks [0, cut), the server the rest, the head and the loss (labels
    cross the network) | u: the client also holds the last `tail` blocks, the final norm and the LM head and
    computes the loss itself; the server holds the middle blocks [cut, n_layer - tail) (labels stay home)."""
    tail: int = 1
    """Under shape=u: blocks at the end of the model a client holds (the same for every client of a federation:
    the server's middle ends at one block for all). Ignored under vanilla."""
    cut: int = 2
    """Blocks a client holds (client: [0, cut); server: [cut, n_layer)): every client's cut under `fixed`, the
    cut of a client of mean speed under `resource` and `splitft`."""
    policy: str = "fixed"
    """fixed (same cut for all) | resource (from speed and memory) | splitft (resource, then moved by loss) |
    makespan (the cuts that minimise the predicted round time within memory, then moved by loss)."""
    cut_min: int = 1
    cut_max: int = 0
    """Adaptive cuts stay in [cut_min, cut_max]; 0 = n_layer - 1. The server holds blocks from cut_min on."""
    gamma: float = 1.0
    """splitft: blocks a client's cut moves per standard deviation its loss is below (+) or above (-) the mean."""
    period: int = 2
    """splitft, makespan: rounds between cut decisions."""
    tolerance: float = 0.02
    """makespan: how much slower than the fastest predicted round the performance rule may make it (0.02 = 2%)."""
    hysteresis: float = 0.05
    """makespan: keep the current cuts unless new ones predict a round at least this much faster (0.05 = 5%)."""
    privacy_floor: float = 0.0
    """The highest token recovery from the activations at the cut a data owner accepts (0.2 = a curious server
    gets at most 20% of the tokens back with the best attack measured); every policy's cut is then at least the
    smallest cut measured below it (split.privacy_table, written by `splitft privacy`), at privacy.noise. 0 = off."""
    privacy_table: str = ""
    """The JSON `splitft privacy --out FILE` wrote for this model (needed by split.privacy_floor)."""
    allow_over_memory: bool = False
    """A client whose memory budget fits no cut it may be given (cut_min; split.cut under `fixed`) refuses the run;
    true runs it anyway at that cut, with a warning in the log and the `setup` record."""


@dataclass
class FederationConfig:
    AUDIENCE: ClassVar[dict[str, str]] = {"*": SHARED, "dropout": SIMULATION, "server_batch": SERVER,
                                          "server_batch_wait_ms": SERVER}
    method: str = "split"
    """split (split learning with split.policy) | fedlora (no split: clients train the whole model, FedAvg) |
    centralized (one trainer on the pooled data, n_clients x local_steps steps per round, on the server)."""
    n_clients: int = 3
    rounds: int = 3
    local_steps: int = 4
    """Split steps each selected client runs per round (interleaved across clients)."""
    clients_per_round: int = 0
    """How many clients a round selects (seeded); 0 = all."""
    seed: int = 0
    dropout: float = 0.0
    """Simulation: chance that a selected client drops out of a round, at a seeded random step (it does not
    push; the round aggregates over the others)."""
    order: str = "plan"
    """How the server serves the round's training steps: plan (a seeded round-robin over the selected clients;
    deterministic, a deployment ends bit-identical to the simulation, but every client waits for its turn) |
    arrival (each step when it arrives, first come first served; the simulation orders them by the virtual
    clock's arrival times, a deployment by real ones)."""
    round_budget: str = "steps"
    """What ends a client's round: steps (every selected client runs local_steps) | time (each runs steps until
    the round's time budget, federation.round_time_s, has passed, so faster clients run more; FedAvg weighs
    them by samples)."""
    round_time_s: float = 0.0
    """The time budget of a round under round_budget=time; 0 = what the median selected client needs for
    local_steps steps on its own (its compute and link per step in its last round, no waits for others), or the
    slowest selected client's one step if longer (everyone runs at least one step)."""
    max_steps_factor: float = 2.0
    """Under round_budget=time no client runs more than max_steps_factor x local_steps steps in a round: a bound
    on how far the shared server part leans toward the fastest clients."""
    server_batch: int = 1
    """Up to this many ready training steps of different clients run as one server step: one forward/backward
    of their activations joined (each from its own cut) and one AdamW step on the token-weighted mean gradient
    (SFL-V2 with gradient averaging over a window), not that many sequential steps; each client still gets the
    gradient of its own loss. 1 = one server step per client step. Under order=plan a batch is the next turns of
    the plan (deterministic: a deployment stays bit-identical to the simulation); under arrival, the steps
    waiting when the server is free. Vanilla split only."""
    server_batch_wait_ms: float = 0.0
    """Under order=arrival: how long a server step may wait for more clients' steps to fill its batch (0 = it
    takes those already waiting: no added latency; while a step computes, the next ones queue up anyway)."""


@dataclass
class TrainConfig:
    AUDIENCE: ClassVar[dict[str, str]] = {"*": SHARED, "lr": EACH, "weight_decay": EACH, "max_grad_norm": EACH}
    lr: float = 2e-4
    batch_size: int = 4
    weight_decay: float = 0.0
    max_grad_norm: float = 0.0
    """Clip each side's LoRA gradient norm separately (0 = no clipping)."""
    schedule: str = "constant"
    """Learning rate over the run, counted in global optimizer steps (rounds x local_steps): constant (lr
    throughout) | linear (to 0 at the last step) | cosine (to 0 at the last step); every party of the split, in
    simulation and deployment alike, steps at the same lr."""
    warmup_steps: int = 0
    """Global optimizer steps of linear warmup from 0 to lr before the schedule (0 = none)."""
    compute_dtype: str = "float32"
    """float32 | bfloat16 | float16 | auto: what every forward and backward of every party runs in (autocast);
    LoRA weights, AdamW state and the loss stay float32. auto: bfloat16 on a CUDA device with bf16 and on a CPU
    with AMX-BF16 or AVX512-BF16, else float32. float16: CUDA only, with loss scaling."""
    activation_checkpointing: bool = False
    """Recompute each held block's forward during the backward instead of keeping its activations: a party keeps
    one (B, T, H) input per block, for about a third more compute on its blocks (the cost model charges both)."""
    loss_chunk_tokens: int = 0
    """> 0: the loss runs the LM head over this many label tokens at a time, computing their gradient with it, so
    no (B, T, vocab) logits tensor is ever whole (the shipped configs use 256: 50 MB of float32 logits at a time
    for SmolLM2); equal to the whole logits' loss up to float32 rounding. 0: the whole (B, T, vocab) logits."""


@dataclass
class DataConfig:
    AUDIENCE: ClassVar[dict[str, str]] = {"*": CLIENT, "max_length": SHARED}  # each client's own data
    path: str = "builtin:shakespeare_dialogue"
    """builtin:shakespeare_dialogue, builtin:python_stdlib (this interpreter's standard library as code), a local
    .jsonl/.json/.csv/.parquet/.txt file, a folder of such files (shards of one type), or a folder written by
    `datasets`' save_to_disk."""
    format: str = "auto"
    """auto (detected from the columns) | messages (OpenAI/TRL: a list of {role, content}) | sharegpt
    (`conversations` of {from, value}) | alpaca (instruction, optional input, output) | prompt_response
    (prompt_column + response_column) | text (text_column; loss on every token). See splitft/data/formats.py."""
    prompt_column: str = "prompt"
    response_column: str = "response"
    text_column: str = "text"
    """Used when the data has no prompt/response columns: plain text, loss on every token."""
    train_on: str = "assistant"
    """Which tokens of a conversation carry loss: assistant (every assistant turn and its end-of-turn token) |
    last_assistant (the last assistant turn only) | all (every token, the template's included)."""
    chat_template: str = ""
    """A Jinja file to render conversations with instead of the tokenizer's own chat template (generation uses
    it too); empty = the tokenizer's template (a tokenizer without one: turns joined by newlines, eos after each
    assistant turn)."""
    max_length: int = 256
    """Tokens per sample; longer samples are truncated as data.truncation says (and counted)."""
    truncation: str = "prompt_left"
    """How a sample longer than max_length is cut: prompt_left (drop the oldest context first and keep the last
    assistant turn's target; plain text is cut on the right) | right (keep the first max_length tokens; a sample
    whose target then lies wholly beyond is dropped, and counted)."""
    max_samples: int = 0
    """Use only the first N samples after shuffling (0 = all)."""
    eval_fraction: float = 0.1
    max_eval_samples: int = 64
    partitioner: str = "iid"
    """iid | length_dirichlet (SplitFT: token-length buckets x Dirichlet) | dirichlet (over category_column) |
    natural (whole categories of category_column per client, balanced by size)."""
    alpha: float = 0.5
    """Dirichlet concentration for the non-IID partitioners; 0.1 is highly non-IID, large values approach IID."""
    n_buckets: int = 5
    """Length buckets K for length_dirichlet (quantile edges), ignored when bucket_edges is set."""
    bucket_edges: list[int] = field(default_factory=list)
    """Explicit ascending inner token-length boundaries for length_dirichlet (K-1 values)."""
    category_column: str = ""
    """Column whose values the dirichlet partitioner spreads (e.g. `play` in the builtin data)."""
    min_partition_size: int = 1
    """Every client needs at least this many samples; Dirichlet draws are repeated (bounded) until it holds."""


@dataclass
class DeviceConfig:
    """A device tier for the virtual clock and the memory limit on cuts."""

    name: str = "custom"
    tflops: float = 1.0
    """Effective training throughput, 1e12 FLOP/s."""
    memory_gb: float = 4.0
    up_mbps: float = 20.0
    down_mbps: float = 100.0
    latency_ms: float = 20.0


@dataclass
class HeterogeneityConfig:
    AUDIENCE: ClassVar[dict[str, str]] = {"*": SIMULATION}  # and --emulate's device profiles
    profile: str = "homogeneous"
    """homogeneous (all `laptop`) | tiers (each client drawn from phone/laptop/workstation, seeded) |
    lognormal (laptop numbers times log-normal factors of sigma `spread`) | list (`devices`, one per client)."""
    devices: list[str] = field(default_factory=list)
    """Tier names, one per client, for profile=list."""
    tiers: list[DeviceConfig] = field(default_factory=list)
    """Extra or replacement tiers (by name) next to the builtin phone, laptop, workstation."""
    spread: float = 0.5
    server_tflops: float = 50.0
    """The server's effective training throughput, 1e12 FLOP/s."""
    server_step_s: float = 0.0
    """Seconds every server step costs beside its FLOPs (kernel launches, message handling: what joining k
    clients' steps, federation.server_batch, pays once instead of k times); 0 = FLOPs only. Calibrate it with
    benchmarks/server_batch.py, whose `fit` gives it for a machine (an H200, a 1B model in bf16: 0.076 s, against
    0.0025 s per client step it serves)."""


@dataclass
class PrivacyConfig:
    AUDIENCE: ClassVar[dict[str, str]] = {"*": SHARED, "noise": CLIENT}  # every client protects its labels alike
    noise: float = 0.0
    """Gaussian noise added to the activations before they leave a client (training and evaluation), with
    std = noise x the RMS of that batch's activations; 0 = off. A first defense against inverting them."""
    grad_clip: float = 0.0
    """split.shape=u: before grad_hidden leaves a client, scale each token's row (H,) down to at most grad_clip x
    the median norm of that batch's nonzero rows; 0 = off. Bounds what one label's row can say (the server reads
    a label from its row's direction: benchmarks/label_inference.py)."""
    grad_noise: float = 0.0
    """split.shape=u: then add Gaussian noise to every row of grad_hidden, padding included, of expected norm
    grad_noise x the clip bound (x the median nonzero row norm when grad_clip is 0); 0 = off."""
    grad_keep: float = 1.0
    """split.shape=u: before clipping, send each token's row of grad_hidden with this probability and zeros
    otherwise (a fresh draw every step): the server's blocks train on the kept tokens only, and a zeroed row
    tells nothing of its label; 1 = every row."""


@dataclass
class MetricsConfig:
    AUDIENCE: ClassVar[dict[str, str]] = {"*": EACH}
    out_dir: str = "out/default"
    eval_every: int = 1
    """Evaluate held-out perplexity every N rounds (and always after the last round)."""
    progress: bool = True
    checkpoint_every: int = 1
    """Save a checkpoint (checkpoints/round_<r>) every N rounds for `splitft simulate --resume`; 0 = never."""
    report_to: str = "none"
    """Also send per-round metrics to a tracker: none | tensorboard (events in <out_dir>/tensorboard) | any
    tracker accelerate knows that is installed (wandb, mlflow, aim, ...). The deployed server reports for the whole
    federation; metrics.jsonl stays the record."""


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    heterogeneity: HeterogeneityConfig = field(default_factory=HeterogeneityConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    transport: TransportConfig = field(default_factory=TransportConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)


def keys_for(audience: str) -> tuple[str, ...]:
    """The dotted keys of `audience`, in the schema's order (e.g. the handshake's: `keys_for(SHARED)`)."""
    keys: list[str] = []
    for s in dataclasses.fields(Config):
        section: Any = s.default_factory  # every field of Config is a section: field(default_factory=<its class>)
        keys += [f"{s.name}.{f.name}" for f in dataclasses.fields(section) if audience_of(section, f.name) == audience]
    return tuple(keys)


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxother = 2, 4, 4, 60, 60


def show(value: Any) -> str:
    """A value as an error message quotes it: short whatever it is (a 471-byte YAML alias bomb expands to a
    structure whose full repr is 312 MB)."""
    return _REPR.repr(value)


class ConfigError(UserError):
    """All problems found in a config, one per line."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid config:\n  " + "\n  ".join(problems))
