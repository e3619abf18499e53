"""The audit runner: how far a proxy protocol ranks designs as the target setting (ImageNet) does.

    python -m audit                                   # the paper's 18 ImageNet designs, seeds 0 and 1
    python -m audit --epochs 6 --train-size 8000      # any proxy option of run_search.py
    python -m audit --references mine.yaml --dataset imagefolder --data-dir /data/imagenet-100
    python -m audit --from-study A --from-study B     # score studies that trained the designs already
    python -m audit --rungs 1,3,10 --seeds 0          # the fidelity ladder: one audit a rung, and ladder.md

The reference designs (`space.references`: a file of specs with their target accuracy) are
proxy-trained with the protocol through the search's own machinery (a grid over the designs,
Ray Tune trials, one Optuna study per seed in the audit's SQLite file, so an audit resumes
after a kill and shows in optuna-dashboard), or read from existing studies. The figures
(`ranking.evaluation`) say how well the proxy ranks them as the target does (Kendall tau-b
and Spearman with bootstrap intervals), which pairs along each design axis it orders rightly,
how many of the target's best it keeps on top, how well the proxy agrees with itself across
seeds (the ceiling of any agreement with the target) and what a candidate costs. It writes
`audit.md`, `audit.json` and `audit.png` under `results/<study>/`; a search whose protocol was
audited names the audit in its summary (`ranking.audits.audit_for`).

With `--rungs`, the protocol is audited at each rung (`proxy.protocol.at_rung`: r times its
optimizer steps), cheapest first, each rung an audit of its own (resumable, cited by a search
at that rung), and `results/ladder-<references>-<protocol key>/ladder.{md,json,png}` puts every
audited rung of the protocol (this run's and earlier ones', `ranking.ladder`) beside the free
baselines.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Mapping, Sequence

import optuna
from optuna.trial import TrialState

from localvit.cli import OneLineErrors, log, usage_errors
from proxy.protocol import PROXY_GROUP, ProxyProtocol, parse_rungs, protocol_at_rung
from proxy.runtime import precision_record
from proxy.zero_cost import zero_cost_of
from ranking.audits import protocol_key
from ranking.evaluation import ProxyScore, score_audit, write_audit
from ranking.ladder import ladder_for, write_ladder
from search import stop
from search.cluster import planned_device
from search.driver import connect, prepare, quiet_libraries, train_trials
from search.options import add_options, compute_from_args, protocol_from_args
from search.settings import COMPUTE, TRAIN, SearchSettings
from search.stop import STOP, say, stopped_line
from search.faults import faults
from search.storage import open_storage, without_password
from space.references import PAPER_IMAGENET, ReferenceSet, load_references


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


def seed_settings(study: str, references: ReferenceSet, protocol: ProxyProtocol, seed: int, results_dir: str,
                  storage: str | None, backbone: str, compute: Mapping[str, Any],
                  include_unfinished: bool = False) -> SearchSettings:
    """A grid search over the reference designs with one seed: a study of its own in the audit's storage."""
    folder = Path(results_dir).resolve() / study
    return SearchSettings(
        study=f"{study}-s{seed}", results_dir=str(folder), storage=storage or f"sqlite:///{folder / 'study.db'}",
        space=references.path, backbone=backbone, sampler="grid", trials=len(references.rows), **compute,
        protocol=protocol.replace(seed=seed), asha=False, baselines=False, warm_start=0, seed=seed,
        confirm_seeds=0, export_top=0, time_limit_s=None, include_unfinished=include_unfinished)


def plan_references(references: ReferenceSet, protocol: ProxyProtocol, seeds: Sequence[int], study: str,
                    results_dir: str, storage: str | None = None, backbone: str = "deit_tiny",
                    compute: Mapping[str, Any] | None = None, include_unfinished: bool = False
                    ) -> list[tuple[SearchSettings, Any, Any]]:
    """Check and open one study per seed and the Ray to train them on (every check bad input can
    fail, before any training)."""
    plans = []
    for seed in seeds:
        settings = seed_settings(study, references, protocol, seed, results_dir, storage, backbone, compute or {},
                                 include_unfinished)
        plan = prepare(settings)
        plans.append((settings, plan, connect(settings, plan)))
    return plans


def train_references(plans: Sequence[tuple[SearchSettings, Any, Any]]) -> dict[str, dict[str, ProxyScore]] | None:
    """Proxy-train every reference design with each seed (resuming what a study holds already): the
    scores of each seed, less the seeds whose designs still train in other drivers of the study
    (theirs to finish); None when a signal stopped it (`search.stop`: what ran is closed and queued
    again)."""
    scores = {}
    for settings, plan, cluster in plans:
        log(f"audit: study {settings.study!r}, {plan.space.size()} reference designs, seed {settings.seed}")
        interrupted, elsewhere = train_trials(settings, plan, cluster)
        if elsewhere and not STOP.requested:
            log(f"{elsewhere} design(s) of study {settings.study!r} still train in other drivers: seed "
                f"{settings.seed} is theirs to finish")
            continue
        if STOP.requested:
            say(stopped_line(f"{len(read_scores(plan.study))} of {plan.space.size()} designs trained with seed "
                             f"{settings.seed}, {interrupted} interrupted and queued again; no audit was written"))
            return None
        scores[str(settings.seed)] = read_scores(plan.study)
    return scores


def read_studies(names: Sequence[str], storage: str) -> tuple[ProxyProtocol, dict[str, Any],
                                                               dict[str, dict[str, ProxyScore]]]:
    """The protocol, its precision record and the scores of existing studies that trained the
    designs (any search), by seed; the studies must share one protocol up to the seed."""
    opened = open_storage(storage)
    held = {s.study_name for s in opened.get_all_studies()}
    protocols, precision, scores = {}, {}, {}
    for name in names:
        if name not in held:
            raise ValueError(f"study {name!r} is not in {storage}; accepted: one of "
                             f"{', '.join(sorted(held)) or '(none)'}")
        study = optuna.load_study(study_name=name, storage=opened)
        if "proxy_protocol" not in study.user_attrs:
            raise ValueError(f"study {name!r} holds no proxy protocol; accepted: a study made by run_search.py or "
                             f"python -m audit")
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


# --- command line ----------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrors(prog="python -m audit", description=__doc__.split("\n\n")[0],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    g = parser.add_argument_group("audit")
    g.add_argument("--seeds", type=int, nargs="+", default=[0, 1],
                   help="proxy seeds; two or more also measure the seed-to-seed ceiling (default: 0 1)")
    g.add_argument("--from-study", action="append", metavar="NAME",
                   help="score an existing study (repeat for seeds; its proxy protocol is used) instead of "
                        "training; with --storage (default: sqlite:///<results-dir>/<first study>/study.db)")
    g.add_argument("--study", help="audit name (default: audit-<references>-<protocol key>)")
    g.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples (default: 10000)")
    g.add_argument("--rungs", metavar="R,R,...",
                   help="audit the protocol at these rungs, e.g. 1,3,10: rung r trains r times its optimizer "
                        "steps, on more distinct images first, then epochs; one audit a rung and a ladder page "
                        "(default: the protocol as given, rung 1)")
    add_options(parser, groups=(COMPUTE, PROXY_GROUP),
                names=("references", "include_unfinished", "backbone", "results_dir", "storage"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """0 when the audit is written; 2 for bad input, 74 for a storage fault, 75 for a cluster that
    kept losing trial workers, 128 + the signal when SIGTERM or SIGINT stopped it (the same
    command resumes)."""
    args = build_parser().parse_args(argv)
    quiet_libraries()
    with stop.handling(), faults(Path(args.results_dir).resolve()):
        return _audit(args)


def _audit(args: argparse.Namespace) -> int:
    with usage_errors():  # bad input: one line, exit 2, before any training
        references = load_references(args.references or PAPER_IMAGENET, args.backbone, args.include_unfinished)
        storage = args.storage and without_password(args.storage)  # a password never reaches the disk
        rungs = parse_rungs(args.rungs) if args.rungs else (1,)
        grows = args.references is not None and Path(args.references).is_dir()  # a folder of runs: keyed by its rows
        if args.from_study:
            if args.rungs:
                raise ValueError(f"--rungs {args.rungs} with --from-study is invalid; accepted: one of them (a "
                                 f"study holds one protocol, so one rung)")
            storage = storage or f"sqlite:///{Path(args.results_dir).resolve() / args.from_study[0] / 'study.db'}"
            base, precision, scores = read_studies(args.from_study, storage)
            study = args.study or _audit_name(references, base, grows)
            SearchSettings(study=study)  # the name is checked like a search's
        else:
            base = protocol_from_args(args, args.backbone, args.seeds[0])
            trials_on = planned_device(SearchSettings(**compute_from_args(args)))  # a GPU where trials get one
            precision = precision_record(base.precision, trials_on)
        planned = []
        for rung in () if args.from_study else rungs:
            protocol = protocol_at_rung(base, rung)
            study = (f"{args.study}-r{rung}" if len(rungs) > 1 else args.study) if args.study else \
                _audit_name(references, protocol, grows)
            SearchSettings(study=study)  # the name is checked like a search's
            plans = plan_references(references, protocol, args.seeds, study, args.results_dir, storage,
                                    args.backbone, compute_from_args(args), args.include_unfinished)
            planned.append((rung, protocol, study, plans))
    if args.from_study:
        return _write(args, references, scores, study, base, base, 1, precision, storage)
    for rung, protocol, study, plans in planned:
        if len(rungs) > 1:
            log(f"audit: rung {rung} of {', '.join(map(str, rungs))}: {protocol.train_size} images x "
                f"{protocol.epochs} epochs")
        trained = train_references(plans)
        if trained is None:
            return STOP.exit_status
        if len(trained) < len(plans):
            log(f"the audit {study!r} is left to the drivers that finish its designs (or to the same command "
                f"run again once they have)")
            continue
        _write(args, references, trained, study, protocol, base, rung, precision, plans[0][0].storage_url)
    if args.rungs:
        key = protocol_key(base)
        folder = Path(args.results_dir).resolve() / f"ladder-{references.name}-{key}"
        page = write_ladder(ladder_for(key, args.results_dir, references.key), folder,
                            f"Fidelity ladder of the proxy protocol `{key}` on {references.name}")
        print("\n" + page.read_text(), flush=True)
        log(f"ladder written to {folder}")
    return 0


def _audit_name(references: ReferenceSet, protocol: ProxyProtocol, grows: bool) -> str:
    """An audit's default name: the references' and the protocol's (and a grown folder's rows')."""
    return "-".join([f"audit-{references.name}", protocol_key(protocol)] + ([references.key] if grows else []))


def _write(args: argparse.Namespace, references: ReferenceSet, scores: Mapping[str, Mapping[str, ProxyScore]],
           study: str, protocol: ProxyProtocol, base: ProxyProtocol, rung: int, precision: Mapping[str, Any],
           storage: str) -> int:
    """Score one audit (zero-cost scores included) and write its files."""
    log(f"audit: zero-cost scores of {len(references.rows)} reference designs at the proxy (seconds each)")
    zero_cost = zero_cost_of(references, protocol)
    with usage_errors():
        result = score_audit(references, scores, study=study, protocol=protocol, precision=precision,
                             zero_cost=zero_cost, n_resamples=args.resamples, rung=rung, base_protocol=base)
    report = write_audit(result, Path(args.results_dir).resolve() / study)
    print("\n" + report.read_text(), flush=True)
    log(f"audit written to {report.parent}; open the studies: optuna-dashboard {storage}")
    return 0
