"""How far a ranking can be trusted: rank statistics (`statistics`), an audit's figures from the
scores of reference designs (`evaluation`), and the audits the project ships with their lookup
(`audits`), which a search's summary cites."""
