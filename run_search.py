"""Find the best locality-enhanced vision transformer for a compute budget.

    python run_search.py --budget-flops 1.3G

searches the default design space on the embedded default (CPU, a Fashion-MNIST proxy task), stores
every trial in an Optuna study under results/<study>/ (open it with optuna-dashboard), and
exports the best architectures as ImageNet training jobs. Run the same command again, or
add --resume, to continue an interrupted search.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Sequence

from localvit.cli import OneLineErrors, usage_errors

if TYPE_CHECKING:
    from search.settings import SearchSettings


def build_parser() -> argparse.ArgumentParser:
    from search.options import add_compute_options, add_proxy_options
    from search.settings import SAMPLERS, STRATEGIES, SearchSettings

    d = SearchSettings()
    parser = OneLineErrors(
        prog="run_search.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = parser.add_argument_group("budget (at 224x224, 1000 classes; e.g. 1.3G, 900M, 5.9M, 1.3e9)")
    g.add_argument("--budget-flops", metavar="N", help="most FLOPs (multiply-adds) a model may cost (default: none)")
    g.add_argument("--budget-params", metavar="N", help="most parameters (default: none)")
    g.add_argument("--min-flops", metavar="N", help="fewest FLOPs, for a bracket (default: none)")
    g.add_argument("--min-params", metavar="N", help="fewest parameters, for a bracket (default: none)")
    g.add_argument("--min-throughput", type=float, metavar="IMG/S",
                   help="least inference images/s, measured on this machine's CPU at 224x224, batch "
                        f"{d.throughput_batch}, {d.throughput_threads} thread(s), BN folded (default: none)")
    g = parser.add_argument_group("what to search")
    g.add_argument("--space", default=d.space, help="default, paper, a .yaml/.json space file, or a reference "
                                                     "file (its designs; with --sampler grid) "
                                                     f"(default: {d.space})")
    g.add_argument("--backbone", default=d.backbone,
                   help="deit_tiny, deit_small, pvt_tiny, swin_tiny, swin_mini, tnt_tiny or t2t_7 "
                        f"(default: {d.backbone})")
    g.add_argument("--sampler", default="auto",
                   help=f"auto, {', '.join(SAMPLERS)} (default: auto, which is tpe with --strategy train and "
                        f"evolution, aging evolution, with --strategy oneshot)")
    g.add_argument("--objectives", default=",".join(d.objectives),
                   help="accuracy, or accuracy,flops for a Pareto front (default: accuracy)")
    g.add_argument("--trials", type=int, default=d.trials,
                   help=f"trained trials, baselines included; infeasible candidates are extra (default: {d.trials})")
    g.add_argument("--no-baselines", action="store_true", help="do not train LocalViT and DeiT baselines first")
    g.add_argument("--warm-start", type=int, default=d.warm_start,
                   help="queue this many designs of the paper's tables that fit the budget, closest to it first "
                        f"(default: {d.warm_start})")
    g.add_argument("--no-asha", action="store_true", help="train every trial for all epochs (no early stopping)")
    g.add_argument("--asha-grace", type=int, default=d.asha_grace,
                   help=f"epochs every trial trains before ASHA may stop it (default: {d.asha_grace})")
    g.add_argument("--confirm-seeds", type=int, default=d.confirm_seeds,
                   help=f"re-train the best and LocalViT with this many other seeds (default: {d.confirm_seeds})")
    g.add_argument("--seed", type=int, default=d.seed, help=f"sampler and training seed (default: {d.seed})")
    g.add_argument("--strategy", default=d.strategy,
                   help=f"{', '.join(STRATEGIES)}: proxy-train every candidate from scratch, or score candidates "
                        f"with weights inherited from a supernet trained once and proxy-train only the top "
                        f"--top-k (default: {d.strategy})")
    g = parser.add_argument_group("one-shot (--strategy oneshot)")
    g.add_argument("--supernet-epochs", type=int, default=d.supernet_epochs,
                   help=f"proxy epochs of supernet training (default: {d.supernet_epochs})")
    g.add_argument("--supernet-sampling", default=d.supernet_sampling,
                   help=f"subnets trained per step: sandwich (largest, smallest and two random, the others "
                        f"distilled from the largest) or fair (one per FFN type) (default: {d.supernet_sampling})")
    g.add_argument("--candidates", type=int, default=d.candidates,
                   help=f"most candidates scored on the supernet; --time-limit may stop sooner "
                        f"(default: {d.candidates})")
    g.add_argument("--top-k", type=int, default=d.top_k,
                   help=f"best supernet candidates proxy-trained from scratch (default: {d.top_k})")
    g.add_argument("--top-k-apart", type=int, default=d.top_k_apart,
                   help=f"layers in which each of the top-k differs from every better one; 0: the plain top-k "
                        f"(default: {d.top_k_apart})")
    g.add_argument("--recalibration-images", type=int, default=d.recalibration_images,
                   help="training images that re-estimate a candidate's BatchNorm statistics "
                        f"(default: {d.recalibration_images})")
    g.add_argument("--score-images", type=int, default=d.score_images,
                   help="validation images a candidate is scored on, the same for all; 0: the whole split "
                        f"(default: {d.score_images})")
    g.add_argument("--supernet-checkpoint", metavar="PATH",
                   help="where the supernet is trained to or reused from (default: "
                        "<results-dir>/.supernets/<key of space, protocol, epochs, sampling>.pt)")
    g = parser.add_argument_group("where")
    g.add_argument("--study", help="study name (default: <backbone>-<space>-<budget>)")
    g.add_argument("--results-dir", default=d.results_dir, help=f"(default: {d.results_dir})")
    g.add_argument("--storage", help="Optuna storage URL, e.g. postgresql://user@host/db; its password is taken "
                                      "from PGPASSWORD or ~/.pgpass and never written to disk "
                                      "(default: sqlite:///<results-dir>/<study>/study.db)")
    g.add_argument("--resume", action="store_true", help="continue the study; it must exist")
    g.add_argument("--export-top", type=int, default=d.export_top,
                   help=f"export this many best trials as ImageNet jobs (default: {d.export_top})")
    add_compute_options(parser)
    g = parser.add_argument_group("time")
    g.add_argument("--time-limit", default="20m",
                   help="stop launching and running search trials (oneshot: stop scoring candidates; the top-k "
                        "training follows) this long after the start, e.g. 45m or 2h; 'none' for no limit; the "
                        "seed confirmation runs after it (default: 20m, which keeps the default search within "
                        "30 minutes on 2 CPU cores, the one-shot search within 35)")
    add_proxy_options(parser)
    return parser


def settings_from_args(args: argparse.Namespace) -> SearchSettings:
    from search.options import compute_from_args, protocol_from_args
    from search.settings import SearchSettings, parse_duration
    from search.storage import without_password
    from space.budget import Budget, parse_budget

    def budget(text: str | None) -> int | None:
        return None if text is None else parse_budget(text)

    limits = Budget(max_flops=budget(args.budget_flops), max_params=budget(args.budget_params),
                    min_flops=budget(args.min_flops), min_params=budget(args.min_params),
                    min_throughput=args.min_throughput)
    if args.min_throughput is not None and args.min_throughput <= 0:
        raise ValueError(f"--min-throughput {args.min_throughput:g} is invalid; accepted: a positive number")
    protocol = protocol_from_args(args, args.backbone, args.seed)
    study = args.study or "-".join([args.backbone, os.path.splitext(os.path.basename(args.space))[0],
                                    args.budget_flops or args.budget_params or "nobudget"])
    return SearchSettings(
        study=study, results_dir=args.results_dir, storage=args.storage and without_password(args.storage),
        space=args.space, backbone=args.backbone,
        budget=limits, sampler=args.sampler, objectives=tuple(x.strip() for x in args.objectives.split(",")),
        trials=args.trials, **compute_from_args(args), protocol=protocol,
        asha=not args.no_asha, asha_grace=args.asha_grace, baselines=not args.no_baselines,
        warm_start=args.warm_start, seed=args.seed,
        time_limit_s=None if args.time_limit.strip().lower() == "none" else parse_duration(args.time_limit),
        confirm_seeds=args.confirm_seeds, export_top=args.export_top, strategy=args.strategy,
        supernet_epochs=args.supernet_epochs, supernet_sampling=args.supernet_sampling,
        candidates=args.candidates, top_k=args.top_k, top_k_apart=args.top_k_apart,
        recalibration_images=args.recalibration_images, score_images=args.score_images,
        supernet_checkpoint=args.supernet_checkpoint)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from search.driver import connect, prepare, quiet_libraries, run

    quiet_libraries()
    with usage_errors():  # bad input: one line, exit 2, nothing in the study changed
        settings = settings_from_args(args)
        plan = prepare(settings, resume=args.resume)
        cluster = connect(settings, plan)
    run(settings, plan, cluster)
    return 0


if __name__ == "__main__":
    sys.exit(main())
