"""Find the best locality-enhanced vision transformer for a compute budget.

    python run_search.py --budget-flops 1.3G

searches the default design space on the embedded default (CPU, a Fashion-MNIST proxy task), stores
every trial in an Optuna study under results/<study>/ (open it with optuna-dashboard), and
exports the best architectures as ImageNet training jobs. Run the same command again, or
add --resume, to continue an interrupted search.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from localvit.cli import OneLineErrors, usage_errors


def build_parser() -> argparse.ArgumentParser:
    from search.options import add_options
    from search.settings import WHERE

    parser = OneLineErrors(
        prog="run_search.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    groups = add_options(parser)
    groups[WHERE].add_argument("--resume", action="store_true", help="continue the study; it must exist")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """0 when the search finished; 2 for bad input, 74 for a storage fault (a full disk, a database
    away for longer than --storage-retry), 75 for a cluster that kept losing trial workers
    (`search.cluster.ClusterFault`), 128 + the signal when SIGTERM or SIGINT stopped it:
    each ends in one line, and the same command resumes."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from search import stop
    from search.driver import connect, prepare, quiet_libraries, run
    from search.faults import faults
    from search.options import settings_from_args

    quiet_libraries()
    with stop.handling():
        with usage_errors():  # bad input: one line, exit 2, nothing in the study changed
            settings = settings_from_args(args)
        with faults(settings.study_dir):
            with usage_errors():
                plan = prepare(settings, resume=args.resume)
                cluster = connect(settings, plan)
            return run(settings, plan, cluster)


if __name__ == "__main__":
    sys.exit(main())
