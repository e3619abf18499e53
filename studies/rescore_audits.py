"""Score the project's shipped audits again, without training: every signal of `ranking.signals`
(the free baselines, the zero-cost scores, the combinations) beside the proxy or supernet scores
the audits hold, out of sample, and the default ranking each audit names.

    python -m studies.rescore_audits         # rewrites ranking/audited_protocols.json and audited_supernets.json

The proxy and supernet scores are those of the audits as measured (their dates, machines and
precision stay recorded); the zero-cost scores are computed here, at each audit's protocol.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from localvit.cli import log
from proxy.protocol import ProxyProtocol
from proxy.zero_cost import zero_cost_of
from ranking.audits import SHIPPED_AUDITS, SHIPPED_SUPERNET_AUDITS
from ranking.evaluation import score_audit, scores_from_rows
from space.references import load_references

REPO = Path(__file__).resolve().parents[1]


def rescore(audit: dict[str, Any], measured: str) -> dict[str, Any]:
    """The audit scored again from its rows, its creation date and precision record kept."""
    references = load_references(REPO / audit["references"]["path"])  # recorded relative to the project
    protocol = ProxyProtocol.from_dict(audit["protocol"])
    result = score_audit(references, scores_from_rows(audit["rows"]), study=audit["study"], protocol=protocol,
                         precision=audit["precision"], measured=measured,
                         zero_cost=zero_cost_of(references, protocol))
    result.created = audit["created"]
    result.rung, result.base_protocol_key = audit.get("rung", 1), audit.get("base_protocol_key", "")
    return result.to_dict()


def main() -> None:
    protocols = json.loads(SHIPPED_AUDITS.read_text())
    for key, audit in protocols.items():
        log(f"rescoring the audit of protocol {key} ({audit['study']})")
        protocols[key] = rescore(audit, "proxy")
    SHIPPED_AUDITS.write_text(json.dumps(protocols, indent=1) + "\n")
    supernets = json.loads(SHIPPED_SUPERNET_AUDITS.read_text())
    for key, entry in supernets.items():
        if "imagenet" in entry:
            log(f"rescoring the ImageNet audit of supernet {key}")
            entry["imagenet"] = rescore(entry["imagenet"], "supernet")
    SHIPPED_SUPERNET_AUDITS.write_text(json.dumps(supernets, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
