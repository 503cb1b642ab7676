"""Assessment: threat models, probes, the runner, scoring, sanity checks."""

from bastion.assess.schema import Finding, Report, ThreatModel

__all__ = ["Finding", "Report", "ThreatModel"]
