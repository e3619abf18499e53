"""Shared test helpers: one intra-op thread (tests run beside other work on 2 cores)."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
import torch

from tests.servers import Postgres, postgres_server

torch.set_num_threads(1)

FIXTURES = Path(__file__).parent / "fixtures"
OFFICIAL = FIXTURES / "official"


def fvcore_cost(model: torch.nn.Module, img_size: int, in_chans: int = 3) -> tuple[int, int]:
    """fvcore's FLOPs (fused attention off, so its matmuls are counted) and the parameter count."""
    from fvcore.nn import FlopCountAnalysis

    model = model.eval()
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = False  # type: ignore[assignment]  # torch types module attributes as tensors
    analysis = FlopCountAnalysis(model, torch.randn(1, in_chans, img_size, img_size))
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    return int(analysis.total()), sum(p.numel() for p in model.parameters())


@pytest.fixture
def postgres() -> Iterator[Postgres]:
    """A PostgreSQL server of the test's own (tests/servers.py); skipped where none is installed."""
    with postgres_server() as server:
        yield server


@pytest.fixture(scope="session")
def official_full_size() -> dict:
    """The official full-size models by registered name: params, [key, shape] list, buffers."""
    return {m["factory_name"]: m for m in json.loads((OFFICIAL / "full_size.json").read_text())["models"]}


def kill_family(proc: subprocess.Popen) -> None:
    """SIGKILL a process started in its own session (a search) and everything it started (its
    local Ray), as a crash would, and reap it; only these processes, by their ids."""
    import psutil

    family = [proc] + psutil.Process(proc.pid).children(recursive=True)
    os.killpg(proc.pid, signal.SIGKILL)
    for p in family:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait()


def trained_in(url: str, study: str) -> int:
    """COMPLETE trained trials of `study` at a storage URL so far (0 before the study exists)."""
    import optuna

    try:
        found = optuna.load_study(study_name=study, storage=url)
    except Exception:  # not created yet, or its tables not yet
        return 0
    return sum(1 for t in found.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
               if t.user_attrs.get("status") == "train")


def count_trials(db: Path, status: str) -> int:
    """COMPLETE trials of a status (`train`, `supernet`, ...) in an SQLite study file so far; 0 while
    Optuna is still creating its tables. Read with sqlite3, so that a running search is not slowed."""
    try:
        with sqlite3.connect(db) as con:
            return con.execute(
                "select count(*) from trials t join trial_user_attributes a on a.trial_id = t.trial_id "
                f"where t.state = 'COMPLETE' and a.key = 'status' and a.value_json = '\"{status}\"'").fetchone()[0]
    except sqlite3.OperationalError:  # the file exists before its schema does
        return 0


@pytest.fixture
def local_ray() -> Iterator[None]:
    """For a test that starts Ray in its own process (a search run in-process, a task): the local
    Ray is shut down after it, as the end of a `run_search.py` process would, so that no later
    test finds it."""
    yield
    import ray

    ray.shutdown()
