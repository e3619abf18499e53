"""The audits a search cites: which audit says how far the ranking of a proxy protocol, or of a
supernet, agrees with the target's, and that verdict in one line.

An audit (`audit`, `ranking.evaluation`) is looked up by what it measured: a proxy protocol by
`protocol_key` (the user's own under the results folder first, then the project's, shipped in
`audited_protocols.json`), a supernet by its training key (the audits saved beside its
checkpoint, then the project's in `audited_supernets.json`).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from proxy.protocol import ProxyProtocol

if TYPE_CHECKING:  # proxy.supernet brings torch; a type needs none of it
    from proxy.supernet import ScoringFidelity

#: Audits measured by the project (studies/protocol_study.py), read by `audit_for` beside the user's own.
SHIPPED_AUDITS = Path(__file__).resolve().parent / "audited_protocols.json"
#: Protocol fields that do not change what a proxy measures (which seed, how fast, where the files are).
_NOT_PROTOCOL = ("seed", "threads", "eval_batch_size", "data_dir", "compile", "channels_last")


def protocol_key(protocol: ProxyProtocol) -> str:
    """A short hash of what a protocol measures; seeds, threads and paths left out."""
    data = {k: v for k, v in protocol.to_dict().items() if k not in _NOT_PROTOCOL}
    return hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest()[:10]


def audit_for(protocol: ProxyProtocol, results_dir: str | Path | None = None,
              references_key: str | None = None) -> dict[str, Any] | None:
    """The audit of this protocol on the reference set of `references_key` (None: any set), if
    any: the user's own under `results_dir` (newest first), else one the project measured
    (`audited_protocols.json`)."""
    key = protocol_key(protocol)

    def matches(audit: Mapping[str, Any]) -> bool:
        return audit.get("protocol_key") == key and references_key in (None, audit["references"].get("key"))

    found = user_audits(results_dir, matches)
    if found:
        return found[0]
    audit = shipped_audits().get(key)
    return audit if audit is not None and matches(audit) else None


def user_audits(results_dir: str | Path | None, matches: Callable[[Mapping[str, Any]], bool]
                ) -> list[dict[str, Any]]:
    """The audits under `results_dir` (`<study>/audit.json`) that `matches` accepts, newest first,
    each with the `file` it was read from; unreadable files are left out."""
    found = []
    if results_dir and Path(results_dir).is_dir():
        for path in Path(results_dir).glob("*/audit.json"):
            try:
                data = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if matches(data):
                found.append((path.stat().st_mtime, {**data, "file": str(path)}))
    return [audit for _, audit in sorted(found, key=lambda item: -item[0])]


def shipped_audits() -> dict[str, Any]:
    """The project's audits of proxy protocols, by protocol key (`audited_protocols.json`)."""
    return json.loads(SHIPPED_AUDITS.read_text()) if SHIPPED_AUDITS.is_file() else {}


def describe_audit(audit: Mapping[str, Any] | None) -> str:
    """One line for a search summary: what the ranking of this protocol rests on."""
    if not audit:
        return ("not audited: no audit of this proxy protocol; `python -m audit` with the same proxy "
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
        low, high = c["kendall_interval"]
        text += f"; seed-to-seed {c['kendall_tau_b']:.2f} [{low:.2f}, {high:.2f}]"
    return text + f" (precision {describe_precision(audit['precision'])}, {audit['created']})"


def describe_precision(record: Mapping[str, Any]) -> str:
    """What an audit's `precision` record says: what was asked, what it resolved to, on which CPU."""
    if not record.get("resolved"):
        return f"{record.get('requested', '?')} (what it resolved to was not recorded)"
    return f"{record['requested']} resolved to {record['resolved']} ({record.get('cpu', '?')})"



#: The project's own audits of supernets, by training key (`studies.supernet_audit --ship`): a
#: search that trains a supernet of an audited key cites them, as proxy protocols' audits are.
SHIPPED_SUPERNET_AUDITS = Path(__file__).resolve().parent / "audited_supernets.json"


def supernet_audit_files(checkpoint: str | Path) -> dict[str, Path]:
    """Where `studies.supernet_audit` keeps a supernet's audits beside its checkpoint: the report
    against stand-alone training (`stand_alone`) and the audit against ImageNet (`imagenet`, a
    folder `ranking.evaluation.write_audit` fills)."""
    checkpoint = Path(checkpoint)
    return {"stand_alone": checkpoint.with_suffix(".audit.json"),
            "imagenet": checkpoint.with_name(checkpoint.stem + ".paper-audit")}


def supernet_audit(supernet: Mapping[str, Any] | None, kind: str) -> tuple[dict[str, Any] | None, str]:
    """A supernet's audit of `kind` (`stand_alone` or `imagenet`) and where it came from: the
    one `studies.supernet_audit` saved beside its checkpoint, else the project's of its key."""
    if not supernet:
        return None, ""
    beside = supernet_audit_files(supernet["path"])[kind]
    beside = beside / "audit.json" if kind == "imagenet" else beside
    if beside.is_file():
        return json.loads(beside.read_text()), ""
    shipped = json.loads(SHIPPED_SUPERNET_AUDITS.read_text()) if SHIPPED_SUPERNET_AUDITS.is_file() else {}
    entry = shipped.get(supernet.get("key"), {})
    if kind in entry:
        return entry[kind], (f" (the project's audit of a supernet of the same key, {entry['created']}, "
                             f"ranking/audited_supernets.json)")
    return None, ""


def ranking_audit(supernet: dict[str, Any] | None, fidelity: ScoringFidelity | None = None) -> str:
    """Which audit a supernet's ranking rests on: the one saved beside its checkpoint, else the
    project's of its training key, if any; says so when the search scored candidates otherwise
    than the audit did (`fidelity`: the search's `recalibration_images` and `score_images`)."""
    if not supernet:
        return "none (no supernet was trained)"
    audit, source = supernet_audit(supernet, "stand_alone")
    if audit is None:
        return (f"none yet: this supernet's ranking has not been audited against stand-alone proxy training "
                f"(an audit saved as `{supernet_audit_files(supernet['path'])['stand_alone']}` is cited here)")
    differs = {k: v for k, v in (fidelity or {}).items() if k in audit and audit[k] != v}
    caveat = ("; this search scored otherwise (" + ", ".join(f"{k} {v}" for k, v in differs.items())
              + "), so the audit is only indicative") if differs else ""
    return audit["summary"] + source + caveat


def supernet_imagenet_audit(supernet: dict[str, Any] | None) -> str | None:
    """The audit of the supernet's scores against ImageNet, in one line; None when there is none."""
    audit, source = supernet_audit(supernet, "imagenet")
    return None if audit is None else describe_audit(audit) + source


__all__ = ["SHIPPED_AUDITS", "SHIPPED_SUPERNET_AUDITS", "audit_for", "describe_audit", "describe_precision",
           "protocol_key", "ranking_audit", "shipped_audits", "supernet_audit", "supernet_audit_files",
           "supernet_imagenet_audit", "user_audits"]
