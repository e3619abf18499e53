"""Helpers shared by the benchmarks: where figures go and how they are written."""
from __future__ import annotations

import json
import os
import platform
import statistics
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import timm
import torch

RESULTS = Path(__file__).parent / "results"


def environment() -> dict[str, Any]:
    from space.throughput import device_name

    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
            "timm": timm.__version__, "python": platform.python_version(), "cpu": device_name("cpu"),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "allocator": allocator()}


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


def paired_change(values: list[float], baseline: list[float]) -> float:
    """Median over rounds of each round's relative change against the baseline of that round:
    steadier than comparing medians when the machine's speed drifts between rounds."""
    return statistics.median(v / b - 1 for v, b in zip(values, baseline))


def save(name: str, rows: list[dict[str, Any]], settings: dict[str, Any], markdown: str) -> Path:
    """Write `<name>.json` (rows, settings, environment) and `<name>.md` under bench/results/."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"environment": environment(), "settings": settings, "rows": rows}
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown + "\n")
    return RESULTS / f"{name}.md"


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def cell(value: Any) -> str:
        return f"{value:.1f}" if isinstance(value, float) else str(value)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)
