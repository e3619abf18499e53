"""Helpers shared by the benchmarks: where figures go and how they are written."""
from __future__ import annotations

import json
import math
import os
import platform
import statistics
from dataclasses import dataclass
from datetime import datetime, UTC
from pathlib import Path
from typing import Any

import timm
import torch

RESULTS = Path(__file__).parent / "results"


def environment() -> dict[str, Any]:
    """What a figure depends on: when, on which code, CPU (and its vector extensions: bf16 is
    native only with AVX512-BF16 or AMX), load, libraries and allocator."""
    from localvit.host import device_name

    return {"date": datetime.now(UTC).isoformat(timespec="seconds"), "commit": commit(),
            "torch": torch.__version__, "timm": timm.__version__, "python": platform.python_version(),
            "cpu": device_name("cpu"), "cpu_flags": cpu_flags(), "cpus": os.cpu_count(),
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "allocator": allocator()}


def cpu_flags() -> list[str]:
    """The CPU's vector extensions that decide how fast fp32 and bf16 run."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return []
    present = set(flags.split(":", 1)[1].split())
    return [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in present]


def commit() -> str | None:
    """The checkout's commit, with `+dirty` when tracked files differ from it."""
    from localvit.host import git_state

    state = git_state()
    return None if state is None else state["commit"][:7] + ("+dirty" if state["dirty"] else "")


def allocator() -> str:
    """jemalloc when preloaded (as `make bench` does); large CPU tensors cost far more with glibc's."""
    return "jemalloc" if "jemalloc" in os.environ.get("LD_PRELOAD", "") else "glibc malloc"


def interleaved_throughput(models: dict[Any, torch.nn.Module], rounds: int, **measure: Any) -> dict[Any, list[float]]:
    """Images/s of each model per round, the models timed in turn in every round (A, B, C, A, ...)
    so that drift in the machine's load hits them alike. `measure` goes to `measure_model`."""
    from space.throughput import measure_model

    per_round: dict[Any, list[float]] = {key: [] for key in models}
    for _ in range(rounds):
        for key, model in models.items():
            per_round[key].append(measure_model(model, **measure).images_per_s)
    return per_round


@dataclass(frozen=True)
class Change:
    """A relative change (-0.03: 3% slower) with a confidence interval for it."""

    median: float
    low: float
    high: float
    coverage: float  # the interval's confidence level

    def __str__(self) -> str:
        return f"{100 * self.median:+.1f}% ({100 * self.low:+.1f} to {100 * self.high:+.1f})"

    def verdict(self, at_least: float) -> str:
        """`met` when the whole interval is at or above `at_least` (-0.027: lose at most 2.7%),
        `missed` when it is wholly below, else `undecided` (more rounds would tell)."""
        return "met" if self.low >= at_least else "missed" if self.high < at_least else "undecided"


def median_interval(samples: list[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """The narrowest order-statistic interval [x_(j), x_(n+1-j)] that holds the median with at least
    `confidence` (sign test: no assumption on the distribution), and its exact coverage; with too
    few samples for that, the full range."""
    ordered, n = sorted(samples), len(samples)

    def coverage(j: int) -> float:  # 1 - 2 P(Binomial(n, 1/2) <= j - 1)
        return 1 - 2 * sum(math.comb(n, i) for i in range(j)) / 2 ** n

    j = 1
    while j + 1 <= (n + 1) // 2 and coverage(j + 1) >= confidence:
        j += 1
    return ordered[j - 1], ordered[n - j], coverage(j)


def paired_change(values: list[float], baseline: list[float], confidence: float = 0.95) -> Change:
    """Median over rounds of each round's relative change against the baseline of that round
    (steadier than comparing medians when the machine's speed drifts between rounds), with a
    distribution-free interval for it from `median_interval`."""
    changes = [v / b - 1 for v, b in zip(values, baseline, strict=True)]
    low, high, coverage = median_interval(changes, confidence)
    return Change(statistics.median(changes), low, high, coverage)


def save(name: str, rows: list[dict[str, Any]], settings: dict[str, Any], markdown: str,
         folder: Path = RESULTS) -> Path:
    """Write `<name>.json` (rows, settings, environment) and `<name>.md` under `folder` (bench/results/)."""
    folder.mkdir(parents=True, exist_ok=True)
    payload = {"environment": environment(), "settings": settings, "rows": rows}
    (folder / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (folder / f"{name}.md").write_text(markdown + "\n")
    return folder / f"{name}.md"


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def cell(value: Any) -> str:
        return f"{value:.1f}" if isinstance(value, float) else str(value)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)
