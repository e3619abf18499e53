"""Proxy-training speed on this CPU: images/s, achieved GFLOP/s vs peaks, worker scaling, accuracy.

    python -m bench.bench_proxy_training            # full (about 15-20 minutes on 2 cores)
    python -m bench.bench_proxy_training --quick    # a few minutes

Every configuration runs in a fresh subprocess (so jemalloc can be switched by LD_PRELOAD and
no allocator or compile cache state leaks between them). Measured:

(a) a minimal hand-written fp32 loop (AdamW, cross-entropy, random batches) on LocalViT-T at
    28x28 / patch 4 / 1 channel / 10 classes, full width (dim 192), glibc malloc;
(b) `train_proxy` on the same model with each speed-up on/off (jemalloc, bf16 autocast,
    torch.compile, channels-last, batch 256) and on the default proxy (width x0.5);
(c) achieved GFLOP/s = images/s x 3 x forward multiply-adds (closed-form, space.cost) x 2, i.e.
    training counted as 3x the forward pass and FLOP/s counted as 2 per multiply-add, the
    convention of the peaks (torch.mm: 2*m*n*k / s), which are measured here too;
(d) default proxy: 1 process x 2 threads vs 1 process x 1 thread vs 2 concurrent 1-thread processes;
(e) accuracy: the default protocol with fp32 vs the speed-up variants on the same seeds.

Images/s is the median over timed steps after warm-up steps (compilation excluded; its
cost is reported separately). Other work on the machine makes these figures noisy: the load
average is recorded with every figure. Results: bench/results/proxy_training.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from proxy.allocator import jemalloc_env  # noqa: E402 (the path above first)

RESULTS = ROOT / "bench" / "results"


# --- workers (run in subprocesses) ----------------------------------------------------------

def _setup(threads: int):
    import torch

    torch.set_num_threads(threads)
    return torch


def worker_plain(cfg: dict) -> dict:
    """The minimal hand-written fp32 loop: no autocast, no compile, no schedule."""
    torch = _setup(cfg["threads"])
    from localvit import PAPER_SPECS, build_model
    from proxy import ProxyProtocol, project_to_proxy

    spec = project_to_proxy(PAPER_SPECS[cfg["model"]], ProxyProtocol(width_mult=cfg["width_mult"]))
    torch.manual_seed(0)
    model = build_model(spec).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    b = cfg["batch_size"]
    x, y = torch.randn(b, 1, 28, 28), torch.randint(0, 10, (b,))
    times = []
    for _ in range(cfg["warmup"] + cfg["steps"]):
        t = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return _summary(times[cfg["warmup"]:], b, spec)


def worker_proxy(cfg: dict) -> dict:
    """`train_proxy` itself: per-step times from a timing hook on the optimizer."""
    torch = _setup(cfg["threads"])
    from localvit import PAPER_SPECS
    from proxy.data import ProxyData
    from proxy import ProxyProtocol, project_to_proxy, train_proxy

    b = cfg["batch_size"]
    steps = cfg["warmup"] + cfg["steps"]
    protocol = ProxyProtocol(width_mult=cfg["width_mult"], batch_size=b, train_size=b * steps, val_size=100,
                             epochs=1, precision=cfg["precision"], compile=cfg["compile"],
                             channels_last=cfg["channels_last"], threads=cfg["threads"], **cfg.get("protocol", {}))
    data = ProxyData(protocol.data_config())
    marks: list[float] = []
    orig_step = torch.optim.AdamW.step

    def timed_step(self, *a, **k):
        out = orig_step(self, *a, **k)
        marks.append(time.perf_counter())
        return out

    torch.optim.AdamW.step = timed_step
    t0 = time.perf_counter()
    result = train_proxy(PAPER_SPECS[cfg["model"]], protocol, data, device=cfg.get("device", "cpu"))
    times = [b_ - a_ for a_, b_ in zip([t0] + marks, marks)]
    out = _summary(times[cfg["warmup"]:], b, project_to_proxy(PAPER_SPECS[cfg["model"]], protocol))
    out["first_step_s"] = times[0]  # includes compilation when compile=True
    out["precision_used"] = result.precision
    return out


def _summary(times: list[float], batch: int, spec) -> dict:
    from space.cost import model_cost

    med = statistics.median(times)
    ips = batch / med
    macs = model_cost(spec).flops
    return {"images_per_s": ips, "step_s_median": med, "step_s_min": min(times), "step_s_max": max(times),
            "steps": len(times), "images_per_s_best": batch / min(times), "forward_macs": macs,
            "train_gflops": ips * 3 * macs * 2 / 1e9, "load1": os.getloadavg()[0]}


def worker_peak(cfg: dict) -> dict:
    """torch.mm GFLOP/s (2*n^3 per product) in fp32 and bf16, and a 1x1 convolution in fp32."""
    torch = _setup(cfg["threads"])
    out = {}
    n = 1024
    for name, dtype in (("fp32_mm", torch.float32), ("bf16_mm", torch.bfloat16)):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        torch.mm(a, b)
        reps, t = 0, time.perf_counter()
        while time.perf_counter() - t < 2.0:
            torch.mm(a, b)
            reps += 1
        out[name] = 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e9
    conv = torch.nn.Conv2d(384, 384, 1, bias=False)
    x = torch.randn(64, 384, 14, 14).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        conv(x)
        reps, t = 0, time.perf_counter()
        while time.perf_counter() - t < 2.0:
            conv(x)
            reps += 1
    out["fp32_conv1x1"] = 2 * 64 * 14 * 14 * 384 * 384 * reps / (time.perf_counter() - t) / 1e9
    out["load1"] = os.getloadavg()[0]
    return out


def worker_accuracy(cfg: dict) -> dict:
    _setup(cfg["threads"])
    from localvit import PAPER_SPECS
    from proxy import ProxyProtocol, train_proxy

    protocol = ProxyProtocol.from_dict({**ProxyProtocol().to_dict(), **cfg["overrides"]})
    r = train_proxy(PAPER_SPECS[cfg["model"]], protocol)
    return {"val_curve": r.val_curve, "val_acc": r.val_acc, "precision_used": r.precision,
            "total_time_s": r.total_time_s, "images_per_s_trial": r.images_per_s, "load1": os.getloadavg()[0]}


WORKERS = {"plain": worker_plain, "proxy": worker_proxy, "peak": worker_peak, "accuracy": worker_accuracy}


# --- driver ---------------------------------------------------------------------------------

def _env(jemalloc: bool, threads: int) -> dict:
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    env["OMP_NUM_THREADS"] = str(threads)
    env["PYTHONPATH"] = str(ROOT)
    return jemalloc_env(env) if jemalloc else env


def launch(kind: str, cfg: dict, jemalloc: bool) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, "--worker", kind, json.dumps(cfg)],
                            env=_env(jemalloc, cfg.get("threads", 2)), stdout=subprocess.PIPE, text=True, cwd=ROOT)


def collect(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate()
    if proc.returncode:
        return {"error": f"worker exited with {proc.returncode}"}
    return json.loads(out.strip().splitlines()[-1])


def run(kind: str, cfg: dict, jemalloc: bool) -> dict:
    return collect(launch(kind, cfg, jemalloc))


def speed_cfg(**kw) -> dict:
    cfg = {"model": "localvit_tiny", "width_mult": 1.0, "batch_size": 128, "threads": 2, "warmup": 3, "steps": 10,
           "precision": "fp32", "compile": False, "channels_last": False}
    cfg.update(kw)
    return cfg


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="proxy-training speed benchmark")
    ap.add_argument("--quick", action="store_true", help="fewer steps, fewer configurations, one accuracy seed")
    ap.add_argument("--repeats", type=int, default=None, help="repeats of each speed figure (median reported)")
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--render", metavar="JSON", help="re-write the markdown of a saved JSON result and exit")
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.render:
        path = Path(args.render)
        text = _markdown(json.loads(path.read_text()))
        path.with_suffix(".md").write_text(text)
        print(text)
        return
    if args.worker:
        kind, cfg = args.worker
        print(json.dumps(WORKERS[kind](json.loads(cfg))))
        return

    quick = args.quick
    repeats = args.repeats or (1 if quick else 2)
    steps = 5 if quick else 10
    bf16_steps = 2
    rows: list[dict] = []

    def speed(name: str, kind: str, cfg: dict, jemalloc: bool) -> dict:
        results = [run(kind, cfg, jemalloc) for _ in range(repeats)]
        good = [r for r in results if "error" not in r]
        row = {"name": name, "kind": kind, "jemalloc": jemalloc, **cfg}
        if good:
            ips = [r["images_per_s"] for r in good]
            row.update({k: v for k, v in good[-1].items()})
            row["images_per_s"] = statistics.median(ips)
            row["images_per_s_runs"] = ips
            row["train_gflops"] = statistics.median([r["train_gflops"] for r in good])
        else:
            row["error"] = results[0]["error"]
        rows.append(row)
        print(f"{name:44s} {row.get('images_per_s', float('nan')):7.1f} img/s  "
              f"{row.get('train_gflops', float('nan')):6.1f} GFLOP/s  runs {row.get('images_per_s_runs')}  "
              f"load {row.get('load1', 0):.1f}", flush=True)
        return row

    t_start = time.time()
    print("peaks (2 threads, then 1 thread):", flush=True)
    peaks = {"2_threads": run("peak", {"threads": 2}, True), "1_thread": run("peak", {"threads": 1}, True)}
    print(json.dumps(peaks), flush=True)

    print("\n(a)/(b) LocalViT-T, 28x28, patch 4, full width, 2 threads:", flush=True)
    speed("plain fp32 loop, glibc malloc, b128", "plain", speed_cfg(steps=steps), False)
    speed("plain fp32 loop, jemalloc, b128", "plain", speed_cfg(steps=steps), True)
    speed("train_proxy fp32, glibc, b128", "proxy", speed_cfg(steps=steps), False)
    speed("train_proxy fp32, jemalloc, b128", "proxy", speed_cfg(steps=steps), True)
    speed("train_proxy fp32, jemalloc, b256", "proxy", speed_cfg(steps=steps, batch_size=256), True)
    speed("train_proxy fp32, jemalloc, channels-last", "proxy", speed_cfg(steps=steps, channels_last=True), True)
    speed("train_proxy fp32, jemalloc, compile", "proxy", speed_cfg(steps=steps, compile=True), True)
    speed("train_proxy bf16, jemalloc", "proxy", speed_cfg(steps=bf16_steps, warmup=1, precision="bf16"), True)
    if not quick:
        speed("train_proxy bf16+compile, jemalloc", "proxy",
              speed_cfg(steps=bf16_steps, warmup=1, precision="bf16", compile=True), True)
        speed("DeiT-T train_proxy fp32, jemalloc", "proxy", speed_cfg(model="localvit_deit_tiny", steps=steps), True)

    print("\n(d) default proxy (width x0.5, fp32, jemalloc): threads and concurrent workers", flush=True)
    half = dict(width_mult=0.5, steps=steps * 2)
    one2 = speed("default proxy, 1 process x 2 threads", "proxy", speed_cfg(**half, threads=2), True)
    one1 = speed("default proxy, 1 process x 1 thread", "proxy", speed_cfg(**half, threads=1), True)
    if not quick:
        speed("default proxy, 1 thread, compile", "proxy", speed_cfg(**half, threads=1, compile=True), True)
    pair_runs = []
    for _ in range(repeats):
        procs = [launch("proxy", speed_cfg(**half, threads=1), True) for _ in range(2)]
        pair_runs.append([collect(p) for p in procs])
    pair_total = statistics.median([sum(r.get("images_per_s", 0) for r in runs) for runs in pair_runs])
    rows.append({"name": "default proxy, 2 concurrent processes x 1 thread (sum)", "kind": "proxy-pair",
                 "images_per_s": pair_total, "runs": pair_runs, "jemalloc": True, "width_mult": 0.5,
                 "train_gflops": pair_total * 3 * one1.get("forward_macs", 0) * 2 / 1e9})
    scaling = {"two_1thread_over_one_1thread": pair_total / one1["images_per_s"] if one1.get("images_per_s") else None,
               "two_1thread_over_one_2thread": pair_total / one2["images_per_s"] if one2.get("images_per_s") else None,
               "one_2thread_over_one_1thread": (one2["images_per_s"] / one1["images_per_s"]
                                                if one1.get("images_per_s") and one2.get("images_per_s") else None)}
    print(f"2 x 1-thread: {pair_total:.1f} img/s total; scaling {json.dumps(scaling)}", flush=True)

    accuracy = []
    if not args.skip_accuracy:
        print("\n(e) accuracy of the default protocol (LocalViT-T), fp32 vs compile; 2 at a time, 1 thread each",
              flush=True)
        seeds = [0] if quick else [0, 1]
        variants = {"fp32": {}, "fp32+compile": {"compile": True}}
        jobs = [(v, s) for s in seeds for v in variants]
        for i in range(0, len(jobs), 2):
            batch = jobs[i:i + 2]
            procs = [launch("accuracy", {"model": "localvit_tiny", "threads": 1,
                                         "overrides": {**variants[v], "seed": s, "threads": 1}}, True)
                     for v, s in batch]
            for (v, s), p in zip(batch, procs):
                res = {"variant": v, "seed": s, **collect(p)}
                accuracy.append(res)
                print(f"{v:14s} seed {s}: val {res.get('val_curve')} time {res.get('total_time_s', 0):.0f}s",
                      flush=True)

    report = {"machine": _machine(), "peaks_gflops": peaks, "rows": rows, "scaling": scaling, "accuracy": accuracy,
              "quick": quick, "repeats": repeats, "runtime_s": time.time() - t_start,
              "convention": "GFLOP/s = images/s x 3 x forward multiply-adds x 2 FLOP per multiply-add"}
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "proxy_training_quick" if quick else "proxy_training"
    (RESULTS / f"{stem}.json").write_text(json.dumps(report, indent=2))
    (RESULTS / f"{stem}.md").write_text(_markdown(report))
    print(_markdown(report))
    print(f"saved {RESULTS / stem}.json/.md in {report['runtime_s']:.0f} s")


def _machine() -> dict:
    import platform

    import torch

    info = {"cpu_count": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    try:
        info["mkldnn_bf16_native"] = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # noqa: BLE001
        info["mkldnn_bf16_native"] = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info


def _markdown(rep: dict) -> str:
    p2 = rep["peaks_gflops"].get("2_threads", {})
    lines = [f"# Proxy-training speed ({'quick' if rep['quick'] else 'full'} run)", "",
             f"Machine: {rep['machine']}", "",
             f"Peaks measured here, 2 threads: fp32 mm {p2.get('fp32_mm', 0):.0f}, fp32 1x1 conv "
             f"{p2.get('fp32_conv1x1', 0):.0f}, bf16 mm {p2.get('bf16_mm', 0):.0f} GFLOP/s; 1 thread: "
             f"{json.dumps({k: round(v) for k, v in rep['peaks_gflops'].get('1_thread', {}).items()})}", "",
             f"Convention: {rep['convention']}. Median of {rep['repeats']} run(s); load1 = load average "
             f"(other work on the machine).", "",
             "img/s: median step; best: fastest step (least disturbed by other work on the machine).", "",
             "| configuration | width | batch | threads | img/s | best img/s | GFLOP/s | best GFLOP/s | runs | load1 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rep["rows"]:
        ips, gf = r.get("images_per_s", float("nan")), r.get("train_gflops", float("nan"))
        runs = ", ".join(f"{x:.0f}" for x in r.get("images_per_s_runs", []))
        best = r.get("images_per_s_best", float("nan"))
        best_gf = gf * best / ips if ips == ips and ips else float("nan")
        lines.append(f"| {r['name']} | {r.get('width_mult', '')} | {r.get('batch_size', 128)} | "
                     f"{r.get('threads', '')} | {ips:.1f} | {best:.1f} | {gf:.1f} | {best_gf:.1f} | {runs} | "
                     f"{r.get('load1', float('nan')):.1f} |")
    lines += ["", f"Worker scaling: {json.dumps({k: (round(v, 2) if v else v) for k, v in rep['scaling'].items()})}"]
    if rep["accuracy"]:
        lines += ["", "| accuracy variant | seed | val top-1 per epoch | trial s |", "|---|---|---|---|"]
        for a in rep["accuracy"]:
            lines.append(f"| {a['variant']} | {a['seed']} | {a.get('val_curve')} | {a.get('total_time_s', 0):.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
