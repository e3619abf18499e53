"""The fidelity ladder: how a proxy protocol's agreement with the target grows with its compute.

A rung r of a protocol trains r times its optimizer steps (`proxy.protocol.at_rung`); each rung
is audited like any protocol (`python -m audit --rungs 1,3,10` writes one audit a rung, keyed by
the rung's protocol, and records the rung and the key of rung 1). `ladder_for` gathers the
audits of every rung of one protocol (the user's under the results folder, then the project's
shipped ones), `ladder_rows` puts each rung's figures beside the free baselines', and
`trusted_rung` is the lowest rung whose audit ranks by something that costs compute: the
audit's own choice (`ranking.signals.choose_default`), so a rung is trusted only when it beats
counting out of sample by the rule every audit uses.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from space.paper import LOCALVIT_T_LAYER, MLP, tiny

from .audits import shipped_audits, user_audits
from .signals import FREE, meets_goal

#: The paper's headline pair: LocalViT-T beats DeiT-T by 2.6 points on ImageNet (74.8 vs 72.2);
#: a proxy's gap between them says whether it measures how good a design ends, not how fast it starts.
HEADLINE_PAIR = {"LocalViT-T": tiny(LOCALVIT_T_LAYER).id, "DeiT-T": tiny(MLP).id}


def rung_of(audit: Mapping[str, Any]) -> int:
    """An audit's rung (audits made before rungs existed are rung 1 of their own protocol)."""
    return int(audit.get("rung", 1))


def base_key_of(audit: Mapping[str, Any]) -> str:
    """The key of the protocol at rung 1 of an audit's ladder."""
    return str(audit.get("base_protocol_key") or audit["protocol_key"])


def ladder_for(base_key: str, results_dir: str | Path | None = None, references_key: str | None = None
               ) -> dict[int, dict[str, Any]]:
    """The audits of each rung of the protocol whose rung-1 key is `base_key`, on the reference
    set of `references_key` (None: any): by rung, the user's own under `results_dir` (the newest
    of a rung) before the project's (`audited_protocols.json`)."""
    def matches(audit: Mapping[str, Any]) -> bool:
        return base_key_of(audit) == base_key and references_key in (None, audit["references"].get("key"))

    ladder: dict[int, dict[str, Any]] = {}
    for audit in user_audits(results_dir, matches) + list(shipped_audits().values()):  # newest of the user's first
        if matches(audit):
            ladder.setdefault(rung_of(audit), audit)
    return dict(sorted(ladder.items()))


def trusted_rung(ladder: Mapping[int, Mapping[str, Any]]) -> int | None:
    """The lowest rung whose audit ranks by a signal that costs compute (it beat the parameter
    count out of sample by `choose_default`'s rule); None when no rung does."""
    for rung, audit in sorted(ladder.items()):
        if audit.get("default_signal", "params") not in FREE:
            return rung
    return None


def _figures(evaluation: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if evaluation is None:
        return None
    keep = ("tau_b", "tau_b_interval", "spearman", "bucket_tau_b", "bucket_interval", "bucket_pairs",
            "equal_params_agreed", "equal_params_pairs", "regret", "cpu_s")
    return {k: evaluation[k] for k in keep}


def headline_gap_of(audit: Mapping[str, Any]) -> dict[str, float | None]:
    """LocalViT-T's lead over DeiT-T in the target and the proxy, as the audit records it (older
    audits: computed from their rows)."""
    return dict(audit["headline_gap"]) if audit.get("headline_gap") else headline_gap(audit["rows"])


def headline_gap(rows: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    """LocalViT-T's lead over DeiT-T in the target and in the proxy (mean of seeds); None where
    the references lack either."""
    by_id = {row["spec_id"]: row for row in rows}
    local, deit = (by_id.get(HEADLINE_PAIR[name]) for name in ("LocalViT-T", "DeiT-T"))
    if local is None or deit is None:
        return {"target": None, "proxy": None}
    return {"target": local["target"] - deit["target"], "proxy": local["proxy_mean"] - deit["proxy_mean"]}


def ladder_rows(ladder: Mapping[int, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row a rung: its protocol and cost, the measured signal's figures with one seed (what a
    search trains) and with the mean of the seeds, the best combination with the parameter count,
    the free baselines' figures, the headline gap, the audit's choice and whether it beats counting."""
    rows = []
    for rung, audit in sorted(ladder.items()):
        signals, measured = audit["signals"], audit.get("measured", "proxy")
        protocol = audit["protocol"]
        steps = max(1, protocol["train_size"] // protocol["batch_size"]) * protocol["epochs"]
        mean = next((name for name in signals if name.startswith(f"{measured}, mean of")), None)
        combined = [name for name in signals if name not in FREE and name != measured and name != mean
                    and measured in name]
        best_combined = max(combined, key=lambda n: signals[n]["tau_b"], default=None)
        base = signals.get("params")
        rows.append({
            "rung": rung, "protocol_key": audit["protocol_key"], "train_size": protocol["train_size"],
            "epochs": protocol["epochs"], "steps": steps, "seeds": list(audit["seeds"]),
            "cpu_s_per_candidate": _median_cpu_s(audit), "precision": audit["precision"],
            "measured": _figures(signals.get(measured)), "mean_of_seeds": _figures(signals.get(mean) if mean else None),
            "mean_name": mean, "best_combination": best_combined,
            "combination": _figures(signals.get(best_combined) if best_combined else None),
            "params": _figures(base), "flops": _figures(signals.get("flops")),
            "headline_gap": headline_gap_of(audit), "default_signal": audit.get("default_signal", "params"),
            "measured_beats_counting": bool(base and measured in signals and meets_goal(signals[measured], base)),
            "study": audit["study"], "created": audit["created"],
        })
    return rows


def crossing(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The trend of the measured signal's tau-b (one seed) in log10(rung), fitted by least
    squares, and the rung where it would reach the parameter count's tau-b; None with fewer than
    two rungs. An extrapolation from a few points, each with a standard error of ~0.17: a hint of
    where to measure next, not a figure."""
    points = [(math.log10(r["rung"]), r["measured"]["tau_b"]) for r in rows if r["measured"]]
    if len(points) < 2 or not rows[0]["params"]:
        return None
    x, y = np.array(points).T
    slope, intercept = np.polyfit(x, y, 1)
    target = rows[0]["params"]["tau_b"]
    at = 10 ** ((target - intercept) / slope) if slope > 0 else None
    return {"slope_per_decade": float(slope), "intercept": float(intercept), "params_tau_b": target,
            "rung": float(at) if at is not None else None, "points": len(points)}


def describe_ladder(ladder: Mapping[int, Mapping[str, Any]]) -> str:
    """The ladder in one line for a search summary: each audited rung's tau-b (one seed) beside the
    parameter count's, and which rung, if any, beats counting."""
    rows = ladder_rows(ladder)
    if not rows:
        return "no rung of this protocol is audited (`python -m audit --rungs 1,3,10` measures the ladder)"
    base = rows[0]["params"]
    rungs = "; ".join(f"rung {r['rung']} ({r['cpu_s_per_candidate'] / 60:.1f} CPU-min a candidate): tau-b "
                      f"{_cell(r['measured'])}" for r in rows)
    trusted = trusted_rung(ladder)
    verdict = (f"rung {trusted} is the lowest that beats counting" if trusted is not None
               else "no audited rung beats counting")
    return f"{rungs}; parameter count {_cell(base)}; {verdict}"


def _seeds_cell(row: Mapping[str, Any]) -> str:
    seeds = len(row["seeds"])
    return f"{_cell(row['mean_of_seeds'])} ({seeds} seeds)" if seeds > 1 else "- (one seed)"


def _cell(figures: Mapping[str, Any] | None) -> str:
    if not figures:
        return "-"
    low, high = figures["tau_b_interval"]
    return f"{figures['tau_b']:.2f} [{low:.2f}, {high:.2f}]"


def _pairs(figures: Mapping[str, Any] | None) -> str:
    if not figures or not figures["equal_params_pairs"]:
        return "-"
    return f"{figures['equal_params_agreed']:g}/{figures['equal_params_pairs']}"


def _regret(figures: Mapping[str, Any] | None) -> str:
    if not figures:
        return "-"
    return ", ".join("-" if math.isnan(v[0]) else f"{v[0]:.1f}" for v in figures["regret"].values())


def _median_cpu_s(audit: Mapping[str, Any]) -> float:
    """CPU-seconds a candidate: the median over the designs, which a few trainings slowed by other
    work on the machine (shared caches inflate CPU time) move less than the audit's mean."""
    costs = [row["cpu_s"] for row in audit.get("rows", []) if row.get("cpu_s")]
    return float(np.median(costs)) if costs else float(audit["cpu_s_per_candidate"])


def ladder_markdown(rows: Sequence[Mapping[str, Any]], title: str) -> str:
    """The ladder's page: a row a rung, the free baselines beside every rung's figures."""
    if not rows:
        return f"# {title}\n\nNo rung of this protocol has been audited.\n"
    base, flops = rows[0]["params"], rows[0]["flops"]
    budgets = ", ".join(base["regret"]) if base else ""
    lines = [f"# {title}", "",
             "Each rung trains every reference design with r times the protocol's optimizer steps (more "
             "distinct images first, then epochs) and is audited like any protocol; the parameter count and "
             "FLOPs cost nothing and are the same at every rung.", "",
             f"| rung | images x epochs (steps) | CPU-min per candidate (median) | tau-b, one seed [95%] "
             f"| tau-b, mean of seeds | tau-b in FLOP buckets | equal-parameter pairs | regret at {budgets} GFLOPs "
             f"| LocalViT-T - DeiT-T (points) | the audit ranks by |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        gap = r["headline_gap"]
        gap_text = "-" if gap.get("proxy") is None else f"{gap['proxy']:.1f} (target {gap['target']:.1f})"
        measured = r["measured"]
        bucket = "-" if not measured else f"{measured['bucket_tau_b']:.2f}"
        lines.append(
            f"| {r['rung']}x | {r['train_size']:,} x {r['epochs']} ({r['steps']}) | "
            f"{r['cpu_s_per_candidate'] / 60:.1f} "
            f"| {_cell(measured)} | {_seeds_cell(r)} | {bucket} | "
            f"{_pairs(measured)} | {_regret(measured)} | {gap_text} | {r['default_signal']} |")
    if base:
        lines.append(f"| params (free) | | 0 | {_cell(base)} | | {base['bucket_tau_b']:.2f} | {_pairs(base)} | "
                     f"{_regret(base)} | | |")
    if flops:
        lines.append(f"| FLOPs (free) | | 0 | {_cell(flops)} | | {flops['bucket_tau_b']:.2f} | {_pairs(flops)} | "
                     f"{_regret(flops)} | | |")
    trend = crossing(rows)
    lines.append("")
    trusted = trusted_rung({r["rung"]: r for r in rows})
    if trusted is not None:
        lines.append(f"Rung {trusted} is the lowest whose audit beats counting out of sample: a search with "
                     f"`--rank-by auto` decides there.")
    else:
        lines.append("No audited rung beats counting out of sample: a search with `--rank-by auto` ranks by the "
                     "parameter count.")
    if trend:
        where = (f"it would reach the parameter count's {trend['params_tau_b']:.2f} near rung "
                 f"{trend['rung']:.0f}" if trend["rung"] else "it does not rise, so no rung is in sight")
        lines.append(f"Trend of the one-seed tau-b over {trend['points']} rungs: {trend['slope_per_decade']:+.2f} "
                     f"per tenfold compute; {where} (a least-squares line through points whose standard error "
                     f"is about 0.17 each: where to measure next, not a result).")
    lines += ["", "Audits: " + ", ".join(f"rung {r['rung']} `{r['study']}` ({r['created']})" for r in rows), ""]
    return "\n".join(lines)


def plot_ladder(rows: Sequence[Mapping[str, Any]], path: Path, title: str) -> None:
    """tau-b (with its interval) against CPU-minutes per candidate, the free baselines as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    for key, label, color, shift in (("measured", "proxy, one seed", "tab:blue", 1.0),
                                     ("mean_of_seeds", "proxy, mean of seeds", "tab:green", 1.04)):
        points = [(r["cpu_s_per_candidate"] / 60 * shift, r[key], r["rung"]) for r in rows if r[key]]
        if not points:
            continue
        xs = [p[0] for p in points]
        ys = [p[1]["tau_b"] for p in points]
        err = np.array([[p[1]["tau_b"] - p[1]["tau_b_interval"][0], p[1]["tau_b_interval"][1] - p[1]["tau_b"]]
                        for p in points]).T
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, color=color, label=label)
        if key == "measured":
            for x, y, rung in zip(xs, ys, (p[2] for p in points)):
                ax.annotate(f"{rung}x", (x, y), xytext=(4, -12), textcoords="offset points", fontsize=8)
    base = rows[0]["params"] if rows else None
    if base:
        ax.axhline(base["tau_b"], color="tab:red", label=f"parameter count (free) {base['tau_b']:.2f}")
        ax.axhspan(*base["tau_b_interval"], color="tab:red", alpha=0.08)
    flops = rows[0]["flops"] if rows else None
    if flops:
        ax.axhline(flops["tau_b"], color="tab:orange", linestyle="--", label=f"FLOPs (free) {flops['tau_b']:.2f}")
    ax.set_xscale("log")
    ax.set_xlabel("CPU-minutes per candidate")
    ax.set_ylabel("Kendall tau-b vs the target (95% interval)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def designs_markdown(ladder: Mapping[int, Mapping[str, Any]]) -> str:
    """Every reference design's score at every rung, a column a rung (its seeds' scores), beside
    its target and parameter count: where each rung's ranking comes from."""
    if not ladder:
        return ""
    audits = sorted(ladder.items())
    names = [row["name"] for row in audits[0][1]["rows"]]
    header = "| design | target | params (M) | " + " | ".join(
        f"rung {rung}, seed{'s' if len(a['seeds']) > 1 else ''} {', '.join(map(str, a['seeds']))}"
        for rung, a in audits) + " |"
    lines = ["## The designs at each rung", "", header, "|---" * (3 + len(audits)) + "|"]
    by_rung = [{row["name"]: row for row in a["rows"]} for _, a in audits]
    for name in sorted(names, key=lambda n: -by_rung[0][n]["target"]):
        first = by_rung[0][name]
        cells = []
        for (_, audit), rows in zip(audits, by_rung):
            scores = rows.get(name, {}).get("proxy", {})  # each seed's score of the measured signal
            cells.append(" / ".join(f"{scores[seed]:.1f}" if scores.get(seed) is not None else "-"
                                    for seed in map(str, audit["seeds"])))
        lines.append(f"| {name} | {first['target']:.1f} | {first['signals']['params'] / 1e6:.2f} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def ladder_page(ladder: Mapping[int, Mapping[str, Any]], title: str) -> str:
    """The ladder's page: the rungs beside the free baselines (`ladder_markdown`), then the designs."""
    return ladder_markdown(ladder_rows(ladder), title) + "\n" + designs_markdown(ladder)


def write_ladder(ladder: Mapping[int, Mapping[str, Any]], folder: Path, title: str) -> Path:
    """ladder.json (the rows and the trend), ladder.md and ladder.png under `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = ladder_rows(ladder)
    (folder / "ladder.json").write_text(json.dumps({"rows": rows, "trend": crossing(rows)}, indent=2) + "\n")
    plot_ladder(rows, folder / "ladder.png", title)
    path = folder / "ladder.md"
    path.write_text(ladder_page(ladder, title))
    return path


__all__ = ["HEADLINE_PAIR", "base_key_of", "crossing", "describe_ladder", "designs_markdown", "headline_gap",
           "ladder_for", "ladder_markdown", "ladder_page", "ladder_rows", "plot_ladder", "rung_of", "trusted_rung",
           "write_ladder"]
