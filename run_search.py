"""Find the best locality-enhanced vision transformer for a compute budget.

    python run_search.py --budget-flops 1.3G

searches the default design space on the embedded default (CPU, Fashion-MNIST proxy), stores
every trial in an Optuna study under results/<study>/ (open it with optuna-dashboard), and
exports the best architectures as ImageNet training jobs. Run the same command again, or
add --resume, to continue an interrupted search.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, NoReturn, Sequence

from localvit.cli import usage_errors

if TYPE_CHECKING:
    from search.settings import SearchSettings


class OneLineErrors(argparse.ArgumentParser):
    """Usage errors in one line and exit status 2, like every other bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from localvit.backbones import PROXY_IMG_SIZE
    from search.proxy import PRECISIONS, ProxyProtocol
    from search.settings import SAMPLERS, SearchSettings

    d, p = SearchSettings(), ProxyProtocol()
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
    g.add_argument("--space", default=d.space, help="default, paper, or a .yaml/.json space file "
                                                     f"(default: {d.space})")
    g.add_argument("--backbone", default=d.backbone,
                   help="deit_tiny, deit_small, pvt_tiny, swin_tiny, swin_mini, tnt_tiny or t2t_7 "
                        f"(default: {d.backbone})")
    g.add_argument("--sampler", default=d.sampler, help=f"{', '.join(SAMPLERS)} (default: {d.sampler})")
    g.add_argument("--objectives", default=",".join(d.objectives),
                   help="accuracy, or accuracy,flops for a Pareto front (default: accuracy)")
    g.add_argument("--trials", type=int, default=d.trials,
                   help=f"trained trials, baselines included; infeasible candidates are extra (default: {d.trials})")
    g.add_argument("--no-baselines", action="store_true", help="do not train LocalViT and DeiT baselines first")
    g.add_argument("--warm-start", type=int, default=d.warm_start,
                   help="queue this many designs of the paper's tables that fit the budget, closest to it first "
                        f"(default: {d.warm_start})")
    g.add_argument("--no-asha", action="store_true", help="train every trial for all epochs (no early stopping)")
    g.add_argument("--confirm-seeds", type=int, default=d.confirm_seeds,
                   help=f"re-train the best and LocalViT with this many other seeds (default: {d.confirm_seeds})")
    g.add_argument("--seed", type=int, default=d.seed, help=f"sampler and training seed (default: {d.seed})")
    g = parser.add_argument_group("where")
    g.add_argument("--study", help="study name (default: <backbone>-<space>-<budget>)")
    g.add_argument("--results-dir", default=d.results_dir, help=f"(default: {d.results_dir})")
    g.add_argument("--storage", help="Optuna storage URL, e.g. postgresql://user@host/db; its password is taken "
                                      "from PGPASSWORD or ~/.pgpass and never written to disk "
                                      "(default: sqlite:///<results-dir>/<study>/study.db)")
    g.add_argument("--resume", action="store_true", help="continue the study; it must exist")
    g.add_argument("--export-top", type=int, default=d.export_top,
                   help=f"export this many best trials as ImageNet jobs (default: {d.export_top})")
    g = parser.add_argument_group("compute")
    g.add_argument("--workers", type=int, default=d.workers, help=f"concurrent trials (default: {d.workers})")
    g.add_argument("--cpus-per-trial", type=float, help="(default: the CPUs shared by the workers)")
    g.add_argument("--gpus-per-trial", type=float, default=d.gpus_per_trial,
                   help="GPUs per trial, fractions allowed; only what the cluster has (default: 0)")
    g.add_argument("--ray-address", help="join an existing Ray cluster, e.g. auto or 10.0.0.1:6379; the project's "
                                          "code is shipped to its nodes (default: start a local one)")
    g.add_argument("--ray-storage", metavar="PATH_OR_URI",
                   help="Ray Tune's experiment folder, which every node must see: a shared folder or an s3:// or "
                        "gs:// URI (default: the study folder, enough for one machine)")
    g.add_argument("--max-retries", type=int, default=d.max_retries,
                   help="retry a trial lost to the infrastructure (a node or worker died) this many times on "
                        f"another node; it keeps its candidate and does not count as a trial (default: {d.max_retries})")
    g.add_argument("--time-limit", default="20m",
                   help="stop launching and running search trials after this long, e.g. 45m or 2h; 'none' for "
                        "no limit; the seed confirmation runs after it (default: 20m, which keeps the default "
                        "search within 30 minutes on 2 CPU cores)")
    g = parser.add_argument_group("proxy training")
    g.add_argument("--dataset", default=p.dataset, help=f"fashion-mnist or imagefolder (default: {p.dataset})")
    g.add_argument("--data-dir", help="Fashion-MNIST idx files, or an ImageNet-layout folder "
                                      "(default: /usr/share/datasets/fashion-mnist)")
    g.add_argument("--img-size", type=int, help=f"proxy resolution (default: {p.img_size} for the ViT "
                                                 f"backbones, {PROXY_IMG_SIZE} for the stage backbones)")
    for name, kind, text in (("train-size", int, "training images"), ("val-size", int, "validation images"),
                             ("patch-size", int, "proxy patch of the ViT backbones"),
                             ("width-mult", float, "width multiplier of the proxy"), ("epochs", int, "epochs"),
                             ("batch-size", int, "batch size"), ("lr", float, "peak learning rate")):
        attr = name.replace("-", "_")
        g.add_argument(f"--{name}", type=kind, default=getattr(p, attr), help=f"{text} (default: {getattr(p, attr)})")
    g.add_argument("--precision", default=p.precision, help=f"{', '.join(PRECISIONS)} (default: {p.precision})")
    return parser


def settings_from_args(args: argparse.Namespace) -> SearchSettings:
    from localvit.backbones import PROXY_IMG_SIZE, VIT_BACKBONES
    from search.proxy import ProxyProtocol
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
    img_size = args.img_size or (ProxyProtocol.img_size if args.backbone in VIT_BACKBONES else PROXY_IMG_SIZE)
    protocol = ProxyProtocol(dataset=args.dataset, data_dir=args.data_dir, train_size=args.train_size,
                             val_size=args.val_size, img_size=img_size, patch_size=args.patch_size,
                             width_mult=args.width_mult, epochs=args.epochs, batch_size=args.batch_size,
                             lr=args.lr, precision=args.precision, seed=args.seed)
    study = args.study or "-".join([args.backbone, os.path.splitext(os.path.basename(args.space))[0],
                                    args.budget_flops or args.budget_params or "nobudget"])
    return SearchSettings(
        study=study, results_dir=args.results_dir, storage=args.storage and without_password(args.storage),
        space=args.space, backbone=args.backbone,
        budget=limits, sampler=args.sampler, objectives=tuple(x.strip() for x in args.objectives.split(",")),
        trials=args.trials, workers=args.workers, cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial, ray_address=args.ray_address,
        ray_storage=args.ray_storage, max_retries=args.max_retries, protocol=protocol,
        asha=not args.no_asha, baselines=not args.no_baselines, warm_start=args.warm_start, seed=args.seed,
        time_limit_s=None if args.time_limit.strip().lower() == "none" else parse_duration(args.time_limit),
        confirm_seeds=args.confirm_seeds, export_top=args.export_top)


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
