"""A config from YAML and dotted overrides (`split.cut=3`): every problem reported at once; renamed and retired
keys mapped with a one-line note; the resolved config saved per run.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from .schema import Config, ConfigError, show
from .validate import validate


def _coerce(value: Any, tp: Any, key: str, problems: list[str]) -> Any:
    origin = typing.get_origin(tp)
    if origin in (list, list):
        if value is None or value == "":
            value = []
        elif isinstance(value, (str, int, float)):
            value = [value]  # `lora.targets=q_proj` means a one-element list
        if not isinstance(value, list):
            problems.append(f"{key}: expected a list, got {show(value)}")
            return None
        return [_coerce(v, typing.get_args(tp)[0], f"{key}[{i}]", problems) for i, v in enumerate(value)]
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            problems.append(f"{key}: expected a mapping, got {show(value)}")
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
        problems.append(f"{key}: expected {tp.__name__}, got {show(value)}")
        return None
    if tp is float and not math.isfinite(value):  # no setting means anything at NaN or infinity
        problems.append(f"{key}: must be a finite number, got {value}")
        return None
    return value


_MOVED = {**{f"transport.{k}": f"server.{k}" for k in ("tokens_file", "tls_cert", "tls_key", "tls_client_ca",
                                                         "dead_after_s", "round_timeout_s")},
          **{f"transport.{k}": f"client.{k}" for k in ("token_env", "tls_root", "timeout_s", "heartbeat_s",
                                                         "reconnect_s")},
          "transport.tls_client_cert": "client.tls_cert", "transport.tls_client_key": "client.tls_key",
          "transport.codec_up": "codec.up", "transport.codec_down": "codec.down",
          **{f"transport.{k}": f"codec.{k}" for k in ("entropy", "allow_lossy_grad", "max_ppl_cost")}}
RENAMED: dict[str, tuple[str, ...]] = {**{old: (new,) for old, new in _MOVED.items()},
                                       "transport.codec": ("codec.up", "codec.down")}  # after: codec_up wins
"""Keys of an earlier release that still work, and the keys that replaced them (each gets the old key's value
unless set too); loading one prints a one-line note. This release moved the transport section's keys to the
section of the party that reads them (server, client) and the codecs to `codec`; the old keys go next release."""
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
            name = f"{prefix}{k}" if isinstance(k, str) and len(k) <= 60 else prefix + show(k)
            problems.append(f"{name}: unknown key; valid keys here: {', '.join(sorted(names))}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        tp, key = hints[f.name], f"{prefix}{f.name}"
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            if not isinstance(data[f.name], dict):
                problems.append(f"{key}: expected a section (mapping), got {show(data[f.name])}")
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
    """Move each RENAMED key's value to the keys that replaced it (those not set themselves), with one note line
    for the keys moved one to one (a config an earlier release saved holds them all) and one per key split."""
    moved = []
    for old, new in RENAMED.items():
        section, name = old.split(".")
        node = tree.get(section)
        if not isinstance(node, dict) or name not in node:
            continue
        value = node.pop(name)
        for key in new:
            to, to_name = key.split(".")
            target = tree.setdefault(to, {})
            if isinstance(target, dict):  # else the section itself is wrong: _build says so
                target.setdefault(to_name, value)
        if not node:
            del tree[section]
        if len(new) == 1:
            moved.append(f"{old} is now {new[0]}")
        else:
            _note(f"note: {old} is now {' and '.join(new)}; {old}={value} sets both (name them apart to differ); "
                  "the old key goes in the next release")
    if moved:
        _note(f"note: {', '.join(moved)}; the old key{'s go' if len(moved) > 1 else ' goes'} in the next release")


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


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (every key, defaults included) so a run can be repeated exactly."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
