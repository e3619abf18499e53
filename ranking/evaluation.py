"""An audit's figures: how far a proxy's scores of reference designs rank them as the target
(ImageNet) does, computed from the scores alone (`audit` trains or reads them).

`score_audit` compares the proxy's scores by seed with the reference accuracies: Kendall tau-b
and Spearman with bootstrap intervals, the seed-to-seed ceiling, pairs of designs that differ
along one design axis (`pair_axis`), top-k overlap and the cost per candidate; `write_audit`
saves `audit.json`, `audit.md` and `audit.png`.
"""
from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any, Mapping, Sequence

from localvit.spec import ArchSpec, LayerSpec
from proxy.protocol import ProxyProtocol
from proxy.runtime import precision_record
from proxy.zero_cost import ZERO_COST, ZeroCostScore
from space.cost import target_cost
from space.references import ReferenceSet

from .audits import describe_precision, protocol_key
from .ladder import headline_gap
from .signals import Evaluation, choose_default, describe_choice, evaluate_all, rank_by_choices, signals_table
from .signals import combinations as combined_signals
from .statistics import Agreement, agreement, pair_agreement, top_k_overlap

AXES = ("ffn type", "placement", "activation", "channel attention", "gamma", "kernel", "heads")
"""Design axes a pair of designs can differ along alone (see `pair_axis`)."""
TOP_K = (1, 3, 5)

def _se_channels(layer: LayerSpec, dim: int) -> int | None:
    return layer.hidden_dim(dim) // layer.se_ratio if layer.se_ratio is not None else None  # SE


def pair_axis(a: ArchSpec, b: ArchSpec) -> str | None:
    """The one design axis two designs differ along, or None when they differ along several (or none).

    Per layer: the FFN type; the activation and the channel attention (SE counted by its width,
    the SE channels kept, as the paper's Table IV keeps 4) only where neither layer is a DeiT
    MLP (whose GELU and lack of attention are not choices); gamma; the depth-wise kernel where
    both layers have one. An FFN-type difference between two designs with one type in every layer
    is "ffn type" (the paper's Table I), otherwise "placement" (which layers get locality, Table
    III). The head count is an axis only when nothing else differs: the paper's DeiT MLP designs
    have 3 heads and its locality designs 4, and that pair compares FFN types.
    """
    if (a.backbone, a.embed_dim, a.depth, a.patch_size) != (b.backbone, b.embed_dim, b.depth, b.patch_size):
        return None
    dims = a.block_dims
    diffs: set[str] = set()
    for la, lb, dim in zip(a.layers, b.layers, dims):
        if la.ffn != lb.ffn:
            diffs.add("ffn")
        if la.gamma != lb.gamma:
            diffs.add("gamma")
        if "mlp" not in (la.ffn, lb.ffn):
            if la.act != lb.act:
                diffs.add("activation")
            if (la.attn, _se_channels(la, dim)) != (lb.attn, _se_channels(lb, dim)):
                diffs.add("channel attention")
        if la.ffn == lb.ffn == "local" and la.kernel != lb.kernel:
            diffs.add("kernel")
    if not diffs:
        return "heads" if a.num_heads != b.num_heads else None
    if len(diffs) > 1:
        return None
    axis = diffs.pop()
    if axis != "ffn":
        return axis
    uniform = all(len({layer.ffn for layer in spec.layers}) == 1 for spec in (a, b))
    return "ffn type" if uniform else "placement"


# --- scores --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ProxyScore:
    """One design's proxy result in one study (one seed)."""

    accuracy: float
    cpu_time_s: float | None  # None: a trial trained before the search recorded CPU time
    wall_time_s: float
    precision: str | None = None


def scores_from_rows(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, ProxyScore]]:
    """The proxy scores by seed and spec id that an audit's rows hold (`audit.json`), to score
    the audit again without training."""
    scores: dict[str, dict[str, ProxyScore]] = {}
    for row in rows:
        for seed, accuracy in row["proxy"].items():
            cpu_s = row.get("cpu_s")
            scores.setdefault(seed, {})[row["spec_id"]] = ProxyScore(accuracy, cpu_s, cpu_s or 0.0)
    return scores


def _cost(scores: list[ProxyScore]) -> float:
    """Mean CPU seconds of a training, from the trials that recorded it (wall time where none did)."""
    recorded = [p.cpu_time_s for p in scores if p.cpu_time_s is not None]
    return statistics.fmean(recorded) if recorded else statistics.fmean(p.wall_time_s for p in scores)


@dataclass
class AuditResult:
    """Everything an audit found; `to_dict()` is what `audit.json` holds."""

    study: str
    references: dict[str, Any]
    protocol: dict[str, Any]
    protocol_key: str
    precision: dict[str, Any]
    seeds: list[str]
    rows: list[dict[str, Any]]
    agreement: Agreement
    per_seed: dict[str, Agreement]
    seed_to_seed: Agreement | None
    axes: dict[str, dict[str, Any]]
    top_k: dict[int, float]
    cpu_s_per_candidate: float
    cpu_s_total: float
    missing: list[str] = field(default_factory=list)
    measured: str = "proxy"
    signals: dict[str, dict[str, Any]] = field(default_factory=dict)  # signal -> `Evaluation.to_dict()`
    default_signal: str = ""
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M"))
    rung: int = 1  # the compute level of the protocol (`proxy.protocol.at_rung`); 1: as given
    base_protocol_key: str = ""  # the key of the protocol at rung 1 (the ladder's name)
    headline_gap: dict[str, float | None] = field(default_factory=dict)  # LocalViT-T - DeiT-T: target, proxy

    def to_dict(self) -> dict[str, Any]:
        def agree(a: Agreement | None) -> dict[str, Any] | None:
            return None if a is None else {
                "n": a.n, "kendall_tau_b": a.kendall_tau_b, "kendall_interval": list(a.kendall_interval),
                "spearman": a.spearman, "spearman_interval": list(a.spearman_interval), "confidence": a.confidence}
        return {"study": self.study, "references": self.references, "protocol": self.protocol,
                "protocol_key": self.protocol_key, "precision": self.precision, "seeds": self.seeds,
                "rows": self.rows, "agreement": agree(self.agreement),
                "per_seed": {s: agree(a) for s, a in self.per_seed.items()},
                "seed_to_seed": agree(self.seed_to_seed), "axes": self.axes,
                "top_k": {str(k): v for k, v in self.top_k.items()},
                "cpu_s_per_candidate": self.cpu_s_per_candidate, "cpu_s_total": self.cpu_s_total,
                "missing": self.missing, "measured": self.measured, "signals": self.signals,
                "default_signal": self.default_signal, "created": self.created, "rung": self.rung,
                "base_protocol_key": self.base_protocol_key or self.protocol_key, "headline_gap": self.headline_gap}


def _portable(path: str) -> str:
    """A reference file's path as an audit records it: relative to the project when the file ships
    with it, so that shipped audits name no folder of the machine they were made on."""
    try:
        return str(Path(path).resolve().relative_to(Path(__file__).resolve().parents[1]))
    except ValueError:
        return path


def score_audit(references: ReferenceSet, scores_by_seed: Mapping[str, Mapping[str, ProxyScore]], *,
                study: str, protocol: ProxyProtocol, precision: Mapping[str, Any] | None = None,
                measured: str = "proxy", zero_cost: Mapping[str, Mapping[str, ZeroCostScore]] | None = None,
                confidence: float = 0.95, n_resamples: int = 10_000, rung: int = 1,
                base_protocol: ProxyProtocol | None = None) -> AuditResult:
    """Compare the proxy's scores (by seed, then spec id) with the reference accuracies, and
    every signal beside it (`signal_columns`): `measured` names what the scores are (`proxy`
    or `supernet`), `zero_cost` holds the zero-cost scores by spec id.

    The proxy's score of a design is the mean over the seeds that trained it; designs that no
    seed trained are listed as missing and left out. `rung` and `base_protocol` say which rung of
    which protocol's ladder `protocol` is (`proxy.protocol.at_rung`).
    """
    seeds = list(scores_by_seed)
    rows: list[dict[str, Any]] = []
    proxy: list[float] = []
    target: list[float] = []
    specs: list[ArchSpec] = []
    missing = []
    for ref in references.rows:
        per_seed = {s: scores_by_seed[s][ref.spec.id] for s in seeds if ref.spec.id in scores_by_seed[s]}
        if not per_seed:
            missing.append(ref.name)
            continue
        mean = statistics.fmean(p.accuracy for p in per_seed.values())
        size = target_cost(ref.spec)
        row_signals = {"params": size.params, "flops": size.flops,
                       measured: per_seed[seeds[0]].accuracy if seeds[0] in per_seed else None}
        undefined = {}
        for name, score in (zero_cost or {}).get(ref.spec.id, {}).items():
            row_signals[name] = score.value
            if score.value is None:
                undefined[name] = score.undefined
        rows.append({"name": ref.name, "spec_id": ref.spec.id, "target": ref.accuracy, "source": dict(ref.source),
                     "proxy": {s: p.accuracy for s, p in per_seed.items()}, "proxy_mean": mean,
                     "cpu_s": _cost(list(per_seed.values())), "signals": row_signals,
                     **({"undefined": undefined} if undefined else {})})
        proxy.append(mean)
        target.append(ref.accuracy)
        specs.append(ref.spec)
    if len(rows) < 3:
        raise ValueError(f"{len(rows)} of the {len(references.rows)} reference designs have a proxy result; "
                         f"accepted: at least 3 (missing: {', '.join(missing[:5])})")
    kwargs: dict[str, Any] = {"confidence": confidence, "n_resamples": n_resamples}
    per_seed_agreement = {}
    for s in seeds:
        common = [(r["proxy"][s], r["target"]) for r in rows if s in r["proxy"]]
        if len(common) >= 3:
            per_seed_agreement[s] = agreement([c[0] for c in common], [c[1] for c in common], **kwargs)
    seed_to_seed = None
    if len(seeds) >= 2:
        a, b = seeds[0], seeds[1]
        both = [(r["proxy"][a], r["proxy"][b]) for r in rows if a in r["proxy"] and b in r["proxy"]]
        if len(both) >= 3:
            seed_to_seed = agreement([x for x, _ in both], [y for _, y in both], **kwargs)
    axes = {}
    for axis in AXES:
        pairs = [(i, j) for i, j in combinations(range(len(specs)), 2) if pair_axis(specs[i], specs[j]) == axis]
        agreed, counted = pair_agreement(proxy, target, pairs)
        if counted:
            wrong = [f"{rows[i]['name']} vs {rows[j]['name']}" for i, j in pairs
                     if (proxy[i] - proxy[j]) * (target[i] - target[j]) <= 0 and target[i] != target[j]]
            axes[axis] = {"pairs": counted, "agreed": agreed, "share": agreed / counted, "disagreed": wrong}
    everything = [p for scores in scores_by_seed.values() for p in scores.values()]
    cost = _cost(everything)
    evaluations = evaluate_signals(rows, measured, seeds, zero_cost or {}, cost, n_resamples)
    for name, evaluation in evaluations.items():  # every row holds its value of every signal
        for row, value in zip(rows, evaluation.values):
            row["signals"].setdefault(name, value)
    signals = {k: e.to_dict() for k, e in evaluations.items()}
    return AuditResult(
        study=study, references={"name": references.name, "target": references.target,
                                 "path": _portable(references.path), "n": len(references.rows), "key": references.key},
        protocol=protocol.to_dict(), protocol_key=protocol_key(protocol),
        precision=dict(precision or precision_record(protocol.precision)), seeds=seeds, rows=rows,
        agreement=agreement(proxy, target, **kwargs), per_seed=per_seed_agreement, seed_to_seed=seed_to_seed,
        axes=axes, top_k={k: top_k_overlap(proxy, target, k) for k in TOP_K if k <= len(rows)},
        cpu_s_per_candidate=cost, cpu_s_total=cost * len(everything),
        missing=missing, measured=measured, signals=signals,
        default_signal=choose_default(signals, rank_by_choices(measured)), rung=rung,
        base_protocol_key=protocol_key(base_protocol or protocol), headline_gap=headline_gap(rows))



def evaluate_signals(rows: Sequence[Mapping[str, Any]], measured: str, seeds: Sequence[str],
                     zero_cost: Mapping[str, Mapping[str, ZeroCostScore]], measured_cpu_s: float,
                     n_resamples: int = 10_000) -> dict[str, Evaluation]:
    """Every signal of the rows (`row["signals"]`), the measured one with its first seed (what a
    search trains) and with the mean of the seeds, and its combinations with the parameter
    count, out of sample (`ranking.signals`)."""
    mean_name = f"{measured}, mean of {len(seeds)} seeds"
    derived = {*combined_signals(measured), mean_name}  # rows of an audit.json hold them too: computed again here
    names = list(dict.fromkeys(name for row in rows for name in row["signals"] if name not in derived))
    columns = {name: [row["signals"].get(name) for row in rows] for name in names}
    cpu_s: dict[str, float | None] = {"params": 0.0, "flops": 0.0, measured: measured_cpu_s}
    for name in ZERO_COST:
        spent = [score[name].cpu_s for score in zero_cost.values() if name in score]
        cpu_s[name] = statistics.fmean(spent) if spent else None
    if len(seeds) > 1:
        columns[mean_name] = [row["proxy_mean"] for row in rows]
        cpu_s[mean_name] = measured_cpu_s * len(seeds)
    return evaluate_all(columns, [row["target"] for row in rows], [row["source"] for row in rows], cpu_s,
                        measured=[measured], n_resamples=n_resamples)


# --- reports ---------------------------------------------------------------------------------------

def write_audit(result: AuditResult, folder: Path) -> Path:
    """audit.json, audit.md and audit.png under `folder`; returns the markdown file."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "audit.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    _scatter(result, folder / "audit.png")
    path = folder / "audit.md"
    path.write_text(audit_markdown(result))
    return path


def _interval(a: Agreement) -> str:
    return f"{a.kendall_tau_b:.2f} [{a.kendall_interval[0]:.2f}, {a.kendall_interval[1]:.2f}]"


def audit_markdown(result: AuditResult) -> str:
    p = result.protocol
    a = result.agreement
    lines = [f"# Audit `{result.study}`: proxy vs {result.references['name']}", "",
             f"- target: {result.references['target'] or '(not stated)'}; {len(result.rows)} of "
             f"{result.references['n']} reference designs scored"
             + (f" (missing: {', '.join(result.missing)})" if result.missing else ""),
             f"- proxy protocol `{result.protocol_key}`: {p['dataset']}, {p['train_size']} train / {p['val_size']} "
             f"val images at {p['img_size']}x{p['img_size']}, patch {p['patch_size']}, width x{p['width_mult']}, "
             f"{p['epochs']} epochs of batch {p['batch_size']}, lr {p['lr']:g}, warm-up {p['warmup_epochs']:g} "
             f"epochs, augmentation {'on' if p['augment'] else 'off'}",
             f"- precision: {describe_precision(result.precision)}",
             *([f"- rung {result.rung} of the protocol `{result.base_protocol_key}`: {result.rung}x its optimizer "
                f"steps (`python -m audit --rungs`)"] if result.rung != 1 else []),
             *([f"- LocalViT-T ahead of DeiT-T by {gap['proxy']:.2f} points here, {gap['target']:.1f} in the target"]
               if (gap := result.headline_gap) and gap.get("proxy") is not None else []),
             f"- seeds: {', '.join(result.seeds)} (the proxy score of a design is the mean over them)", "",
             "| | Kendall tau-b [95% interval] | Spearman [95% interval] |", "|---|---|---|",
             f"| **proxy vs target** | **{_interval(a)}** | {a.spearman:.2f} [{a.spearman_interval[0]:.2f}, "
             f"{a.spearman_interval[1]:.2f}] |"]
    for seed, s in result.per_seed.items():
        lines.append(f"| seed {seed} alone vs target | {_interval(s)} | {s.spearman:.2f} |")
    if result.seed_to_seed:
        c = result.seed_to_seed
        lines.append(f"| seed {result.seeds[0]} vs seed {result.seeds[1]} (the ceiling) | {_interval(c)} | "
                     f"{c.spearman:.2f} |")
    else:
        lines.append("| seed-to-seed ceiling | not measured (one seed) | |")
    if result.signals:
        lines += ["", "Every signal beside the free baselines (out of sample; the "
                  f"{result.measured} with seed {result.seeds[0]}, what a search trains):", "",
                  *signals_table(result.signals), "",
                  describe_choice(result.signals, result.default_signal, result.measured) + "."]
    lines += ["", "Pairs of designs that differ along one axis only, ordered as the target orders them:", "",
              "| axis | pairs | ordered as the target | share |", "|---|---|---|---|"]
    for axis, entry in result.axes.items():
        lines.append(f"| {axis} | {entry['pairs']} | {entry['agreed']:g} | {entry['share']:.0%} |")
    lines += ["", "Top-k overlap (share of the target's k best among the proxy's k best): "
              + ", ".join(f"k={k}: {v:.0%}" for k, v in result.top_k.items()), "",
              f"Cost: {result.cpu_s_per_candidate / 60:.1f} CPU-minutes per candidate (mean), "
              f"{result.cpu_s_total / 60:.0f} CPU-minutes in all.", "",
              "| design | target | " + " | ".join(f"proxy seed {s}" for s in result.seeds) + " | proxy mean |",
              "|---|---|" + "---|" * (len(result.seeds) + 1)]
    for row in sorted(result.rows, key=lambda r: -r["target"]):
        values = " | ".join(f"{row['proxy'][s]:.2f}" if s in row["proxy"] else "-" for s in result.seeds)
        lines.append(f"| {row['name']} | {row['target']:g} | {values} | {row['proxy_mean']:.2f} |")
    wrong = [(axis, pair) for axis, entry in result.axes.items() for pair in entry["disagreed"]]
    if wrong:
        lines += ["", "Pairs the proxy orders against the target:", ""]
        lines += [f"- {axis}: {pair}" for axis, pair in wrong]
    lines += ["", "Files: `audit.json`, `audit.png` (proxy vs target, points labelled).", ""]
    return "\n".join(lines)


def _scatter(result: AuditResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 6))
    xs = [r["proxy_mean"] for r in result.rows]
    ys = [r["target"] for r in result.rows]
    ax.scatter(xs, ys, s=28, color="tab:blue", zorder=3)
    for r, x, y in zip(result.rows, xs, ys):
        ax.annotate(r["name"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(f"proxy top-1 (%), mean of seeds {', '.join(result.seeds)}")
    ax.set_ylabel(f"target: {result.references['target'] or result.references['name']}")
    ax.set_title(f"{result.study}: Kendall tau-b {_interval(result.agreement)}", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


__all__ = ["AXES", "AuditResult", "ProxyScore", "audit_markdown", "pair_axis", "score_audit", "scores_from_rows",
           "write_audit"]
