"""The Ray side of a search: start a local Ray or join a cluster, check before any trial starts
that the cluster can run the trials, and keep Ray's own output off the console.

Ray Tune compares a trial's resources with the cluster's totals only, so a trial bigger than
every node waits forever; a driver that joins a cluster by address does not ship its code, so
trials on nodes without the project all fail while the search reports success; and Tune's
experiment folder must be one every node writes to. Each of these is checked here and
reported in one line.
"""
from __future__ import annotations

import functools
import logging
import math
import os
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, TextIO

from proxy.protocol import ProxyProtocol
from proxy.allocator import jemalloc_env
from proxy.runtime import CUDA_CONTEXT_BYTES

from . import stop
from .faults import Fault, causes, disk_full
from .settings import AUTO, CPU_WORKERS, SearchSettings

REPO = Path(__file__).resolve().parents[1]
#: The project's packages a trial imports, shipped to the nodes of a cluster the driver joins.
PACKAGES = ("localvit", "space", "proxy", "ranking", "imagenet", "search")
#: How long a node may take to start a worker and import the trial code (torch, timm) for the check.
NODE_CHECK_TIMEOUT_S = 300.0
#: `--gpus-per-trial auto`: at most this many trials share one GPU (a proxy trial is small; each
#: trial process holds a CUDA context of its own, and more processes mostly queue for the GPU).
MAX_TRIALS_PER_GPU = 8
#: The share of a GPU's memory the trials on it may plan to fill (the rest: fragmentation, others).
GPU_MEMORY_SHARE = 0.9


@dataclass(frozen=True)
class Node:
    """One alive Ray node and what a trial can have of it."""

    ip: str
    node_id: str
    cpus: float
    gpus: float

    def describe(self) -> str:
        return f"{self.ip} ({self.cpus:g} CPU, {self.gpus:g} GPU)"


@dataclass(frozen=True)
class Cluster:
    """The Ray instance a search runs its trials on, checked by `connect`."""

    nodes: tuple[Node, ...]
    resources: dict[str, float]  # what each trial asks for: {"cpu": n[, "gpu": g]}
    storage_path: str  # Ray Tune's experiment folder (local path or URI), seen by every node
    log: Path  # where Ray's own output goes
    workers: int = CPU_WORKERS  # concurrent trials: --workers, or what the GPUs hold (`gpu_plan`)


@contextmanager
def ray_output(log: Path) -> Iterator[TextIO]:
    """Send everything written to standard output and error while inside (Ray's C++ and Python
    logs, its state dumps, the errors it relays from its nodes) to `log`, so that none of it
    covers the progress lines; yields the console for the search's own lines. An exception
    leaving the block is printed after it, on the console."""
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    console = os.fdopen(os.dup(saved[1]), "w", buffering=1)
    with open(log, "ab") as sink:
        for fd in saved:
            os.dup2(sink.fileno(), fd)
    try:
        yield console
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        console.close()
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)


def worker_env(settings: SearchSettings) -> dict[str, str]:
    """Environment of every trial: jemalloc when installed, one OpenMP thread per CPU asked."""
    env = {k: v for k, v in jemalloc_env({}).items() if k in ("LD_PRELOAD", "MALLOC_CONF")}
    env["OMP_NUM_THREADS"] = str(max(1, int(settings.cpus_per_trial or 1)))
    return env


def start_cluster(settings: SearchSettings) -> Cluster:
    """Start a local Ray (default) or join `settings.ray_address`, then check that a trial fits one
    node and, on a cluster, that every node runs the project's code and sees Ray's storage.
    Anything wrong is a ValueError in one line, raised before any trial starts."""
    import ray

    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    runtime_env: dict = {"env_vars": worker_env(settings)}
    if settings.ray_address:  # other machines: ship the code (it takes precedence over an installed copy)
        runtime_env["py_modules"] = [str(REPO / name) for name in PACKAGES]
        runtime_env["excludes"] = ["__pycache__"]
    else:  # this machine: the code is here, and a trial too big for it is refused before Ray starts
        runtime_env["env_vars"]["PYTHONPATH"] = os.pathsep.join(
            x for x in (str(REPO), os.environ.get("PYTHONPATH", "")) if x)
        trial_resources(settings, [this_machine()])
    log = settings.study_dir / "ray.log"
    with ray_output(log):
        try:
            ray.init(address=settings.ray_address, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.ERROR, configure_logging=True, runtime_env=runtime_env,
                     ignore_reinit_error=True)
        except (ConnectionError, RuntimeError) as err:
            raise ValueError(f"--ray-address {settings.ray_address!r} cannot be joined: {str(err).splitlines()[0]}; "
                             f"accepted: the address of a running cluster ('ray start --head' prints it; 'auto' on "
                             f"one of its nodes), or none for a local Ray") from None
        stop.reclaim()
        nodes = alive_nodes()
        resources = trial_resources(settings, nodes)
        if settings.ray_address:
            check_nodes([n for n in nodes if n.cpus > 0], settings.tune_storage)
    return Cluster(tuple(nodes), resources, settings.tune_storage, log, gpu_plan(settings, nodes)[1])


def this_machine() -> Node:
    """What a local Ray will find here: the CPUs this process may use and the visible GPUs."""
    import torch

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return Node("this machine", "", float(cpus), float(torch.cuda.device_count()))


def alive_nodes() -> list[Node]:
    import ray

    return [Node(n["NodeManagerAddress"], n["NodeID"], float(n["Resources"].get("CPU", 0)),
                 float(n["Resources"].get("GPU", 0))) for n in ray.nodes() if n.get("Alive")]


def trial_resources(settings: SearchSettings, nodes: list[Node]) -> dict[str, float]:
    """What each trial asks Ray for; it must fit one node (a trial never spans nodes): the
    default CPUs share the cluster's among the workers, at most one node's worth."""
    biggest = max((n.cpus for n in nodes), default=0.0)
    total = sum(n.cpus for n in nodes)
    gpus, workers = gpu_plan(settings, nodes)
    cpus = settings.cpus_per_trial or max(1.0, min(biggest, float(int(total // workers))))
    if not any(n.cpus >= cpus and n.gpus >= gpus for n in nodes):
        asked = f"cpus_per_trial={cpus:g}" + (f" with gpus_per_trial={gpus:g}" if gpus else "")
        most_gpus = max((n.gpus for n in nodes), default=0.0)
        raise ValueError(f"{asked} is invalid: no single node has that much (nodes: "
                         f"{', '.join(n.describe() for n in nodes) or 'none'}); accepted: at most {biggest:g} CPUs"
                         + (f" and {most_gpus:g} GPUs" if gpus else "") + " per trial, what one node has")
    return {"cpu": cpus, **({"gpu": gpus} if gpus else {})}


def gpu_plan(settings: SearchSettings, nodes: list[Node]) -> tuple[float, int]:
    """GPUs per trial and concurrent trials. `--gpus-per-trial auto` gives no GPU where the
    cluster has none (as `0`), else a 1/k share of one GPU (`trials_per_gpu`); `--workers` left
    out is then every GPU's k trials, `--gpus-per-trial g` the trials the GPUs hold at g each,
    and 2 (`CPU_WORKERS`) without GPUs."""
    total = sum(n.gpus for n in nodes)
    if settings.gpus_per_trial == AUTO:
        gpus = 0.0 if not total else gpu_share(trials_per_gpu(nodes, gpu_memory(), proxy_training_bytes(
            settings.space, settings.backbone, settings.include_unfinished, settings.protocol)))
    else:
        gpus = float(settings.gpus_per_trial)
    workers = settings.workers or (max(1, int(total / gpus + 1e-6)) if gpus else CPU_WORKERS)
    return gpus, workers


def trials_per_gpu(nodes: list[Node], gpu_bytes: int | None, trial_bytes: int) -> int:
    """How many trials share one GPU: as many as fit its memory (`GPU_MEMORY_SHARE` of the smallest
    GPU, a trial taking its CUDA context and twice `proxy_training_bytes`, for the allocator's cache
    and the backward pass's temporaries), at least one CPU each on every GPU node, and at most
    `MAX_TRIALS_PER_GPU`; one when the GPUs' memory is unknown (no GPU visible here)."""
    by_cpus = min((int(n.cpus // n.gpus) for n in nodes if n.gpus > 0), default=1)
    by_memory = int(GPU_MEMORY_SHARE * gpu_bytes // (CUDA_CONTEXT_BYTES + 2 * trial_bytes)) if gpu_bytes else 1
    return max(1, min(MAX_TRIALS_PER_GPU, by_cpus, by_memory))


def gpu_share(trials: int) -> float:
    """1/`trials` of a GPU, rounded down to Ray's resolution (1e-4) so that `trials` shares fit one."""
    return math.floor(10_000 / trials) / 10_000


def planned_device(settings: SearchSettings) -> str:
    """Where the trials will train, as far as this machine tells (for the study's precision
    record; every trial records its own device), and where the driver trains a one-shot
    supernet: `cuda` when they may get GPUs and this machine sees one, else `cpu`."""
    import torch

    return "cuda" if settings.gpus_per_trial != 0 and torch.cuda.is_available() else "cpu"


def gpu_memory() -> int | None:
    """The memory of the smallest GPU this process sees, in bytes; None without one. Reads the
    devices' properties only (no CUDA context: the driver keeps the GPUs' memory for the trials)."""
    import torch

    count = torch.cuda.device_count()
    return min(torch.cuda.get_device_properties(i).total_memory for i in range(count)) if count else None


@functools.lru_cache(maxsize=4)
def proxy_training_bytes(space: str, backbone: str, include_unfinished: bool, protocol: ProxyProtocol) -> int:
    """Device memory of one training step of the space's costliest design (by FLOPs) at the
    protocol's proxy and batch (`proxy.runtime.training_bytes`, measured on the CPU in a few
    seconds)."""
    from localvit.builder import build_model
    from proxy.protocol import project_to_proxy
    from proxy.runtime import training_bytes
    from space.budget import bounds
    from space.space import make_space

    spec = bounds(make_space(space, backbone, include_unfinished)).costliest_flops[0]
    model = build_model(project_to_proxy(spec, protocol))
    return training_bytes(model, protocol.batch_size, protocol.img_size, protocol.in_chans)


def check_nodes(nodes: list[Node], storage: str) -> None:
    """On every node that can run trials: import the trial code and write a file on Ray Tune's
    storage, which this driver must then see."""
    import pyarrow.fs
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    fs, root = pyarrow.fs.FileSystem.from_uri(storage)
    folder = f"{root}/.node-check"
    fs.create_dir(folder, recursive=True)
    probe = ray.remote(num_cpus=0, max_retries=0)(node_check)
    token = uuid.uuid4().hex[:12]
    pending = {n.ip: probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n.node_id, soft=False))
               .remote(storage, f"{token}-{n.ip}") for n in nodes}
    try:
        for ip, ref in pending.items():
            try:
                problem = ray.get(ref, timeout=NODE_CHECK_TIMEOUT_S)
            except ray.exceptions.GetTimeoutError:
                problem = f"it did not answer within {NODE_CHECK_TIMEOUT_S:g} s"
            except Exception as err:  # the task could not even be unpickled there: no project
                problem = f"{type(err).__name__}: {str(err).strip().splitlines()[-1]}"
            if problem:
                raise ValueError(f"node {ip} cannot run the trials: {problem}; accepted: nodes that can import "
                                 f"the project's code (the driver ships it) and have its dependencies installed")
            if fs.get_file_info(f"{folder}/{token}-{ip}").type == pyarrow.fs.FileType.NotFound:
                raise ValueError(f"Ray's storage {storage!r} is not shared: a file written there on node {ip} is not "
                                 f"visible to this driver; accepted: --ray-storage with a folder every node mounts, "
                                 f"or an s3:// or gs:// URI")
    finally:
        fs.delete_dir(folder)


def node_check(storage: str, name: str) -> str:
    """Runs on one node: '' when it can import the trial code and write `name` on `storage`."""
    import importlib

    import pyarrow.fs

    try:
        importlib.import_module("search.tune")
    except Exception as err:
        return f"the project's code cannot be imported ({type(err).__name__}: {err})"
    try:
        fs, root = pyarrow.fs.FileSystem.from_uri(storage)
        fs.create_dir(f"{root}/.node-check", recursive=True)
        with fs.open_output_stream(f"{root}/.node-check/{name}") as out:
            out.write(b"ok")
    except Exception as err:
        return f"it cannot write to Ray's storage {storage!r} ({type(err).__name__}: {err})"
    return ""


#: How long to wait for Ray to declare a node dead when a trial's worker stopped answering.
NODE_DEATH_WAIT_S = 30.0


def lost_reason(error: BaseException | None, node_ip: str | None, epoch: int) -> str:
    """Why a trial was lost to the infrastructure, in words: which node, what happened, when.

    A worker that stops answering may have died alone or with its node; Ray takes some seconds
    to declare a node dead, and that verdict is awaited here (also so that the retry is not
    placed on the dead node)."""
    text = f"{type(error).__name__}: {error}" if error is not None else ""
    where = f"node {node_ip}" if node_ip else "its node"
    if getattr(error, "preempted", False) or "preempt" in text.lower():
        what = f"{where} was preempted"
    elif "out of memory" in text.lower() or "OOM" in text:
        what = f"its worker on {where} was killed for lack of memory"
    elif node_ip and not node_alive(node_ip, NODE_DEATH_WAIT_S if error is None or "unavailable" in text.lower()
                                    else 0.0):
        what = f"{where} died"
    else:
        what = f"its worker on {where} died"
    return f"{what} during epoch {epoch}"


#: The exit status when Ray Tune itself kept stopping on lost workers (sysexits' EX_TEMPFAIL).
CLUSTER_FAULT = 75


class ClusterFault(Fault):
    """Ray Tune stopped on a lost worker or node more often in a row than `--max-retries` allows."""

    exit_status = CLUSTER_FAULT


def tune_loss(error: BaseException) -> str:
    """What the infrastructure took when Ray Tune's run raised `error`, in words; '' when `error`
    is no such loss. Tune retries a trial whose worker dies while it trains, but a worker lost
    while Tune starts or resets it (Ray's memory monitor kills the newest task first) raises out
    of `Tuner.fit` instead: the search treats that as a lost trial too. Only what `error` was
    raised *from* counts (Tune chains the loss so): an error of ours met while Tune handled a
    loss is not one, nor a `Fault` or a full disk."""
    from ray import exceptions

    losses = (exceptions.OutOfMemoryError, exceptions.WorkerCrashedError, exceptions.NodeDiedError,
              exceptions.RayActorError, exceptions.OwnerDiedError)
    if any(isinstance(e, Fault) for e in causes(error)) or disk_full(error):
        return ""
    lost: BaseException | None = error
    while lost is not None and not isinstance(lost, losses):
        lost = lost.__cause__
    if lost is None:
        return ""
    text = str(lost).strip()
    return f"{type(lost).__name__}: {text.splitlines()[0]}" if text else type(lost).__name__


def node_alive(ip: str, wait_s: float = 0.0) -> bool:
    """Whether Ray counts the node at `ip` alive, waiting up to `wait_s` for it to count it dead."""
    import ray

    deadline = time.monotonic() + wait_s
    while True:
        alive = any(n.get("Alive") and n["NodeManagerAddress"] == ip for n in ray.nodes())
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(1.0)
