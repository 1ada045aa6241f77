"""Named choices a config key may take, and the one way their names are checked.

    PARTITIONERS = Registry("data.partitioner", {"iid": IidPartitioner, ...})   # next to what it names
    problems = check_names(cfg, [PARTITIONERS, CODECS, ...])                    # from the composition root
Each registry lives beside the things it names and knows its config key, so a name list is written once and
the config (which sits below every component and imports none) never copies it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")


class Registry(dict[str, T]):
    """{name: what it builds} for the config key `key` (dotted, e.g. "data.partitioner")."""

    def __init__(self, key: str, entries: Mapping[str, T]):
        super().__init__(entries)
        self.key = key

    def problems(self, cfg: Any) -> list[str]:
        """[] when the value of `key` in `cfg` is a known name, else one message listing the known ones."""
        value = cfg
        for part in self.key.split("."):
            value = getattr(value, part)
        return [] if value in self else [f"{self.key}: must be one of {', '.join(self)}, got '{value}'"]


def check_names(cfg: Any, registries: Iterable[Registry[Any]]) -> list[str]:
    """Every registry's problems with `cfg`, in order (empty when all names are known)."""
    return [p for r in registries for p in r.problems(cfg)]
