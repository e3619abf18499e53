"""Helpers shared by the benchmarks: where figures go and how they are written."""
from __future__ import annotations

import json
import platform
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
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


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
