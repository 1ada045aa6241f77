"""Checks on a built config: ranges, choices, combinations the system cannot run, each problem one line naming
the key and the fix; `validate_against_model` adds the checks that need the model's shape (its metadata only).
"""

from __future__ import annotations

from .parties import ClientConfig, ServerConfig
from .schema import Config, ConfigError, show


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
                 f"{show(f.order)} and {show(f.round_budget)}")
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
    t, srv, cli = cfg.transport, cfg.server, cfg.client
    _positive(p, transport__chunk_kb=t.chunk_kb, transport__max_message_mb=t.max_message_mb,
              client__timeout_s=cli.timeout_s, client__heartbeat_s=cli.heartbeat_s,
              server__dead_after_s=srv.dead_after_s, server__round_timeout_s=srv.round_timeout_s)
    if not 0.0 <= cfg.codec.max_ppl_cost < float("inf"):
        p.append(f"codec.max_ppl_cost: must be a relative ppl increase >= 0 (0.01 = 1%), got {cfg.codec.max_ppl_cost}")
    if not 0 <= cli.reconnect_s < float("inf"):
        p.append(f"client.reconnect_s: must be a number of seconds >= 0 (0 = never reconnect), got {cli.reconnect_s}")
    p += _address_problems(t.address)
    if t.max_message_mb > 1024:
        p.append(f"transport.max_message_mb: at most 1024 (gRPC's messages stay under 2 GiB), got {t.max_message_mb}")
    if t.chunk_kb > t.max_message_mb * 1024:
        p.append(f"transport.chunk_kb: a frame cannot exceed the largest message (transport.max_message_mb="
                 f"{t.max_message_mb} = {t.max_message_mb * 1024} KB), got {t.chunk_kb}")
    if cli.heartbeat_s * 2 > srv.dead_after_s:
        p.append(f"server.dead_after_s: must be at least twice client.heartbeat_s ({cli.heartbeat_s}), "
                 f"or live clients get dropped between heartbeats; got {srv.dead_after_s}")
    p += _tls_problems(srv, cli)
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


def _tls_problems(srv: ServerConfig, cli: ClientConfig) -> list[str]:
    p = []
    if bool(srv.tls_cert) != bool(srv.tls_key):
        p.append("server.tls_cert and server.tls_key: give both (server TLS) or neither")
    if srv.tls_client_ca and not srv.tls_cert:
        p.append("server.tls_client_ca: mutual TLS needs server TLS too; set server.tls_cert and tls_key")
    if bool(cli.tls_cert) != bool(cli.tls_key):
        p.append("client.tls_cert and client.tls_key: give both (mutual TLS) or neither")
    if cli.tls_cert and not cli.tls_root:
        p.append("client.tls_cert: a client certificate is only sent over TLS; set client.tls_root")
    return p


def _choice_problems(cfg: Config) -> list[str]:
    """Settings that name one of a few choices."""
    choices = {"data.format": (cfg.data.format, DATA_FORMATS), "data.train_on": (cfg.data.train_on, TRAIN_ON),
               "data.truncation": (cfg.data.truncation, TRUNCATIONS),
               "train.schedule": (cfg.train.schedule, SCHEDULES)}
    return [f"{key}: must be one of {' | '.join(options)}, got {show(value)}"
            for key, (value, options) in choices.items() if value not in options]


def _address_problems(address: str) -> list[str]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        return [f"transport.address: expected host:port with a port in 1..65535 (e.g. 0.0.0.0:50051), got "
                f"{show(address)}"]
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
                 f"{show(s.shape)}")
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
