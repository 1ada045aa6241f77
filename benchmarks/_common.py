"""Shared by the benchmarks: the machine description, a printed table, and the JSON record in results/.

Every benchmark writes benchmarks/results/<name>[_<tag>].json = {"benchmark", "date", "machine", "settings",
"rows"} and prints the rows as a markdown table. Run them from the repository root (after scripts/install.sh).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))  # runnable as `python benchmarks/x.py` without an install


def machine() -> dict[str, Any]:
    """What the numbers were measured on: CPU, cores, threads, memory, accelerator, versions, commit."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        mem_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        mem_gb = None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "splitft"], cwd=ROOT,
                                    capture_output=True, text=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = None, None
    from splitft.precision import cpu_flags

    flags = sorted(cpu_flags() & {"avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8",
                                  "avx_vnni", "avx512_vnni", "fma", "f16c", "sse4_2"})
    return {"cpu": cpu, "cpu_flags": flags, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "memory_gb": mem_gb,
            "accelerator": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version(), "torch": torch.__version__, "os": platform.platform(),
            "commit": commit, "uncommitted_changes": dirty}


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        return "-" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def record(name: str, settings: dict[str, Any], rows: list[dict[str, Any]], columns: list[str]) -> Path:
    """Print the table and write the JSON record; returns its path."""
    print(table(rows, columns), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, "date": datetime.datetime.now().isoformat(timespec="seconds"),
                                "machine": machine(), "settings": settings, "rows": rows}, indent=2) + "\n")
    print(f"wrote {path.relative_to(ROOT)}", flush=True)
    return path


MODELS = {"tiny": "tiny:llama", "smollm2": "builtin:smollm2-135m-instruct"}


def cli(*args: str, timeout_s: float = 3600) -> None:
    """Run `splitft <args>` from the repository root; stop the benchmark with its stderr tail if it fails."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    res = subprocess.run([sys.executable, "-m", "splitft.cli", *args], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=timeout_s)
    if res.returncode:
        raise SystemExit(f"splitft {args[0]} failed:\n{res.stderr[-3000:]}")
