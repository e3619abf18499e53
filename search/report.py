"""Reports of a study: a pandas table, a Pareto plot, a per-layer picture, a summary, exports.

"Best" and the Pareto front are taken among feasible trials trained to the full proxy
budget only (`search.selection.ranked_candidates`, the same selection the exports use); trials
stopped early by ASHA carry their low-epoch accuracy and are counted apart.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from localvit.spec import ArchSpec
from ranking.audits import audit_for, describe_audit, ranking_audit, supernet_imagenet_audit
from ranking.ladder import describe_ladder
from ranking.signals import FREE, combinations

from .export import export_trials
from .rank_by import RankBy, ladder_of, measured_value, of_study, ranked, reference_set, values
from .selection import pareto_front, ranked_candidates
from .settings import ONESHOT, SUPERNET, TRAIN, SearchSettings


@dataclass(frozen=True)
class Standing:
    """A study's designs trained to the full proxy budget as its ranking (`--rank-by`) orders
    them, read once for all of its reports."""

    rank_by: RankBy
    candidates: list[FrozenTrial]  # the searched designs, best first (ties: fewer FLOPs)
    population: list[FrozenTrial]  # the same with the baselines

    @classmethod
    def of(cls, study: optuna.Study) -> Standing:
        rank_by = of_study(study)
        return cls(rank_by, ranked_candidates(study, rank_by=rank_by),
                   ranked_candidates(study, include_baselines=True, rank_by=rank_by))

    @property
    def best(self) -> FrozenTrial | None:
        """The best searched trial (baselines excluded)."""
        return self.candidates[0] if self.candidates else None

    @property
    def baselines(self) -> dict[str, FrozenTrial]:
        """The baselines, by name."""
        return {t.user_attrs["baseline"]: t for t in self.population if t.user_attrs.get("baseline")}


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial, the spec's fields flattened (`l03.ffn`, ...)."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        status = a.get("status", "interrupted" if t.state == TrialState.FAIL else t.state.name.lower())
        feasible = status != "infeasible"
        row: dict[str, Any] = {
            "trial": t.number, "state": t.state.name, "status": status, "baseline": a.get("baseline", ""),
            "spec_id": a.get("spec_id", ""),
            "accuracy": t.values[0] if t.values and status == TRAIN else None,
            "full_fidelity": a.get("full_fidelity", False), "epochs_trained": a.get("epochs_trained"),
            "gflops": a["flops"] / 1e9 if "flops" in a else None,
            "mparams": a["params"] / 1e6 if "params" in a else None,
            "feasible": feasible, "constraints": t.system_attrs.get("constraints"),
            "throughput": a.get("throughput"), "wall_time_s": a.get("wall_time_s"),
            "train_images_per_s": a.get("train_images_per_s"), "duplicate_of": a.get("duplicate_of"),
            "failure": a.get("failure", ""), "retries": len(a.get("retries", [])),
            "retry_reasons": "; ".join(a.get("retries", [])), "node_ip": a.get("node_ip", ""),
            "device": a.get("device", ""), "val_acc_curve": a.get("val_acc_curve"),
            "fidelity": a.get("fidelity", ""),
            "supernet_accuracy": t.values[0] if t.values and status == SUPERNET else a.get("supernet_accuracy"),
            "oneshot_rank": a.get("oneshot_rank"),
        }
        if "spec" in a:
            spec = ArchSpec.from_json(a["spec"])
            row.update({"embed_dim": spec.embed_dim, "num_heads": spec.num_heads, "depth": spec.depth})
            for i, layer in enumerate(spec.layers):
                for key, value in layer.to_dict().items():
                    row[f"l{i:02d}.{key}"] = value
            row["spec"] = a["spec"]
        rows.append(row)
    return pd.DataFrame(rows)


def _shown(value: float, signal: str) -> float:
    return value / 1e6 if signal == "params" else value / 1e9 if signal == "flops" else value


def plot_pareto(study: optuna.Study, standing: Standing, path: Path, budget_flops: int | None) -> None:
    """Every candidate trained in full by FLOPs and the ranking signal (`--rank-by`), its front
    and the baselines; trials ASHA stopped are shown where the signal needs no population."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rank_by, full, baselines = standing.rank_by, standing.candidates, standing.baselines
    fig, ax = plt.subplots(figsize=(8.5, 4.5))
    population = full + [t for t in baselines.values() if t not in full]
    score = {t.number: _shown(v, rank_by.signal) for t, v in zip(population, values(population, rank_by))}
    if rank_by.signal in (rank_by.measured, "params", "flops"):
        early = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE
                 and t.user_attrs.get("status") == TRAIN and not t.user_attrs.get("full_fidelity")]
        ax.scatter([t.user_attrs["flops"] / 1e9 for t in early],
                   [_shown(v, rank_by.signal) for v in values(early, rank_by)], s=14, c="0.75",
                   label=f"stopped early ({len(early)})")
    ax.scatter([t.user_attrs["flops"] / 1e9 for t in full], [score[t.number] for t in full], s=22, c="tab:blue",
               label=f"searched ({len(full)})")
    front = pareto_front(full, rank_by)
    ax.plot([t.user_attrs["flops"] / 1e9 for t in front], [score[t.number] for t in front], "-", c="tab:blue", lw=1)
    for (name, t), marker, colour in zip(baselines.items(), ("*", "D"), ("tab:orange", "tab:green")):
        ax.scatter([t.user_attrs["flops"] / 1e9], [score[t.number]], marker=marker, s=140, c=colour, edgecolors="k",
                   label=f"{name} baseline", zorder=3)
    if budget_flops:
        ax.axvline(budget_flops / 1e9, ls="--", c="tab:red", lw=1, label="FLOP budget")
    ax.set_xlabel("GFLOPs at 224x224 (multiply-adds)")
    ax.set_ylabel({"params": "parameters (M)"}.get(rank_by.signal, rank_by.label))
    ax.set_title(f"{study.study_name}: {rank_by.signal} vs FLOPs (the ranking, --rank-by)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


_FFN_CODE = {"mlp": 0, "conv": 1, "local": 2}


def plot_layers(trials: list[tuple[str, FrozenTrial]], path: Path) -> None:
    """Per-layer picture: one row per architecture, one cell per block, coloured by FFN type,
    annotated with gamma, activation and channel attention."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    specs = [(label, ArchSpec.from_json(t.user_attrs["spec"])) for label, t in trials]
    if not specs:
        return
    depth = max(spec.depth for _, spec in specs)
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * depth, 0.8 + 0.62 * len(specs)))
    grid = [[_FFN_CODE[layer.ffn] for layer in spec.layers] + [float("nan")] * (depth - spec.depth)
            for _, spec in specs]
    cmap = ListedColormap(["#d9d9d9", "#9ecae1", "#3182bd"])
    ax.imshow(grid, cmap=cmap, vmin=0, vmax=2, aspect="auto")
    for r, (_, spec) in enumerate(specs):
        for c, layer in enumerate(spec.layers):
            attn = {"none": "", "se": f"SE{layer.se_ratio}", "eca": "ECA"}[layer.attn]
            assert layer.act is not None  # LayerSpec resolves the default
            act = {"relu6": "R6", "hswish": "HS", "gelu": "GE"}[layer.act]
            text = f"{layer.gamma:g}\n{act}" + (f"\n{attn}" if attn else "") + (f"\nk{layer.kernel}" if layer.kernel
                                                                                  not in (None, 3) else "")
            ax.text(c, r, text, ha="center", va="center", fontsize=6.5,
                    color="white" if layer.ffn == "local" else "black")
    ax.set_yticks(range(len(specs)), [label for label, _ in specs], fontsize=8)
    ax.set_xticks(range(depth), [str(i + 1) for i in range(depth)], fontsize=8)
    ax.set_xlabel("block (grey: DeiT MLP, light: 1x1-conv FFN, dark: locality FFN; gamma, activation, "
                  "channel attention)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_reports(study: optuna.Study, settings: SearchSettings, stopped: str | None = None) -> Path:
    """trials.csv, pareto.png, layers.png, summary.md and the exports; returns summary.md.
    `stopped` names the signal that cut the search short: the summary is then marked partial."""
    out = settings.study_dir
    out.mkdir(parents=True, exist_ok=True)
    frame = trials_frame(study)
    frame.to_csv(out / "trials.csv", index=False)
    standing = Standing.of(study)
    plot_pareto(study, standing, out / "pareto.png", settings.budget.max_flops)
    top = standing.candidates[:settings.export_top]
    layer_rows = [(f"best (#{t.number})" if t is standing.best else f"#{t.number}", t) for t in top]
    layer_rows += [(f"{name} (#{t.number})", t) for name, t in standing.baselines.items()]
    plot_layers(layer_rows, out / "layers.png")
    front = pareto_front(standing.candidates, standing.rank_by)
    exported = export_trials(study, top + [t for t in front if t not in top], settings.study_dir.parent) if top else []
    summary = out / "summary.md"
    text = summary_markdown(study, standing, settings, frame, exported)
    if stopped:
        title, _, rest = text.partition("\n")
        text = (f"{title}\n\n**Partial:** the search was stopped by {stopped} at {time.strftime('%Y-%m-%d %H:%M')}; "
                f"what follows is what had finished. Run the same command to resume it.\n{rest}")
    summary.write_text(text)
    return summary


def _row(label: str, t: FrozenTrial) -> str:
    a = t.user_attrs
    return (f"| {label} | {t.number} | {a['spec_id']} | {t.values[0]:.2f} | {a['flops'] / 1e9:.3f} | "
            f"{a['params'] / 1e6:.2f} | {a.get('wall_time_s', 0):.0f} |")


def _decided(rank_by: RankBy) -> str:
    """Which rung decided the finalists' order, in plain words (none when a free count ranked them)."""
    if rank_by.signal in FREE:
        return f"no rung decided: {rank_by.signal} ranked the finalists, which costs no training"
    return (f"rung {rank_by.rung} decided: {rank_by.signal} ranked the finalists there"
            + (f" ({len(rank_by.promoted)} of them trained there again)" if rank_by.promoted else ""))


def _precision(study: optuna.Study) -> str:
    """What `precision` resolved to, and whether a resume on another machine changed it."""
    first = study.user_attrs.get("precision")
    if not first:
        return "precision not recorded"
    text = f"precision {first['requested']} resolved to {first['resolved']} ({first['cpu']})"
    for change in study.user_attrs.get("precision_changed", []):
        text += f", then to {change['resolved']} on a resume ({change['cpu']}): trials are not all comparable"
    return text


def summary_markdown(study: optuna.Study, standing: Standing, settings: SearchSettings, frame: pd.DataFrame,
                     exported: list[Path]) -> str:
    best, baselines, rank_by = standing.best, standing.baselines, standing.rank_by
    references = reference_set(settings)
    counts = frame["status"].value_counts().to_dict() if len(frame) else {}
    trained = frame[frame["status"] == TRAIN] if len(frame) else frame
    stopped = int(((trained["state"] == "COMPLETE") & ~trained["full_fidelity"].astype(bool)).sum()) if len(frame) \
        else 0
    failed = int((trained["state"] == "FAIL").sum()) if len(frame) else 0
    retries: pd.Series = frame["retries"] if len(frame) else pd.Series([], dtype=int)
    audit = audit_for(settings.protocol, settings.study_dir.parent, references.key if references else None)
    lines = [f"# Search `{study.study_name}`", "",
             f"- budget: {settings.budget.describe()}; space `{settings.space}` on `{settings.backbone}`; "
             f"sampler `{settings.sampler}`; objectives {', '.join(settings.objectives)}",
             f"- proxy: {settings.protocol.dataset}, {settings.protocol.train_size} train / "
             f"{settings.protocol.val_size} val images at {settings.protocol.img_size}x{settings.protocol.img_size}"
             + (f", patch {settings.protocol.patch_size}, width x{settings.protocol.width_mult}"
                if settings.backbone.startswith("deit") else "")
             + f", {settings.protocol.epochs} epochs, seed {settings.protocol.seed}; {_precision(study)}"
             + (f"; {skipped} unreadable image(s) skipped" if (skipped := study.user_attrs.get("proxy_data", {})
                                                                 .get("skipped")) else ""),
             f"- ranking signal: {rank_by.why}",
             f"- the proxy's audit: "
             f"{describe_audit(audit)}",
             *([f"- the fidelity ladder (`--max-rung`, docs/audit.md): {describe_ladder(ladder_of(settings))}; "
                f"{_decided(rank_by)}"]
               if settings.strategy != ONESHOT and references is not None else []),
             f"- trials: {len(trained)} trained ({stopped} stopped early by ASHA, {failed} failed), "
             f"{counts.get('infeasible', 0)} infeasible (never trained), {counts.get('duplicate', 0)} duplicates, "
             f"{counts.get('interrupted', 0)} interrupted and re-queued"
             + (f" ({counts['requeued']} waiting trials queued again behind them)" if counts.get("requeued") else ""),
             f"- infrastructure: {int((retries > 0).sum())} trial(s) retried after losing their node or worker "
             f"({int(retries.sum())} retries), {counts.get('lost', 0)} lost with every retry spent and queued again"
             + "".join(f"\n  - trial {row.trial}: {row.retry_reasons}" for row in frame.itertuples() if row.retries),
             f"- best and Pareto front: among feasible trials trained for all proxy epochs, by "
             f"{rank_by.signal}", "",
             "| | trial | spec id | proxy top-1 (%) | GFLOPs (224) | params (M) | train s |",
             "|---|---|---|---|---|---|---|"]
    if best is not None:
        origin = best.user_attrs.get("warm_start")
        lines.append(_row("**best found**" + (f" (the paper's {origin}, a warm start)" if origin else ""), best))
    for name, t in baselines.items():
        lines.append(_row(f"{name} baseline", t))
    if best is not None and baselines:
        lines += [""] + [f"Best found vs {name} on the proxy: {best.values[0] - t.values[0]:+.2f} points"
                         for name, t in baselines.items()]
    if best is not None:
        lines += signals_markdown(standing)
    promotion = study.user_attrs.get("promotion")
    if promotion:
        lines += ["", f"Trained again at rung {promotion['rung']} ({promotion['rung']}x the proxy's steps, protocol "
                  f"`{promotion['protocol_key']}`), the best {promotion['finalists']} by the proxy at rung 1"
                  + (", ranked there" if rank_by.rung == promotion["rung"] else
                     ", not ranked there (its audit does not beat counting, or --rank-by says otherwise)") + ":", "",
                  f"| | trial | proxy top-1 at rung 1 (%) | at rung {promotion['rung']} (%) |", "|---|---|---|---|"]
        by_number = {str(t.number): t for t in standing.population}
        for number, value in sorted(promotion["values"].items(), key=lambda kv: -kv[1]):
            finalist = by_number.get(number)
            lines.append(f"| | {number} | {finalist.values[0]:.2f} | {value:.2f} |" if finalist
                         else f"| | {number} | - | {value:.2f} |")
        for name, value in promotion["baselines"].items():
            baseline = baselines.get(name)
            lines.append(f"| {name} baseline | {baseline.number if baseline else '-'} | "
                         f"{baseline.values[0] if baseline else float('nan'):.2f} | "
                         f"{'-' if value is None else f'{value:.2f}'} |")
    confirmation = study.user_attrs.get("confirmation")
    if confirmation:
        lines += ["", "Re-trained with other seeds (same protocol):", "",
                  "| | " + " | ".join(f"seed {s}" for s in next(iter(confirmation.values()))["seeds"]) + " | mean |",
                  "|---|" + "---|" * (len(next(iter(confirmation.values()))["seeds"]) + 1)]
        for name, entry in confirmation.items():
            values = " | ".join("-" if v is None else f"{v:.2f}" for v in entry["seeds"].values())
            mean = "-" if entry["mean"] is None else f"{entry['mean']:.2f}"
            lines.append(f"| {name} (trial {entry['trial']}) | {values} | {mean} |")
    if settings.strategy == ONESHOT:
        lines += oneshot_markdown(study, settings)
    lines += ["", "Files: `trials.csv`, `pareto.png`, `layers.png`" + (", exports:" if exported else "")]
    lines += [f"- `{path.relative_to(settings.study_dir)}`: `python -m imagenet.train --config "
              f"{path / 'train.yaml'} --data-dir /path/to/imagenet`" for path in exported]
    lines += ["", f"Inspect: `optuna-dashboard {settings.storage_url}`", ""]
    return "\n".join(lines)


def signals_markdown(standing: Standing) -> list[str]:
    """The best design and the baselines by every signal the search can rank by, side by side: the
    measured value, the costs, and each combination's rank among the candidates (each with the
    weight its audit fitted, as `--rank-by` would rank)."""
    rank_by, population = standing.rank_by, standing.population
    assert standing.best is not None, "summary_markdown shows signals when a design trained in full"
    shown = [("best", standing.best)] + list(standing.baselines.items())
    combos = list(combinations(rank_by.measured))
    lines = ["", f"Every signal the search can rank by (`--rank-by`; now: {rank_by.signal}), for the best and the "
             f"baselines; a combination's rank is among the {len(population)} candidates trained in full:", "",
             f"| | {rank_by.measured} | params (M) | GFLOPs | " + " | ".join(f"{c} (rank)" for c in combos) + " |",
             "|---|---|---|---|" + "---|" * len(combos)]
    ranks = {}
    for combo in combos:
        order = ranked(population, rank_by.by(combo))
        ranks[combo] = {t.number: k + 1 for k, t in enumerate(order)}
    for label, t in shown:
        measured = measured_value(t, rank_by.measured)
        cells = " | ".join(str(ranks[c].get(t.number, "-")) for c in combos)
        lines.append(f"| {label} (trial {t.number}) | {'-' if measured is None else f'{measured:.2f}'} | "
                     f"{t.user_attrs['params'] / 1e6:.2f} | {t.user_attrs['flops'] / 1e9:.3f} | {cells} |")
    return lines


def _on(record: dict[str, Any]) -> str:
    """" on <device>" where a record names one (records before the GPU path name none)."""
    return f" on {record['device']}" if record.get("device") else ""


def oneshot_markdown(study: optuna.Study, settings: SearchSettings) -> list[str]:
    """The one-shot part of the summary: the supernet, the scoring, the top-k trained from scratch."""
    supernet = study.user_attrs.get("supernet")
    scoring = study.user_attrs.get("oneshot_scoring", {})
    lines = ["", "One-shot (`--strategy oneshot`):", ""]
    if supernet:
        lines.append(f"- supernet `{supernet['key']}`: {supernet['epochs']} proxy epochs, {supernet['train_s']:.0f} s "
                     f"of training{_on(supernet)} (`{supernet['path']}`)")
    if scoring:
        lines.append(f"- {scoring['scored']} candidates scored with inherited weights ({scoring['per_s']:.2f} per s "
                     f"in the last run{_on(scoring)}), {scoring.get('skipped_infeasible', 0)} over the budget closed "
                     f"unscored")
    lines.append(f"- the ranking rests on: {ranking_audit(supernet, settings.scoring_fidelity)}")
    imagenet = supernet_imagenet_audit(supernet)
    if imagenet:
        lines.append(f"- the supernet's scores against ImageNet: {imagenet}")
    finalists = sorted((t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("oneshot_rank")
                        and t.user_attrs.get("status") == TRAIN and t.state == TrialState.COMPLETE),
                       key=lambda t: t.user_attrs["oneshot_rank"])
    if finalists:
        lines += ["", "| supernet rank | trial | spec id | supernet top-1 (%) | proxy-trained top-1 (%) |",
                  "|---|---|---|---|---|"]
        lines += [f"| {t.user_attrs['oneshot_rank']} | {t.number} | {t.user_attrs['spec_id']} | "
                  f"{t.user_attrs['supernet_accuracy']:.2f} | {t.values[0]:.2f} |" for t in finalists]
    return lines


__all__ = ["Standing", "trials_frame", "write_reports"]
