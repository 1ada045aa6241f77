"""The run records, one schema: every kind of line in `<run>/metrics.jsonl`, its fields and their types.

A record is a JSON object; in memory a plain dict typed by its kind's TypedDict below, so readers index it
(`r["eval_ppl"]`) and mypy checks the writers' keywords (`MetricsLogger.log`'s overloads). Every record is
written through `check` (the logger raises on a field the schema does not know, a missing one or a wrong type:
a writer out of step with the schema fails in the tests, not in a user's plots) and read through
`read_records` (a damaged line, an unknown kind, a missing field or a wrong type is a `UserError` naming the
line; a field the schema does not know is kept: a run written by another version still reads). Every record carries
`kind` and `wall_time` (seconds since the run began, added by the logger).

    run           the first line: the run's identity (`run_id`) and the command that began it (`runtime`)
    setup         (simulation) the method, partitions, model, devices, memory, precision
    cut_decision  a policy's cuts for a round and why, with what it measured (deployed) and the privacy floor
    codec_costs   (codec.up=auto) the measured perplexity cost of each codec at the cut
    step          (simulation) one training step of one client: loss, tokens, batch shape, bytes up/down
    round         a round: who was aggregated, cuts, train loss, lr, traffic; evaluation fields when evaluated;
                  round -1 is the pretrained model's evaluation
    eval          (deployment) the clients' evaluations of a round's global model, reported after it
    server        (deployment) a line of the server's log
"""

import functools
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, NotRequired, TypedDict, get_args, get_origin, get_type_hints

from .errors import UserError

Kind = Literal["run", "setup", "cut_decision", "codec_costs", "step", "round", "eval", "server"]


class Run(TypedDict):
    run_id: str
    runtime: str  # "simulate" | "deploy"


class Setup(TypedDict):
    method: str
    partition_sizes: list[int]
    data: NotRequired[dict[str, Any]]  # the data files' format, rows, samples kept, truncated, dropped
    eval_samples: int
    n_layer: int
    family: str
    device: str
    devices: dict[str, dict[str, Any]]  # client -> its device profile
    over_memory: dict[str, Any]
    precision: NotRequired[dict[str, Any]]
    activation_checkpointing: NotRequired[bool]
    loss_chunk_tokens: NotRequired[int]


class CutDecision(TypedDict):
    round: int
    policy: str
    cuts: dict[str, int]  # client -> cut
    why: dict[str, Any]
    codecs: NotRequired[dict[str, str]]  # codec.up=auto: client -> codec
    measured: NotRequired[dict[str, Any]]  # deployed: what each client reported
    clamped: NotRequired[dict[str, Any]]
    refused: NotRequired[dict[str, str]]
    server: NotRequired[dict[str, Any]]  # makespan deployed: the server speed it planned with
    privacy_floor_cut: NotRequired[int]
    at_privacy_floor: NotRequired[list[str]]


class CodecCosts(TypedDict):
    cut: int
    max_ppl_cost: float
    ppl_cost: dict[str, float]  # codec -> perplexity cost


class Step(TypedDict):
    round: int
    step: int
    client_id: int
    cut: int
    loss: float
    lr: NotRequired[float]
    n_tokens: int
    batch: list[int]  # (batch, seq)
    bytes_up: int  # activations (encoded) + mask + labels; under U also grad_hidden_up
    bytes_down: int  # grad_activations (encoded) + the loss scalars; under U also hidden_down
    hidden_down: NotRequired[int]  # U: the server's hidden states down to the client's tail
    grad_hidden_up: NotRequired[int]  # U: their gradient back up
    server_step: NotRequired[int]  # joined (server_batch > 1): the index of the server step that served it


class Round(TypedDict, total=False):
    round: typing.Required[int]
    clients: list[int]  # the clients aggregated
    cuts: dict[str, int]
    next_cuts: dict[str, int]
    dropped: dict[str, Any]  # client -> the step it vanished at (simulation) or why (deployment)
    train_loss: float | None
    lr: float
    client_loss: dict[str, float | None]
    steps_by_client: dict[str, int]
    train_tokens: int
    server_steps: int
    bytes: dict[str, int]  # cumulative, by kind (activations_up, labels_up, grad_activations_down, lora_up, ...)
    bytes_up: int  # training traffic this round
    bytes_down: int
    round_virtual_s: float
    virtual_time: float
    eval_loss: float
    eval_ppl: float
    eval_acc: float
    eval_tokens: int
    eval_cut: int


class Eval(TypedDict):
    round: int
    eval_loss: float
    eval_ppl: float
    eval_acc: float
    eval_tokens: int
    eval_cuts: dict[str, int]
    eval_ppl_by_client: dict[str, float]


class Server(TypedDict):
    message: str


SCHEMA: dict[str, type] = {"run": Run, "setup": Setup, "cut_decision": CutDecision, "codec_costs": CodecCosts,
                           "step": Step, "round": Round, "eval": Eval, "server": Server}
COMMON = {"kind": str, "wall_time": float}


def check(record: dict[str, Any], strict: bool = True) -> list[str]:
    """What is wrong with `record` by the schema of its kind: an unknown kind, a missing required field, a value
    of the wrong JSON type, and (`strict`) a field the kind does not have (empty: nothing)."""
    kind = record.get("kind")
    if kind not in SCHEMA:
        return [f"unknown kind {kind!r} (known: {', '.join(SCHEMA)})"]
    hints, required = _hints(kind), getattr(SCHEMA[kind], "__required_keys__")  # noqa: B009 (a TypedDict's)
    wrong = [f"'{kind}' record lacks {f!r}" for f in sorted((required | set(COMMON)) - set(record))]
    wrong += [f"'{kind}' record has no field {f!r}" for f in sorted(set(record) - set(hints)) if strict]
    wrong += [f"'{kind}' record: {f}={record[f]!r} is not {_name(hints[f])}"
              for f in sorted(set(record) & set(hints)) if not _fits(record[f], hints[f])]
    return wrong


@functools.cache
def _hints(kind: str) -> dict[str, Any]:
    """A kind's fields and their types, the common ones (kind, wall_time) included."""
    return {**get_type_hints(SCHEMA[kind]), **COMMON}


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a field's type, one level deep (containers by their own type)."""
    origin = get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, h) for h in get_args(hint))
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, origin or hint)


def _name(hint: Any) -> str:
    return str(hint).replace("typing.", "") if get_origin(hint) else getattr(hint, "__name__", str(hint))


def read_records(path: str | Path, kind: Kind | None = None) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl (of one `kind`, or all), each checked against the schema; raises UserError
    naming the first line that is not a record of it."""
    out = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{n} is not a JSON record ({e.msg})") from None
        wrong = check(record, strict=False) if isinstance(record, dict) else ["not a JSON object"]
        if wrong:
            raise UserError(f"{path}:{n}: {'; '.join(wrong)}")
        if kind is None or record["kind"] == kind:
            out.append(record)
    return out
