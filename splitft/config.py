"""One typed config tree: YAML file + dotted overrides (`split.cut=3`), all errors reported at once, saved per run.

    cfg = load_config("configs/default.yaml", ["federation.rounds=2", "--split.cut=4"])
    save_config(cfg, run_dir / "config.yaml")

Checks that need the model (cut < number of blocks, max_length <= context) live in `validate_against_model`,
which reads only the model's metadata, so a bad config fails before any weights load. Names that pick a
component (partitioner, codec, policy, dtype, method, device profile) are checked by that component's registry
(`registry.py`), passed in as `checks` by the composition root (`build.load`): this module sits below every
component and imports none of them.
"""

from __future__ import annotations

import dataclasses
import math
import reprlib
import sys
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError


@dataclass
class ModelConfig:
    source: str = "builtin:smollm2-135m-instruct"
    """builtin:<name>, tiny:<family>, a Hugging Face folder, or a .gguf file (see splitft/model/loader.py)."""
    dtype: str = "float32"
    """float32 | bfloat16 | float16 | auto: the storage dtype of the frozen base weights (auto: the compute dtype
    when that is 16-bit, else float32). 16-bit storage halves a party's weights and needs 16-bit compute. What
    crosses the cut is transport.codec_up's and codec_down's alone (splitft/precision.py has all three dtypes)."""
    device: str = "auto"
    """auto (cuda if available, else cpu) | cpu | cuda | cuda:N."""


@dataclass
class LoraConfig:
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
class TransportConfig:
    address: str = "127.0.0.1:50051"
    """host:port the server listens on and clients connect to."""
    tokens_file: str = ""
    """Server: file with one secret token per line, line i for client i (`splitft launch` writes one)."""
    token_env: str = "SPLITFT_TOKEN"
    """Client: the environment variable holding this client's token (never on the command line)."""
    tls_cert: str = ""
    tls_key: str = ""
    """Server: PEM certificate and key; both empty = plaintext (loopback tests only)."""
    tls_root: str = ""
    """Client: PEM certificate of the CA (or the self-signed server certificate) to trust."""
    tls_client_ca: str = ""
    """Server: mutual TLS: accept only clients whose certificate this PEM CA signed (needs tls_cert)."""
    tls_client_cert: str = ""
    tls_client_key: str = ""
    """Client: PEM certificate and key presented to a mutual-TLS server (needs tls_root)."""
    chunk_kb: int = 1024
    """Frames carry at most this much of a serialized message; gRPC's message limit is set to match."""
    max_message_mb: int = 64
    """Largest message (all frames of it) either side accepts; larger ones are refused."""
    timeout_s: float = 3600.0
    """Client: per-call deadline; a reply that takes longer (the server stuck or gone) ends the client."""
    heartbeat_s: float = 5.0
    """Client: send a heartbeat this often, also while computing, so the server knows it is alive."""
    dead_after_s: float = 120.0
    """Server: a selected client silent this long (no heartbeat, no request) is dropped from the round."""
    round_timeout_s: float = 1800.0
    """Server: a selected client that has not pushed this long after its round began is dropped (straggler);
    the round aggregates over the survivors."""
    reconnect_s: float = 300.0
    """Client: after a broken connection (or a server not up yet), keep reconnecting, with backoff up to 10 s
    between tries, for this long before giving up; resends are idempotent (keys), and a server restarted with
    `splitft server --resume` is rejoined where it stands."""
    codec_up: str = "none"
    """How activations (and, under split.shape=u, grad_hidden) cross from client to server, in simulation and
    deployment alike: none (float32, lossless) | fp16 | bf16 | int8_token | int8_channel | int4_token | int4_group
    (splitft/transport/compress.py), whatever model.dtype and train.compute_dtype are; or auto: the cut policy picks
    each client's codec with its cut, among those within transport.max_ppl_cost (simulation). Lossy codecs pass
    gradients straight through. The server and every client must use the same one (the handshake compares)."""
    codec_down: str = "none"
    """How grad_activations (and, under U, hidden) cross from server to client: the same codecs; a 4-bit one needs
    transport.allow_lossy_grad (published results lose quality with gradients below 8 bits)."""
    entropy: str = "none"
    """Lossless coding of every codec's values on top of it: none | zstd | lz4 (pip install 'splitft[compress]');
    bytes are counted at their compressed size."""
    allow_lossy_grad: bool = False
    """Allow a codec of fewer than 8 bits on a gradient (codec_down; codec_up under a U-shaped split)."""
    max_ppl_cost: float = 0.01
    """transport.codec_up=auto: the most a client's codec may raise the held-out perplexity, relative (0.01 =
    1%), as measured at setup on the pretrained model with the activations at the reference cut encoded."""

    @property
    def chunk_bytes(self) -> int:
        return self.chunk_kb * 1024

    @property
    def max_bytes(self) -> int:
        return self.max_message_mb << 20


@dataclass
class MeasureConfig:
    """What a deployed client reports to the server's cut policy (a simulation uses `heterogeneity` instead)."""

    memory_gb: float = 0.0
    """Most memory (GB) the client gives to its part; 0 = what the machine has free (RAM, or CUDA memory)."""
    profile: str = ""
    """A device tier name (phone, laptop, workstation or one of heterogeneity.tiers): report its numbers instead
    of measured ones, for reproducible runs; empty = measure."""
    ewma: float = 0.3
    """Weight of the newest step in the smoothed compute and link measurements (0 < ewma <= 1)."""


@dataclass
class PrivacyConfig:
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
    transport: TransportConfig = field(default_factory=TransportConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)


class ConfigError(UserError):
    """All problems found in a config, one per line."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid config:\n  " + "\n  ".join(problems))


# --- building from dicts ---------------------------------------------------------------------------------


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxother = 2, 4, 4, 60, 60


def _show(value: Any) -> str:
    """A value as an error message quotes it: short whatever it is (a 471-byte YAML alias bomb expands to a
    structure whose full repr is 312 MB)."""
    return _REPR.repr(value)


def _coerce(value: Any, tp: Any, key: str, problems: list[str]) -> Any:
    origin = typing.get_origin(tp)
    if origin in (list, list):
        if value is None or value == "":
            value = []
        elif isinstance(value, (str, int, float)):
            value = [value]  # `lora.targets=q_proj` means a one-element list
        if not isinstance(value, list):
            problems.append(f"{key}: expected a list, got {_show(value)}")
            return None
        return [_coerce(v, typing.get_args(tp)[0], f"{key}[{i}]", problems) for i, v in enumerate(value)]
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            problems.append(f"{key}: expected a mapping, got {_show(value)}")
            return None
        return _build(tp, value, key + ".", problems)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # PyYAML reads 1e-4 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if tp in (int, float, str, bool) and not (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        problems.append(f"{key}: expected {tp.__name__}, got {_show(value)}")
        return None
    if tp is float and not math.isfinite(value):  # no setting means anything at NaN or infinity
        problems.append(f"{key}: must be a finite number, got {value}")
        return None
    return value


RENAMED = {"transport.codec": ("transport.codec_up", "transport.codec_down")}
"""Keys of an earlier release that still work, and the keys that replaced them (each gets the old key's value
unless set too); loading one prints a one-line note."""
RETIRED = {"transport.kind": "the command picks the transport (simulate: in-process; server, client, launch: "
                             "gRPC); delete this key",
           "transport.retries": "a client now keeps reconnecting for transport.reconnect_s seconds (default 300); "
                                "use that key instead"}
"""Keys older versions wrote into run directories: named with what replaced them instead of 'unknown key'."""


def _build(cls: type, data: dict[str, Any], prefix: str, problems: list[str]) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in data:
        if f"{prefix}{k}" in RETIRED:
            problems.append(f"{prefix}{k}: no longer a setting: {RETIRED[prefix + k]}")
        elif k not in names:
            name = f"{prefix}{k}" if isinstance(k, str) and len(k) <= 60 else prefix + _show(k)
            problems.append(f"{name}: unknown key; valid keys here: {', '.join(sorted(names))}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        tp, key = hints[f.name], f"{prefix}{f.name}"
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            if not isinstance(data[f.name], dict):
                problems.append(f"{key}: expected a section (mapping), got {_show(data[f.name])}")
                continue
            kwargs[f.name] = _build(tp, data[f.name], key + ".", problems)
        else:
            kwargs[f.name] = _coerce(data[f.name], tp, key, problems)
    return cls(**{k: v for k, v in kwargs.items() if v is not None})


def _apply_override(tree: dict[str, Any], item: str, problems: list[str]) -> None:
    text = item[2:] if item.startswith("--") else item
    if "=" not in text:
        problems.append(f"override '{item}': expected key=value, e.g. split.cut=4")
        return
    key, raw = text.split("=", 1)
    parts = key.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            problems.append(f"override '{item}': '{p}' is not a section")
            return
    node[parts[-1]] = yaml.safe_load(raw) if raw != "" else ""


def _rename(tree: dict[str, Any]) -> None:
    """Move each RENAMED key's value to the keys that replaced it (those not set themselves), with a note."""
    for old, new in RENAMED.items():
        section, name = old.split(".")
        node = tree.get(section)
        if not isinstance(node, dict) or name not in node:
            continue
        value = node.pop(name)
        for key in new:
            node.setdefault(key.split(".")[1], value)
        _note(f"note: {old} is now {' and '.join(new)}; {old}={value} sets both (name them apart to differ)")


_NOTED: set[str] = set()


def _note(text: str) -> None:
    """One line on stderr, once per process (a config is loaded several times in a run)."""
    if text not in _NOTED:
        _NOTED.add(text)
        print(text, file=sys.stderr)


Check = Callable[["Config"], list[str]]


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                checks: Sequence[Check] = ()) -> Config:
    """Read a YAML config (or defaults when `path` is None), apply dotted overrides, validate.

    Args:
        checks: more validators (e.g. the registries' name checks), run with `validate` once types are right.

    Raises:
        ConfigError: listing every problem found (unknown keys, wrong types, out-of-range values, unknown names).
    """
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError([f"config file '{path}' not found"])
        try:
            tree = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as e:
            raise ConfigError([f"config file '{path}' is not UTF-8 text (byte {e.start}); save it as UTF-8"]) from None
        except yaml.YAMLError as e:
            raise ConfigError([f"config file '{path}' is not valid YAML: {e}".splitlines()[0][:300]]) from None
        except OSError as e:
            raise ConfigError([f"config file '{path}' cannot be read: {e.strerror}"]) from None
        if not isinstance(tree, dict):
            raise ConfigError([f"config file '{path}' must hold a mapping of sections"])
    problems: list[str] = []
    for item in overrides or []:
        _apply_override(tree, item, problems)
    _rename(tree)
    cfg = _build(Config, tree, "", problems)
    if not problems:
        problems += validate(cfg) + [p for check in checks for p in check(cfg)]
    if problems:
        raise ConfigError(problems)
    return cfg


# --- validation --------------------------------------------------------------------------------------------


def _positive(problems: list[str], **values: float) -> None:
    for key, v in values.items():
        if v <= 0:
            problems.append(f"{key.replace('__', '.')}: must be > 0, got {v}")


def validate(cfg: Config) -> list[str]:
    """Model-independent checks; returns problems (empty when the config is valid)."""
    p: list[str] = []
    _positive(p, lora__r=cfg.lora.r, lora__r_cut=cfg.lora.r_cut, lora__alpha=cfg.lora.alpha,
              federation__n_clients=cfg.federation.n_clients, federation__rounds=cfg.federation.rounds,
              federation__local_steps=cfg.federation.local_steps, train__lr=cfg.train.lr,
              train__batch_size=cfg.train.batch_size, data__max_length=cfg.data.max_length,
              metrics__eval_every=cfg.metrics.eval_every, data__alpha=cfg.data.alpha,
              data__n_buckets=cfg.data.n_buckets, data__min_partition_size=cfg.data.min_partition_size)
    if cfg.split.cut < 1:
        p.append(f"split.cut: must be >= 1 (the client holds at least one block), got {cfg.split.cut}")
    if not 0 <= cfg.federation.seed < 2 ** 32:
        p.append(f"federation.seed: must be in [0, 2^32) (numpy and torch seed with it), got {cfg.federation.seed}")
    tr, d = cfg.train, cfg.data
    for key, v in {"train.weight_decay": tr.weight_decay, "train.max_grad_norm": tr.max_grad_norm,
                   "data.max_samples": d.max_samples}.items():
        if v < 0:
            p.append(f"{key}: must be >= 0 (0 = {'off' if key.startswith('train') else 'all'}), got {v}")
    if tr.loss_chunk_tokens < 0:
        p.append(f"train.loss_chunk_tokens: must be >= 0 (0 = the whole logits at once), got {tr.loss_chunk_tokens}")
    if d.max_eval_samples < 1:
        p.append(f"data.max_eval_samples: must be >= 1 (held-out samples evaluated), got {d.max_eval_samples}")
    if not cfg.metrics.out_dir.strip():
        p.append("metrics.out_dir: must name a directory for the run (e.g. out/my_run), got ''")
    if cfg.privacy.noise < 0:
        p.append(f"privacy.noise: must be >= 0 (a multiple of the activations' RMS), got {cfg.privacy.noise}")
    for key in ("grad_clip", "grad_noise"):
        v = getattr(cfg.privacy, key)
        if not 0.0 <= v < float("inf"):
            p.append(f"privacy.{key}: must be a number >= 0 (0 = off), got {v}")
        elif v and cfg.split.shape != "u":
            p.append(f"privacy.{key}: protects grad_hidden, which only a U-shaped split sends; set split.shape=u "
                     "or leave it 0")
    keep = cfg.privacy.grad_keep
    if not 0.0 < keep <= 1.0:
        p.append(f"privacy.grad_keep: must be in (0, 1] (the share of grad_hidden rows sent; 1 = all), got {keep}")
    elif keep < 1 and cfg.split.shape != "u":
        p.append("privacy.grad_keep: thins grad_hidden, which only a U-shaped split sends; set split.shape=u or "
                 "leave it 1")
    if not (0.0 <= cfg.measure.memory_gb < float("inf")):
        p.append(f"measure.memory_gb: must be a number >= 0 (0 = what is free), got {cfg.measure.memory_gb}")
    if not 0.0 < cfg.measure.ewma <= 1.0:
        p.append(f"measure.ewma: must be in (0, 1], got {cfg.measure.ewma}")
    f = cfg.federation
    if f.order not in ("plan", "arrival") or f.round_budget not in ("steps", "time"):
        p.append(f"federation.order must be plan or arrival and federation.round_budget steps or time, got "
                 f"{_show(f.order)} and {_show(f.round_budget)}")
    if f.round_time_s < 0 or f.max_steps_factor < 1:
        p.append(f"federation.round_time_s must be >= 0 (0 = auto) and federation.max_steps_factor >= 1, got "
                 f"{f.round_time_s} and {f.max_steps_factor}")
    if f.server_batch < 1 or not 0.0 <= f.server_batch_wait_ms < float("inf"):
        p.append(f"federation.server_batch must be >= 1 (1 = a server step per client step) and "
                 f"federation.server_batch_wait_ms a number >= 0, got {f.server_batch} and {f.server_batch_wait_ms}")
    elif f.server_batch > 1 and (f.method != "split" or cfg.split.shape != "vanilla"):
        p.append(f"federation.server_batch={f.server_batch} joins clients' server steps, which only the vanilla "
                 f"split has (federation.method=split, split.shape=vanilla; a U-shaped step holds the server until "
                 f"its tail's gradient returns, one at a time); got method={f.method}, shape={cfg.split.shape}")
    if not 0.0 <= cfg.federation.dropout < 1.0:
        p.append(f"federation.dropout: must be in [0, 1), got {cfg.federation.dropout}")
    if cfg.metrics.checkpoint_every < 0:
        p.append(f"metrics.checkpoint_every: must be >= 0 (0 = no checkpoints), got {cfg.metrics.checkpoint_every}")
    if not 0.0 <= cfg.lora.dropout < 1.0:
        p.append(f"lora.dropout: must be in [0, 1), got {cfg.lora.dropout}")
    if not 0.0 < cfg.data.eval_fraction < 1.0:
        p.append(f"data.eval_fraction: must be in (0, 1), got {cfg.data.eval_fraction}")
    if not 0 <= cfg.federation.clients_per_round <= cfg.federation.n_clients:
        p.append(f"federation.clients_per_round: must be in [0, n_clients={cfg.federation.n_clients}], "
                 f"got {cfg.federation.clients_per_round}")
    if not (cfg.model.device in ("auto", "cpu", "cuda") or cfg.model.device.startswith("cuda:")):
        p.append(f"model.device: must be auto, cpu, cuda or cuda:N, got '{cfg.model.device}'")
    t = cfg.transport
    _positive(p, transport__chunk_kb=t.chunk_kb, transport__max_message_mb=t.max_message_mb,
              transport__timeout_s=t.timeout_s, transport__heartbeat_s=t.heartbeat_s,
              transport__dead_after_s=t.dead_after_s, transport__round_timeout_s=t.round_timeout_s)
    if not 0.0 <= t.max_ppl_cost < float("inf"):
        p.append(f"transport.max_ppl_cost: must be a relative ppl increase >= 0 (0.01 = 1%), got {t.max_ppl_cost}")
    if not 0 <= t.reconnect_s < float("inf"):
        p.append(f"transport.reconnect_s: must be a number of seconds >= 0 (0 = never reconnect), got {t.reconnect_s}")
    p += _address_problems(t.address)
    if t.max_message_mb > 1024:
        p.append(f"transport.max_message_mb: at most 1024 (gRPC's messages stay under 2 GiB), got {t.max_message_mb}")
    if t.chunk_kb > t.max_message_mb * 1024:
        p.append(f"transport.chunk_kb: a frame cannot exceed the largest message (transport.max_message_mb="
                 f"{t.max_message_mb} = {t.max_message_mb * 1024} KB), got {t.chunk_kb}")
    if t.heartbeat_s * 2 > t.dead_after_s:
        p.append(f"transport.dead_after_s: must be at least twice transport.heartbeat_s ({t.heartbeat_s}), "
                 f"or live clients get dropped between heartbeats; got {t.dead_after_s}")
    if bool(t.tls_cert) != bool(t.tls_key):
        p.append("transport.tls_cert and transport.tls_key: give both (server TLS) or neither")
    if t.tls_client_ca and not t.tls_cert:
        p.append("transport.tls_client_ca: mutual TLS needs server TLS too; set transport.tls_cert and tls_key")
    if bool(t.tls_client_cert) != bool(t.tls_client_key):
        p.append("transport.tls_client_cert and transport.tls_client_key: give both (mutual TLS) or neither")
    if t.tls_client_cert and not t.tls_root:
        p.append("transport.tls_client_cert: a client certificate is only sent over TLS; set transport.tls_root")
    p += _validate_split(cfg)
    p += _choice_problems(cfg)
    if cfg.train.warmup_steps < 0:
        p.append(f"train.warmup_steps: must be >= 0 (0 = no warmup), got {cfg.train.warmup_steps}")
    if cfg.data.partitioner in BY_CATEGORY and not cfg.data.category_column:
        p.append(f"data.category_column: required by data.partitioner={cfg.data.partitioner} (e.g. "
                 f"data.category_column=play, or module for builtin:python_stdlib)")
    return p


BY_CATEGORY = ("dirichlet", "natural")
"""Partitioners that deal the values of data.category_column (the others deal samples by length or at random)."""
DATA_FORMATS = ("auto", "messages", "sharegpt", "alpaca", "prompt_response", "text")
TRAIN_ON = ("assistant", "last_assistant", "all")
TRUNCATIONS = ("prompt_left", "right")
SCHEDULES = ("constant", "linear", "cosine")


def _choice_problems(cfg: Config) -> list[str]:
    """Settings that name one of a few choices."""
    choices = {"data.format": (cfg.data.format, DATA_FORMATS), "data.train_on": (cfg.data.train_on, TRAIN_ON),
               "data.truncation": (cfg.data.truncation, TRUNCATIONS),
               "train.schedule": (cfg.train.schedule, SCHEDULES)}
    return [f"{key}: must be one of {' | '.join(options)}, got {_show(value)}"
            for key, (value, options) in choices.items() if value not in options]


def _address_problems(address: str) -> list[str]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        return [f"transport.address: expected host:port with a port in 1..65535 (e.g. 0.0.0.0:50051), got "
                f"{_show(address)}"]
    return []


def _validate_split(cfg: Config) -> list[str]:
    p, s = [], cfg.split
    if s.cut_min < 1 or (s.cut_max and s.cut_max < s.cut_min):
        p.append(f"split.cut_min/cut_max: need 1 <= cut_min <= cut_max (0 = last possible), got "
                 f"{s.cut_min}/{s.cut_max}")
    elif s.policy != "fixed" and not (s.cut_min <= s.cut and (not s.cut_max or s.cut <= s.cut_max)):
        p.append(f"split.cut: the reference cut {s.cut} must lie in [cut_min={s.cut_min}, cut_max={s.cut_max}]")
    if not 0.0 <= s.privacy_floor <= 1.0:
        p.append(f"split.privacy_floor: must be in [0, 1] (the highest token recovery accepted; 0 = off), got "
                 f"{s.privacy_floor}")
    elif s.privacy_floor and not s.privacy_table.strip():
        p.append("split.privacy_floor: needs the measured table: run `splitft privacy --config FILE --out "
                 "privacy.json` for this model and set split.privacy_table=privacy.json")
    if not (0 <= s.tolerance < 1 and 0 <= s.hysteresis < 1):
        p.append(f"split.tolerance and split.hysteresis: must be in [0, 1), got {s.tolerance} and {s.hysteresis}")
    if s.gamma < 0 or s.period < 1:
        p.append(f"split.gamma must be >= 0 and split.period >= 1, got {s.gamma} and {s.period}")
    if cfg.lora.r_cut > cfg.lora.r:
        p.append(f"lora.r_cut: the cut-layer rank must not exceed lora.r={cfg.lora.r}, got {cfg.lora.r_cut}")
    if s.shape not in SHAPES:
        p.append(f"split.shape: must be one of {', '.join(SHAPES)} (u keeps the labels on the client), got "
                 f"{_show(s.shape)}")
    elif s.shape == "u" and s.tail < 1:
        p.append(f"split.tail: a U-shaped split needs the client to hold at least the last block (split.tail >= 1), "
                 f"got {s.tail}")
    elif s.shape == "u" and cfg.federation.method != "split":
        p.append(f"split.shape=u splits the model; federation.method={cfg.federation.method} does not (use "
                 "split.shape=vanilla)")
    return p


SHAPES = ("vanilla", "u")


def tail_cut(cfg: Config, n_layer: int) -> int | None:
    """The first block of the client's tail under shape=u (the server holds [cut, tail_cut)); None: vanilla."""
    return n_layer - cfg.split.tail if cfg.split.shape == "u" else None


def validate_against_model(cfg: Config, n_layer: int, max_positions: int | None) -> None:
    """Checks that need the model's shape (read from metadata, before weights load).

    Raises:
        ConfigError: cut outside [1, n_layer - 1] or max_length beyond the model's context.
    """
    p, s = [], cfg.split
    end = tail_cut(cfg, n_layer) or n_layer  # the server's blocks end here: it keeps at least block end - 1
    if s.shape == "u" and s.tail >= n_layer - 1:
        p.append(f"split.tail: {s.tail} of this {n_layer}-block model's blocks on the client leave no block for its "
                 f"cut and the server; use split.tail <= {max(n_layer - 2, 1)}")
    elif not 1 <= s.cut <= end - 1:
        why = f" (split.tail={s.tail} puts the client's tail at blocks [{end}, {n_layer}))" if end < n_layer else ""
        p.append(f"split.cut: must be in [1, {end - 1}] for this {n_layer}-block model{why}, got {s.cut}; "
                 + ("lower split.cut or split.tail" if end < n_layer else "lower split.cut"))
    if s.cut_max > end - 1:
        p.append(f"split.cut_max: must be <= {end - 1} for this {n_layer}-block model"
                 + (f" with split.tail={s.tail}" if end < n_layer else "") + f", got {s.cut_max}")
    if max_positions is not None and cfg.data.max_length > max_positions:
        p.append(f"data.max_length: {cfg.data.max_length} exceeds the model's context of {max_positions} tokens")
    if p:
        raise ConfigError(p)


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (every key, defaults included) so a run can be repeated exactly."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))

