"""The prepared device check (docs/gpu.md): one command that measures the GPU path within 8 minutes
and saves every figure under one folder, and that nobody has to debug on the GPU.

    bash bench/device_check.sh                  # on a GPU machine (at most 8 minutes)
    bash bench/device_check.sh --tiny           # the same steps at a tiny size on the CPU (CI)

Steps, each with its own share of the time and its own timeout; a step that fails or runs out of
time is recorded with its error and the next one runs:

1. environment: GPU(s), torch, what `--precision auto` and `--gpus-per-trial auto` resolve to here;
2. speed: proxy-trial training images/s (`bench.bench_proxy_training`'s `train_proxy` worker) in fp32
   and bf16, at the default width (x0.5) and at full width;
3. side by side: 1, 2, 4 and 8 default proxy trials as processes on the one device, their sum;
4. search: the default search (`run_search.py`, `--gpus-per-trial auto`) for a few minutes, its
   trials counted from the study;
5. oneshot: a one-shot search (`--strategy oneshot`): its supernet trained on the GPU for one
   epoch, then candidates scored on it for about a minute, with the devices both ran on;
6. audit: the paper's designs at the highest rung the time left allows.

Figures: `device_check.json` and `device_check.md` in `--out`, else `$OUT`, else
bench/results/device-check-<date>/, written again after every step (a kill keeps what ran).
Where the Fashion-MNIST files are missing (a bare GPU machine), the steps train on synthetic
idx files of the same shape, and the report says so: speed figures hold, accuracies mean nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, UTC
from pathlib import Path
from typing import Any, Callable

import numpy as np

from bench import bench_proxy_training as proxy_bench
from bench.common import RESULTS, environment

ROOT = Path(__file__).resolve().parents[1]
#: Seconds of the whole check on a GPU (the device machine's 8 minutes), and at --tiny on a CPU.
#: 450: the device machine's 8 minutes less the time to stop a step that overruns and to start Python.
BUDGET_S, TINY_BUDGET_S = 450.0, 300.0
#: Seconds a process of a step may take at --tiny whatever the budget (a busy CI machine).
TINY_PART_S = 120.0
#: Each step's share of the budget; a step also gets the time the earlier ones left unused.
SHARES = {"environment": 0.04, "speed": 0.2, "side_by_side": 0.2, "search": 0.34, "oneshot": 0.12, "audit": 0.1}
#: Seconds a search takes beyond its --time-limit on a GPU machine: Ray's start, the reports.
SEARCH_OVERHEAD_S = 70.0
#: Side-by-side trial counts (processes on one device); --tiny runs the first two.
SIDE_BY_SIDE = (1, 2, 4, 8)
#: Audit rungs tried, highest first; a rung multiplies the default protocol's optimizer steps (issue 28).
RUNGS = (10, 3, 1)
PAPER_DESIGNS = 18


@dataclass
class Check:
    """What every step needs: the size, the device, where figures and data go, the time left."""

    tiny: bool
    out: Path
    device: str
    deadline: float  # the current step's end (`main` sets it before each step)
    data_dir: str | None = None  # synthetic idx files where Fashion-MNIST is missing
    figures: dict[str, Any] = field(default_factory=dict)  # what earlier steps measured

    def left(self) -> float:
        """Seconds left to the current step."""
        return max(0.0, self.deadline - time.monotonic())

    def part(self, parts: int) -> float:
        """The time of the next of `parts` equal parts of what is left to the step; at --tiny at
        least `TINY_PART_S` (it checks that every step runs, not that it fits the budget)."""
        return max(self.left() / max(1, parts), TINY_PART_S if self.tiny else 0.0)

    def data_args(self) -> list[str]:
        return ["--data-dir", self.data_dir] if self.data_dir else []


# --- running things with a timeout ---------------------------------------------------------------

def run_command(cmd: list[str], timeout: float, log: Path, env: dict[str, str] | None = None) -> int:
    """Run `cmd` in its own process group with its output in `log`; past `timeout` it gets SIGTERM
    (run_search.py and the audit stop cleanly and resumably on it), 30 s later SIGKILL, and the
    return is 124. Never raises for the command's own failure."""
    with open(log, "ab") as sink:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, env=env or child_env(),
                                start_new_session=True)
        try:
            return proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
            return 124


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(x for x in (str(ROOT), os.environ.get("PYTHONPATH")) if x)}


def proxy_trials(cfgs: list[dict], timeout: float) -> list[dict]:
    """`bench.bench_proxy_training`'s `train_proxy` worker, one process per configuration, all at
    once; a worker that fails or outlives `timeout` gives {"error": ...}."""
    procs = [proxy_bench.launch("proxy", cfg, jemalloc=True) for cfg in cfgs]
    results, end = [], time.monotonic() + max(1.0, timeout)
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            results.append({"error": f"timed out after {timeout:.0f} s"})
            continue
        lines = out.strip().splitlines()
        try:
            results.append(json.loads(lines[-1]) if proc.returncode == 0 and lines else
                           {"error": f"worker exited with {proc.returncode}"})
        except json.JSONDecodeError:
            results.append({"error": f"worker printed no figures: {lines[-1][:200]!r}"})
    return results


def trial_cfg(check: Check, width: float, precision: str, threads: int) -> dict:
    """A speed configuration of `bench.bench_proxy_training` on the check's device and data."""
    steps, warmup = (3, 1) if check.tiny else (30, 5)
    return proxy_bench.speed_cfg(width_mult=width, precision=precision, threads=threads, steps=steps,
                                 warmup=warmup, batch_size=16 if check.tiny else 128, device=check.device,
                                 protocol={"data_dir": check.data_dir} if check.data_dir else {})


# --- the steps ------------------------------------------------------------------------------------

def step_environment(check: Check) -> dict:
    import torch

    from proxy.runtime import precision_record
    from search.cluster import gpu_plan, this_machine
    from search.settings import SearchSettings

    gpus = [{"name": torch.cuda.get_device_name(i), "memory_gib": round(torch.cuda.get_device_properties(i)
                                                                          .total_memory / 2**30, 1),
             "capability": ".".join(map(str, torch.cuda.get_device_capability(i)))}
            for i in range(torch.cuda.device_count())]
    share, workers = gpu_plan(SearchSettings(), [this_machine()])
    return {"device": check.device, "gpus": gpus, "torch_cuda": torch.version.cuda,
            "precision_auto": precision_record("auto", check.device),
            "gpus_per_trial_auto": share, "workers_auto": workers,
            "data": f"synthetic idx files in {check.data_dir} (Fashion-MNIST missing)" if check.data_dir
            else "Fashion-MNIST", "nvidia_smi": _nvidia_smi()}


def _nvidia_smi() -> str | None:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv"],
                              capture_output=True, text=True, timeout=20, check=False).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def step_speed(check: Check) -> dict:
    threads = max(1, min(4, os.cpu_count() or 1)) if check.device == "cuda" else 1
    rows: list[dict] = []
    configs = [(width, precision) for width in (0.5, 1.0) for precision in ("fp32", "bf16")]
    for width, precision in configs:
        result = proxy_trials([trial_cfg(check, width, precision, threads)], check.part(len(configs) - len(rows)))[0]
        rows.append({"width_mult": width, "precision": precision, **_speed_figures(result)})
    return {"rows": rows}


def _speed_figures(result: dict) -> dict:
    keys = ("images_per_s", "images_per_s_best", "train_gflops", "precision_used", "first_step_s", "error")
    return {k: round(result[k], 1) if isinstance(result.get(k), float) else result[k] for k in keys if k in result}


def step_side_by_side(check: Check) -> dict:
    counts = SIDE_BY_SIDE[:2] if check.tiny else SIDE_BY_SIDE
    rows: list[dict] = []
    for count in counts:
        threads = max(1, (os.cpu_count() or 1) // count) if check.device == "cuda" else 1
        results = proxy_trials([trial_cfg(check, 0.5, "auto", threads) for _ in range(count)],
                               check.part(len(counts) - len(rows)))
        good = [r["images_per_s"] for r in results if "images_per_s" in r]
        rows.append({"trials": count, "threads_each": threads, "images_per_s_sum": round(sum(good), 1),
                     "images_per_s_each": [round(x, 1) for x in good],
                     **({"error": "; ".join(sorted({r["error"] for r in results if "error" in r}))}
                        if len(good) < count else {})})
    return {"rows": rows}


#: The tiny size's data for the searches (--tiny).
TINY_SEARCH = ["--dataset", "fashion-mnist", "--train-size", "100", "--val-size", "50", "--epochs", "1",
               "--batch-size", "25"]


def _run_search(check: Check, step: str, limit: float, args: list[str]) -> tuple[dict[str, Any], Any]:
    """`run_search.py` for `limit` seconds in the step's folder (no confirmation, no export): its
    figures, and its study (None where it made none)."""
    folder = check.out / step
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(ROOT / "run_search.py"), "--budget-flops", "1.3G", "--study", "device-check",
           "--results-dir", str(folder), "--time-limit", f"{limit:.0f}s", "--confirm-seeds", "0", "--export-top",
           "0", *check.data_args(), *args]
    started = time.monotonic()
    code = run_command(cmd, limit + (240 if check.tiny else check.left() - limit), folder / "run_search.log")
    figures: dict[str, Any] = {"command": " ".join(cmd[1:]), "exit": code,
                               "seconds": round(time.monotonic() - started, 1), "time_limit_s": limit}
    if code != 0:
        figures["error"] = f"run_search.py exited with {code}: {_tail(folder / 'run_search.log')}"
    return figures, _load_study(folder / "device-check" / "study.db")


def step_search(check: Check) -> dict:
    limit = 60.0 if check.tiny else min(180.0, check.left() - SEARCH_OVERHEAD_S)
    if limit < 30:
        return {"skipped": f"{check.left():.0f} s left, too little for a search"}
    tiny = [*TINY_SEARCH, "--trials", "2", "--no-baselines", "--warm-start", "1"] if check.tiny else []
    figures, study = _run_search(check, "search", limit, tiny)
    return {**figures, **_study_figures(study)}


def step_oneshot(check: Check) -> dict:
    limit = 150.0 if check.tiny else min(60.0, check.left() - SEARCH_OVERHEAD_S)
    if limit < 15:
        return {"skipped": f"{check.left():.0f} s left, too little for a one-shot search"}
    tiny = [*TINY_SEARCH, "--recalibration-images", "50", "--candidates", "6"] if check.tiny else []
    figures, study = _run_search(check, "oneshot", limit, ["--strategy", "oneshot", "--supernet-epochs", "1",
                                                           "--top-k", "1", "--no-baselines", *tiny])
    if study is not None:
        supernet, scoring = study.user_attrs.get("supernet", {}), study.user_attrs.get("oneshot_scoring", {})
        figures.update({"supernet_device": supernet.get("device"), "supernet_train_s": supernet.get("train_s"),
                        "scoring_device": scoring.get("device"), "candidates_scored": scoring.get("scored"),
                        "candidates_per_s": scoring.get("per_s")})
    return figures


def _load_study(db: Path) -> Any:
    """The check's study in `db`, None where the search made none."""
    if not db.is_file():
        return None
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name="device-check", storage=f"sqlite:///{db}")


def _study_figures(study: Any) -> dict:
    if study is None:
        return {"trials_trained": 0}
    trained = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("status") == "train"]
    done = [t for t in trained if t.state.name == "COMPLETE"]
    speeds = [t.user_attrs["train_images_per_s"] for t in done if t.user_attrs.get("train_images_per_s")]
    return {"trials_trained": len(done), "trials_failed": len(trained) - len(done),
            "devices": sorted({str(t.user_attrs.get("device")) for t in done}),
            "gpu_ids": sorted({",".join(t.user_attrs.get("gpu_ids") or []) for t in done}),
            "precision": sorted({str(t.user_attrs.get("precision")) for t in done}),
            "study_precision": study.user_attrs.get("precision"),
            "train_images_per_s_median": float(np.median(speeds)) if speeds else None,
            "wall_time_s_median": float(np.median([t.user_attrs.get("wall_time_s", 0) for t in done])) if done
            else None}


def _tail(log: Path, lines: int = 3) -> str:
    try:
        return " | ".join(log.read_text(errors="replace").strip().splitlines()[-lines:])[-600:]
    except OSError:
        return "(no log)"


def step_audit(check: Check) -> dict:
    rung = pick_rung(check)
    if rung is None:
        return {"skipped": f"{check.left():.0f} s left: too little for the paper's designs even at rung 1"}
    folder = check.out / "audit"
    folder.mkdir(parents=True, exist_ok=True)
    tiny = ["--train-size", "100", "--val-size", "50", "--epochs", "1", "--batch-size", "25",
            "--references", str(_tiny_references(folder))] if check.tiny else []
    cmd = [sys.executable, "-m", "audit", "--rungs", str(rung), "--seeds", "0", "--results-dir", str(folder),
           "--resamples", "1000", *check.data_args(), *tiny]
    started = time.monotonic()
    code = run_command(cmd, check.left() - 35, folder / "audit.log")  # its SIGTERM stop within the budget
    written = sorted(str(p.relative_to(folder)) for p in folder.rglob("audit.json"))
    figures = {"rung": rung, "command": " ".join(cmd[1:]), "exit": code,
               "seconds": round(time.monotonic() - started, 1), "audits": written}
    if code != 0:
        figures["error"] = f"python -m audit exited with {code}: {_tail(folder / 'audit.log')}"
    return figures


def _tiny_references(folder: Path) -> Path:
    """Three of the paper's designs (DeiT-T, LocalViT-T and the best), enough for an audit to run
    end to end on a CPU in seconds."""
    import yaml

    from space.references import PAPER_IMAGENET

    paper = yaml.safe_load(PAPER_IMAGENET.read_text())
    keep = {"I/deit-mlp-g4", "II/hswish-se192", "II/hswish-se4"}
    path = folder / "references.yaml"
    path.write_text(yaml.safe_dump({**paper, "name": "paper-imagenet-3",
                                    "rows": [row for row in paper["rows"] if row["name"] in keep]}))
    return path


def pick_rung(check: Check) -> int | None:
    """The highest rung whose 18 designs, at the best side-by-side rate measured, take at most half
    the time left (the rest: starting Ray, evaluations, zero-cost scores, the report)."""
    rates = [r["images_per_s_sum"] for r in check.figures.get("side_by_side", {}).get("rows", [])
             if r.get("images_per_s_sum")]
    if check.tiny:
        return 1
    if not rates:
        return None
    from proxy.protocol import ProxyProtocol

    default = ProxyProtocol()
    images = default.train_size * default.epochs  # rung 1: the default's training images
    for rung in RUNGS:
        if PAPER_DESIGNS * images * rung / max(rates) <= 0.5 * (check.left() - 60):
            return rung
    return None


STEPS: dict[str, Callable[[Check], dict]] = {"environment": step_environment, "speed": step_speed,
                                              "side_by_side": step_side_by_side, "search": step_search,
                                              "oneshot": step_oneshot, "audit": step_audit}


# --- synthetic data where Fashion-MNIST is missing -------------------------------------------------

def write_synthetic_idx(folder: Path, train: int = 60_000, test: int = 10_000, seed: int = 0) -> Path:
    """Fashion-MNIST-shaped idx files (28x28 uint8, labels 0-9): a fixed pattern per class under
    noise, so that the proxy learns something and every data path runs as on the real files."""
    rng = np.random.default_rng(seed)
    patterns = rng.integers(0, 256, size=(10, 28, 28)).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", train), ("t10k", test)):
        labels = np.arange(count, dtype=np.uint8) % 10
        rng.shuffle(labels)
        noise = rng.integers(0, 256, size=(count, 28, 28)).astype(np.float32)
        images = (0.6 * patterns[labels] + 0.4 * noise).astype(np.uint8)
        header = np.array([2051, count, 28, 28], dtype=">u4").tobytes()
        (folder / f"{split}-images-idx3-ubyte").write_bytes(header + images.tobytes())
        (folder / f"{split}-labels-idx1-ubyte").write_bytes(np.array([2049, count], dtype=">u4").tobytes()
                                                            + labels.tobytes())
    return folder


def proxy_data_dir(out: Path) -> str | None:
    """None where the Fashion-MNIST files are installed, else a folder of synthetic ones."""
    from proxy.data import DEFAULT_FASHION_MNIST_DIR, load_fashion_mnist

    try:
        load_fashion_mnist(DEFAULT_FASHION_MNIST_DIR)
        return None
    except Exception:  # noqa: BLE001 - missing, unreadable or a cache that cannot be written: synthetic
        return str(write_synthetic_idx(out / "synthetic-fashion-mnist"))


# --- the report -----------------------------------------------------------------------------------

def markdown(report: dict) -> str:
    env, steps = report["environment"], report["steps"]
    lines = [f"# Device check, {env.get('date', report['date'])}", "",
             (f"Commit {env.get('commit')}, torch {env.get('torch')}, device {env.get('cuda') or env.get('cpu')}; "
              f"{'tiny (CI) size' if report['tiny'] else 'full size'}, {report['seconds']:.0f} s of "
              f"{report['budget_s']:.0f}."), ""]
    for name, step in steps.items():
        failed = "error" in step or any("error" in row for row in step.get("rows", []))
        status = "failed" if failed else "skipped" if "skipped" in step else "ok"
        lines.append(f"## {name} ({status}, {step.get('step_seconds', 0):.0f} s)")
        lines.append("")
        for key, value in step.items():
            if key == "rows" and value:
                columns = sorted({k for row in value for k in row}, key=lambda k: list(value[0]).index(k)
                                 if k in value[0] else 99)
                lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
                lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in value]
            elif key != "step_seconds":
                lines.append(f"- {key}: {value}")
        lines.append("")
    return "\n".join(lines)


def save(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "device_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / "device_check.md").write_text(markdown(report) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.device_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", default=os.environ.get("DEVICE_CHECK_TINY") == "1",
                        help="the same steps at a tiny size, on the CPU unless a GPU is visible (CI)")
    parser.add_argument("--out", help="folder of the figures (default: $OUT, else bench/results/device-check-<date>)")
    parser.add_argument("--budget", type=float, help=f"seconds for the whole check (default: {BUDGET_S:g}, "
                                                     f"{TINY_BUDGET_S:g} with --tiny)")
    parser.add_argument("--skip", action="append", default=[], choices=list(STEPS), help="leave a step out")
    args = parser.parse_args(argv)
    import torch

    started = time.monotonic()
    budget = args.budget or (TINY_BUDGET_S if args.tiny else BUDGET_S)
    out = Path(args.out or os.environ.get("OUT") or
               RESULTS / f"device-check-{datetime.now(UTC):%Y-%m-%d}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    check = Check(tiny=args.tiny, out=out, device="cuda" if torch.cuda.is_available() else "cpu", deadline=started)
    try:
        machine = environment()
    except Exception as err:  # noqa: BLE001 - the steps say more
        machine = {"error": f"{type(err).__name__}: {err}"}
    report: dict[str, Any] = {"date": f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ}", "environment": machine,
                              "tiny": args.tiny, "budget_s": budget, "seconds": 0.0, "steps": {}}
    check.data_dir = proxy_data_dir(out)
    share = 0.0
    for name, step in STEPS.items():
        t0 = time.monotonic()
        share += SHARES[name]
        check.deadline = started + share * budget
        print(f"[{t0 - started:5.0f} s] {name} ({check.left():.0f} s) ...", flush=True)
        try:
            figures = step(check) if name not in args.skip else {"skipped": "--skip"}
        except Exception as err:  # noqa: BLE001 - a step's failure is a figure; the next step runs
            figures = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-2000:]}
        figures["step_seconds"] = round(time.monotonic() - t0, 1)
        check.figures[name] = report["steps"][name] = figures
        report["seconds"] = time.monotonic() - started
        save(report, out)
        print(f"[{report['seconds']:5.0f} s] {name}: "
              + json.dumps({k: v for k, v in figures.items() if k not in ("traceback", "nvidia_smi")},
                           default=str)[:400], flush=True)
    print(f"figures saved in {out}/device_check.json and .md", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
