"""Ranking fidelity: how far a proxy protocol ranks designs as the target setting (ImageNet) does.

    python -m search.audit                                   # the paper's 18 ImageNet designs, seeds 0 and 1
    python -m search.audit --epochs 6 --train-size 8000      # any proxy option of run_search.py
    python -m search.audit --references mine.yaml --dataset imagefolder --data-dir /data/imagenet-100
    python -m search.audit --from-study A --from-study B     # score studies that trained the designs already

The reference designs (`space.references`: a file of specs with their target accuracy) are
proxy-trained with the protocol through the search's own machinery (a grid over the designs,
Ray Tune trials, one Optuna study per seed in the audit's SQLite file, so an audit resumes
after a kill and shows in optuna-dashboard), or read from existing studies. The report says
how well the proxy ranks them as the target does (Kendall tau-b and Spearman with bootstrap
intervals), which pairs along each design axis it orders rightly, how many of the target's
best it keeps on top, how well the proxy agrees with itself across seeds (the ceiling of any
agreement with the target) and what a candidate costs. It writes `audit.md`, `audit.json`
and `audit.png` under `results/<study>/`; a search whose protocol was audited names the audit
in its summary (`audit_for`).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any, Mapping, Sequence

import optuna
from optuna.trial import TrialState

from localvit.cli import OneLineErrors, usage_errors
from localvit.spec import ArchSpec, LayerSpec
from space.references import PAPER_IMAGENET, ReferenceSet, load_references

from .options import add_compute_options, add_proxy_options, compute_from_args, protocol_from_args
from .proxy import ProxyProtocol, precision_record
from .ranking import Agreement, agreement, pair_agreement, top_k_overlap
from .settings import TRAIN, SearchSettings
from .storage import without_password

AXES = ("ffn type", "placement", "activation", "channel attention", "gamma", "kernel", "heads")
"""Design axes a pair of designs can differ along alone (see `pair_axis`)."""
TOP_K = (1, 3, 5)
#: Audits measured by the project (bench/protocol_study.py), read by `audit_for` beside the user's own.
SHIPPED_AUDITS = Path(__file__).resolve().parent / "audited_protocols.json"
#: Protocol fields that do not change what a proxy measures (which seed, how fast, where the files are).
_NOT_PROTOCOL = ("seed", "threads", "eval_batch_size", "data_dir", "compile", "channels_last")


def protocol_key(protocol: ProxyProtocol) -> str:
    """A short hash of what a protocol measures; seeds, threads and paths left out."""
    data = {k: v for k, v in protocol.to_dict().items() if k not in _NOT_PROTOCOL}
    return hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest()[:10]


# --- design axes ---------------------------------------------------------------------------------

def _se_channels(layer: LayerSpec, dim: int) -> int | None:
    return layer.hidden_dim(dim) // layer.se_ratio if layer.attn == "se" else None


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


def read_scores(study: optuna.Study) -> dict[str, ProxyScore]:
    """Proxy results by target spec id: trials trained for all epochs (the first one of a design)."""
    scores: dict[str, ProxyScore] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        attrs = t.user_attrs
        if attrs.get("status") != TRAIN or not attrs.get("full_fidelity") or attrs.get("spec_id") in scores:
            continue
        scores[attrs["spec_id"]] = ProxyScore(
            accuracy=float(t.values[0]),
            cpu_time_s=float(attrs["cpu_time_s"]) if attrs.get("cpu_time_s") else None,
            wall_time_s=float(attrs.get("wall_time_s") or 0), precision=attrs.get("precision"))
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
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M"))

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
                "missing": self.missing, "created": self.created}


def _portable(path: str) -> str:
    """A reference file's path as an audit records it: relative to the project when the file ships
    with it, so that shipped audits name no folder of the machine they were made on."""
    try:
        return str(Path(path).resolve().relative_to(Path(__file__).resolve().parents[1]))
    except ValueError:
        return path


def score_audit(references: ReferenceSet, scores_by_seed: Mapping[str, Mapping[str, ProxyScore]], *,
                study: str, protocol: ProxyProtocol, precision: Mapping[str, Any] | None = None,
                confidence: float = 0.95, n_resamples: int = 10_000) -> AuditResult:
    """Compare the proxy's scores (by seed, then spec id) with the reference accuracies.

    The proxy's score of a design is the mean over the seeds that trained it; designs that no
    seed trained are listed as missing and left out.
    """
    seeds = list(scores_by_seed)
    rows, proxy, target, specs = [], [], [], []
    missing = []
    for ref in references.rows:
        per_seed = {s: scores_by_seed[s][ref.spec.id] for s in seeds if ref.spec.id in scores_by_seed[s]}
        if not per_seed:
            missing.append(ref.name)
            continue
        mean = statistics.fmean(p.accuracy for p in per_seed.values())
        rows.append({"name": ref.name, "spec_id": ref.spec.id, "target": ref.accuracy, "source": dict(ref.source),
                     "proxy": {s: p.accuracy for s, p in per_seed.items()}, "proxy_mean": mean,
                     "cpu_s": _cost(list(per_seed.values()))})
        proxy.append(mean)
        target.append(ref.accuracy)
        specs.append(ref.spec)
    if len(rows) < 3:
        raise ValueError(f"{len(rows)} of the {len(references.rows)} reference designs have a proxy result; "
                         f"accepted: at least 3 (missing: {', '.join(missing[:5])})")
    kwargs = {"confidence": confidence, "n_resamples": n_resamples}
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
    return AuditResult(
        study=study, references={"name": references.name, "target": references.target,
                                 "path": _portable(references.path), "n": len(references.rows)},
        protocol=protocol.to_dict(), protocol_key=protocol_key(protocol),
        precision=dict(precision or precision_record(protocol.precision)), seeds=seeds, rows=rows,
        agreement=agreement(proxy, target, **kwargs), per_seed=per_seed_agreement, seed_to_seed=seed_to_seed,
        axes=axes, top_k={k: top_k_overlap(proxy, target, k) for k in TOP_K if k <= len(rows)},
        cpu_s_per_candidate=_cost(everything), cpu_s_total=_cost(everything) * len(everything),
        missing=missing)


# --- running ---------------------------------------------------------------------------------------

def seed_settings(study: str, references: ReferenceSet, protocol: ProxyProtocol, seed: int, results_dir: str,
                  storage: str | None, backbone: str, compute: Mapping[str, Any]) -> SearchSettings:
    """A grid search over the reference designs with one seed: a study of its own in the audit's storage."""
    folder = Path(results_dir).resolve() / study
    return SearchSettings(
        study=f"{study}-s{seed}", results_dir=str(folder), storage=storage or f"sqlite:///{folder / 'study.db'}",
        space=references.path, backbone=backbone, sampler="grid", trials=len(references.rows), **compute,
        protocol=protocol.replace(seed=seed), asha=False, baselines=False, warm_start=0, seed=seed,
        confirm_seeds=0, export_top=0)


def plan_references(references: ReferenceSet, protocol: ProxyProtocol, seeds: Sequence[int], study: str,
                    results_dir: str, storage: str | None = None, backbone: str = "deit_tiny",
                    compute: Mapping[str, Any] | None = None) -> list[tuple[SearchSettings, Any, Any]]:
    """Check and open one study per seed and the Ray to train them on (every check bad input can
    fail, before any training)."""
    from .driver import connect, prepare

    plans = []
    for seed in seeds:
        settings = seed_settings(study, references, protocol, seed, results_dir, storage, backbone, compute or {})
        plan = prepare(settings)
        plans.append((settings, plan, connect(settings, plan)))
    return plans


def train_references(plans: Sequence[tuple[SearchSettings, Any, Any]]) -> dict[str, dict[str, ProxyScore]]:
    """Proxy-train every reference design with each seed (resuming what a study holds already)."""
    from .driver import log, train_trials

    scores = {}
    for settings, plan, cluster in plans:
        log(f"audit: study {settings.study!r}, {plan.space.size()} reference designs, seed {settings.seed}")
        train_trials(settings, plan, cluster)
        scores[str(settings.seed)] = read_scores(plan.study)
    return scores


def read_studies(names: Sequence[str], storage: str) -> tuple[ProxyProtocol, dict[str, Any],
                                                               dict[str, dict[str, ProxyScore]]]:
    """The protocol, its precision record and the scores of existing studies that trained the
    designs (any search), by seed; the studies must share one protocol up to the seed."""
    from .driver import open_storage

    opened = open_storage(storage)
    held = {s.study_name for s in opened.get_all_studies()}
    protocols, precision, scores = {}, {}, {}
    for name in names:
        if name not in held:
            raise ValueError(f"study {name!r} is not in {storage}; accepted: one of {', '.join(sorted(held)) or '(none)'}")
        study = optuna.load_study(study_name=name, storage=opened)
        if "proxy_protocol" not in study.user_attrs:
            raise ValueError(f"study {name!r} holds no proxy protocol; accepted: a study made by run_search.py or "
                             f"search.audit")
        protocol = ProxyProtocol.from_dict(study.user_attrs["proxy_protocol"])
        protocols[name] = protocol
        if "resolved" not in precision:  # the first study that recorded what `auto` resolved to
            precision = study.user_attrs.get("precision", {"requested": protocol.precision})
        scores[str(protocol.seed) if str(protocol.seed) not in scores else name] = read_scores(study)
    keys = {protocol_key(p) for p in protocols.values()}
    if len(keys) > 1:
        raise ValueError(f"studies {', '.join(names)} were trained with different proxy protocols; accepted: "
                         f"studies of one protocol (seeds may differ)")
    return next(iter(protocols.values())), precision, scores


# --- reports ---------------------------------------------------------------------------------------

def write_audit(result: AuditResult, folder: Path) -> Path:
    """audit.json, audit.md and audit.png under `folder`; returns the markdown file."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "audit.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    _scatter(result, folder / "audit.png")
    path = folder / "audit.md"
    path.write_text(audit_markdown(result))
    return path


def _describe_precision(record: Mapping[str, Any]) -> str:
    if not record.get("resolved"):
        return f"{record.get('requested', '?')} (what it resolved to was not recorded)"
    return f"{record['requested']} resolved to {record['resolved']} ({record.get('cpu', '?')})"


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
             f"- precision: {_describe_precision(result.precision)}",
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


def audit_for(protocol: ProxyProtocol, results_dir: str | Path | None = None) -> dict[str, Any] | None:
    """The audit of this protocol, if any: the user's own under `results_dir` (newest first),
    else one the project measured (`audited_protocols.json`)."""
    key = protocol_key(protocol)
    found = []
    if results_dir and Path(results_dir).is_dir():
        for path in Path(results_dir).glob("*/audit.json"):
            try:
                data = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if data.get("protocol_key") == key:
                found.append((path.stat().st_mtime, {**data, "file": str(path)}))
    if found:
        return max(found, key=lambda item: item[0])[1]
    shipped = json.loads(SHIPPED_AUDITS.read_text()) if SHIPPED_AUDITS.is_file() else {}
    return shipped.get(key)


def describe_audit(audit: Mapping[str, Any] | None) -> str:
    """One line for a search summary: what the ranking of this protocol rests on."""
    if not audit:
        return ("not audited: no audit of this proxy protocol; `python -m search.audit` with the same proxy "
                "options measures how well it ranks designs as ImageNet does")
    a, c = audit["agreement"], audit.get("seed_to_seed")
    text = (f"audited on {audit['references']['name']} ({len(audit['rows'])} designs, {audit['references']['target']})"
            f": Kendall tau-b {a['kendall_tau_b']:.2f} [{a['kendall_interval'][0]:.2f}, {a['kendall_interval'][1]:.2f}]"
            + (f" with the mean of seeds {', '.join(audit['seeds'])}" if len(audit["seeds"]) > 1
               else f" with seed {audit['seeds'][0]}"))
    if len(audit["seeds"]) > 1 and audit.get("per_seed"):  # a search trains each candidate with one seed
        single = [a["kendall_tau_b"] for a in audit["per_seed"].values()]
        text += f" ({', '.join(f'{t:.2f}' for t in single)} with one seed)"
    if c:
        text += f"; seed-to-seed {c['kendall_tau_b']:.2f} [{c['kendall_interval'][0]:.2f}, {c['kendall_interval'][1]:.2f}]"
    return text + f" (precision {_describe_precision(audit['precision'])}, {audit['created']})"


# --- command line ----------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrors(prog="python -m search.audit", description=__doc__.split("\n\n")[0],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    g = parser.add_argument_group("audit")
    g.add_argument("--references", default=str(PAPER_IMAGENET),
                   help="reference file: designs with their target accuracy (default: the paper's ImageNet "
                        "Tables I, II and IV)")
    g.add_argument("--backbone", default="deit_tiny", help="backbone of the reference designs (default: deit_tiny)")
    g.add_argument("--seeds", type=int, nargs="+", default=[0, 1],
                   help="proxy seeds; two or more also measure the seed-to-seed ceiling (default: 0 1)")
    g.add_argument("--from-study", action="append", metavar="NAME",
                   help="score an existing study (repeat for seeds; its proxy protocol is used) instead of "
                        "training; with --storage (default: sqlite:///<results-dir>/<first study>/study.db)")
    g.add_argument("--study", help="audit name (default: audit-<references>-<protocol key>)")
    g.add_argument("--results-dir", default="results", help="(default: results)")
    g.add_argument("--storage", help="Optuna storage URL (default: sqlite:///<results-dir>/<study>/study.db)")
    g.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples (default: 10000)")
    add_compute_options(parser)
    add_proxy_options(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .driver import log, quiet_libraries

    args = build_parser().parse_args(argv)
    quiet_libraries()
    with usage_errors():  # bad input: one line, exit 2, before any training
        references = load_references(args.references, args.backbone)
        storage = args.storage and without_password(args.storage)  # a password never reaches the disk
        if args.from_study:
            storage = storage or f"sqlite:///{Path(args.results_dir).resolve() / args.from_study[0] / 'study.db'}"
            protocol, precision, scores = read_studies(args.from_study, storage)
        else:
            protocol = protocol_from_args(args, args.backbone, args.seeds[0])
            precision = precision_record(protocol.precision)
        study = args.study or f"audit-{references.name}-{protocol_key(protocol)}"
        SearchSettings(study=study)  # the name is checked like a search's
        if not args.from_study:
            plans = plan_references(references, protocol, args.seeds, study, args.results_dir, storage,
                                    args.backbone, compute_from_args(args))
            storage = plans[0][0].storage_url
    if not args.from_study:
        scores = train_references(plans)
    with usage_errors():
        result = score_audit(references, scores, study=study, protocol=protocol, precision=precision,
                             n_resamples=args.resamples)
    report = write_audit(result, Path(args.results_dir).resolve() / study)
    print("\n" + report.read_text(), flush=True)
    log(f"audit written to {report.parent}; open the studies: optuna-dashboard {storage}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
