"""Protocol study: how well each way of spending the CPU on a proxy ranks the paper's ImageNet designs.

    python -m studies.protocol_study                       # audit every protocol below (resumes), then tabulate
    python -m studies.protocol_study --only fmnist pairs   # some of them
    python -m studies.protocol_study --tabulate            # only collect the audits already in --results-dir

Each protocol is one `python -m audit` run (the paper's 18 ImageNet designs of Tables I,
II and IV, study `proto-<name>` under --results-dir). The table gives Kendall tau-b against
ImageNet with its 95% bootstrap interval, the seed-to-seed ceiling where two seeds ran, the
share of pairs ordered as ImageNet orders them along gamma and FFN type (MLP vs 1x1 conv vs
locality), and CPU-minutes per candidate; `protocol_study.png` plots tau against the CPU cost.
Run it under jemalloc (`make study STUDY=protocol_study`); other jobs on the machine inflate the
CPU figures only a little (they are CPU time, not wall time) but slow everything down.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from bench.common import environment, markdown_table, save
from search.options import add_options
from studies import RESULTS

#: name -> (what it changes, audit arguments, seeds). Every protocol names its dataset, so that
#: each audit stays what it was when the search's default changes. `rotations` is the default.
FMNIST = ["--dataset", "fashion-mnist"]
PROTOCOLS: dict[str, tuple[str, list[str], list[int]]] = {
    "fmnist": ("Fashion-MNIST 4000 images x 3 epochs, 28 px, patch 4, width x0.5 (the default until "
               "2026-12-03)", FMNIST, [0, 1]),
    "pairs": ("harder task: 56 px 2x2 mosaics, class = (top-left, bottom-right), 100 classes, patch 8",
              ["--dataset", "fashion-pairs", "--img-size", "56", "--patch-size", "8"], [0]),
    "rotations": ("the default: harder task, each item turned by 0-270 degrees, class = (item, turn), 40 "
                  "classes, otherwise as fmnist", ["--dataset", "fashion-rotations"], [0, 1]),
    "data12k-e1": ("fmnist with 3x the images, 1 epoch (same steps and cost)",
                   [*FMNIST, "--train-size", "12000", "--epochs", "1"], [0, 1]),
    "e6": ("fmnist with twice the epochs (6)", [*FMNIST, "--epochs", "6"], [0]),
    "width1": ("fmnist at full width instead of half", [*FMNIST, "--width-mult", "1.0"], [0]),
    "res56": ("fmnist upsampled to 56 px, patch 4: the 14x14 token grid of ImageNet at 224",
              [*FMNIST, "--img-size", "56", "--patch-size", "4", "--train-size", "2000"], [0]),
    "lr-warmup": ("fmnist with half the learning rate (1e-3), one epoch of warm-up",
                  [*FMNIST, "--lr", "0.001", "--warmup-epochs", "1"], [0]),
    "noaug": ("fmnist without augmentation", [*FMNIST, "--no-augment"], [0]),
    "fp32": ("fmnist in fp32 instead of bf16 where bf16 is native", [*FMNIST, "--precision", "fp32"], [0]),
}


def run_audit(name: str, results_dir: Path, workers: int | None) -> None:
    _, args, seeds = PROTOCOLS[name]
    cmd = [sys.executable, "-m", "audit", "--study", f"proto-{name}", "--results-dir", str(results_dir),
           *(["--workers", str(workers)] if workers else []), "--seeds", *map(str, seeds), *args]
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def tabulate(results_dir: Path) -> list[dict]:
    rows = []
    for name, (what, _, _) in PROTOCOLS.items():
        path = results_dir / f"proto-{name}" / "audit.json"
        if not path.is_file():
            continue
        audit = json.loads(path.read_text())
        variants = [(name, audit["agreement"], audit["seeds"])]
        if len(audit["seeds"]) > 1:  # each seed alone too: what one seed of this protocol gives
            variants += [(f"{name} (seed {s} alone)", a, [s]) for s, a in audit["per_seed"].items()]
        ceiling = audit.get("seed_to_seed")
        for label, a, seeds in variants:
            whole = label == name  # the axes and the ceiling belong to the protocol's seeds together
            rows.append({
                "protocol": label, "changes": what if whole else "", "seeds": " ".join(seeds),
                "tau_b": f"{a['kendall_tau_b']:.2f}",
                "tau_b_95": f"{a['kendall_interval'][0]:.2f} to {a['kendall_interval'][1]:.2f}",
                "spearman": f"{a['spearman']:.2f}",
                "seed_to_seed_tau_b": "-" if ceiling is None or not whole else
                f"{ceiling['kendall_tau_b']:.2f} ({ceiling['kendall_interval'][0]:.2f} to "
                f"{ceiling['kendall_interval'][1]:.2f})",
                "gamma_pairs_ok": _share(audit, "gamma") if whole else "-",
                "ffn_pairs_ok": _share(audit, "ffn type") if whole else "-",
                "cpu_min_per_candidate": f"{audit['cpu_s_per_candidate'] / 60 * len(seeds):.1f}",
                "precision": audit["precision"].get("resolved"), "designs": len(audit["rows"])})
    return rows


def _share(audit: dict, axis: str) -> str:
    entry = audit["axes"].get(axis)
    return "-" if not entry else f"{entry['agreed']:g}/{entry['pairs']}"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    for row in rows:
        low, high = (float(v) for v in row["tau_b_95"].split(" to "))
        x, y = float(row["cpu_min_per_candidate"]), float(row["tau_b"])
        ax.errorbar(x, y, yerr=[[y - low], [high - y]], fmt="o", capsize=3)
        ax.annotate(row["protocol"], (x, y), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.axhline(0.6, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlabel("CPU-minutes per candidate (all seeds)")
    ax.set_ylabel("Kendall tau-b vs ImageNet (95% bootstrap interval)")
    ax.set_title("Proxy protocols on the paper's 18 ImageNet designs", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=list(PROTOCOLS), help="these protocols (default: all)")
    parser.add_argument("--tabulate", action="store_true", help="do not train: collect the audits present")
    add_options(parser, groups=(), names=("results_dir", "workers"))
    args = parser.parse_args(argv)
    results_dir = Path(args.results_dir).resolve()
    if not args.tabulate:
        for name in args.only or PROTOCOLS:
            run_audit(name, results_dir, args.workers)
    rows = tabulate(results_dir)
    columns = ["protocol", "changes", "seeds", "tau_b", "tau_b_95", "spearman", "seed_to_seed_tau_b",
               "gamma_pairs_ok", "ffn_pairs_ok", "cpu_min_per_candidate", "precision"]
    markdown = markdown_table(rows, columns)
    print(markdown)
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot(rows, RESULTS / "protocol_study.png")
    save("protocol_study", rows, {"results_dir": str(results_dir), **environment()}, markdown, RESULTS)


if __name__ == "__main__":
    main()
