"""Studies that produce the data the project ships: the protocol study (`protocol_study`, the
audits in `ranking/audited_protocols.json`) and the supernet audit (`supernet_audit`, the
audits in `ranking/audited_supernets.json`). They train for hours; `bench/` holds the timings."""
from pathlib import Path

#: Where the studies write their figures (git-ignored but for its README).
RESULTS = Path(__file__).parent / "results"
