"""Ship the fidelity ladder of a proxy protocol: every rung audited under a results folder goes
into `ranking/audited_protocols.json` (by its protocol key), so that a search at any rung cites
its own audit and `--max-rung auto` / `--rank-by auto` read the ladder on any machine.

    python -m audit --rungs 1,3 --seeds 0 1 --results-dir R    # hours; resumes after a stop
    python -m audit --rungs 10 --seeds 0 --results-dir R
    python -m studies.ladder --results-dir R [proxy options]    # ship what R holds
"""
from __future__ import annotations

import argparse
import json

from localvit.cli import log
from proxy.protocol import PROXY_GROUP
from ranking.audits import SHIPPED_AUDITS, protocol_key
from ranking.ladder import ladder_for
from search.options import add_options, protocol_from_args
from space.references import PAPER_IMAGENET, load_references


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_options(parser, groups=(PROXY_GROUP,), names=("results_dir",))
    args = parser.parse_args(argv)
    key = protocol_key(protocol_from_args(args, "deit_tiny", 0))
    shipped = json.loads(SHIPPED_AUDITS.read_text())
    for rung, audit in ladder_for(key, args.results_dir, load_references(PAPER_IMAGENET).key).items():
        if "file" not in audit:  # shipped already
            continue
        log(f"shipping rung {rung}: audit {audit['study']} ({audit['created']}, seeds {', '.join(audit['seeds'])})")
        shipped[audit["protocol_key"]] = {k: v for k, v in audit.items() if k != "file"}
    SHIPPED_AUDITS.write_text(json.dumps(shipped, indent=1) + "\n")


if __name__ == "__main__":
    main()
