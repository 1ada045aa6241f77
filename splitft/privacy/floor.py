"""split.privacy_floor: the smallest cut whose measured token recovery stays below the floor, read from the
table `splitft privacy --out FILE` wrote for this model (its `inversion` rows: {cut, attack, noise, recovery}).

A cut's recovery is its best attack's at the configured privacy.noise. The floor takes the smallest measured cut
below it (recovery need not fall with every block); the policies then keep every cut at or above it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..errors import UserError

MEASURE = "run `splitft privacy --config FILE --out {path}` for this model and data"


def read_table(path: str) -> dict[str, Any]:
    """The JSON table at `path`, or one line saying how to produce it."""
    p = Path(path)
    try:
        table = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"split.privacy_table: '{path}' not found; {MEASURE.format(path=path)}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"split.privacy_table: '{path}' is not a table `splitft privacy` wrote ({e})") from None
    if not isinstance(table, dict) or not isinstance(table.get("inversion"), list):
        raise UserError(f"split.privacy_table: '{path}' has no `inversion` rows; {MEASURE.format(path=path)}")
    return table


def worst_recovery(table: dict[str, Any], noise: float) -> dict[int, float]:
    """{cut: the best attack's recovery} over the table's inversion rows measured at `noise`."""
    worst: dict[int, float] = {}
    for row in table["inversion"]:
        try:
            cut, at, rec = int(row["cut"]), float(row["noise"]), float(row["recovery"])
        except (KeyError, TypeError, ValueError):
            raise UserError(f"split.privacy_table: a row without cut/noise/recovery numbers: {row}") from None
        if math.isclose(at, noise, rel_tol=1e-9, abs_tol=1e-12):
            worst[cut] = max(worst.get(cut, 0.0), rec)
    return worst


def floor_cut(path: str, model: str, noise: float, floor: float) -> int:
    """The smallest measured cut whose worst recovery at `noise` is below `floor`, for `model` (its source)."""
    table = read_table(path)
    if table.get("model") != model:
        raise UserError(f"split.privacy_table: '{path}' was measured on {table.get('model')}, not model.source="
                        f"{model}; {MEASURE.format(path=path)}")
    worst = worst_recovery(table, noise)
    if not worst:
        raise UserError(f"split.privacy_table: '{path}' has no row at privacy.noise={noise:g}; run `splitft "
                        f"privacy` with --noise {noise:g}")
    below = sorted(c for c, r in worst.items() if r < floor)
    if not below:
        best = min(worst, key=lambda c: worst[c])
        raise UserError(f"split.privacy_floor={floor:g}: no measured cut stays below it at privacy.noise={noise:g} "
                        f"(lowest: cut {best}, {worst[best]:.1%}); measure more cuts (--cuts), add noise or raise "
                        "the floor")
    return below[0]
