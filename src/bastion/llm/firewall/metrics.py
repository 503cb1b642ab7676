"""The firewall's Prometheus metrics, in the gateway's registry beside its own."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter


@dataclass
class FirewallMetrics:
    decisions: Counter
    findings: Counter
    tokens: Counter
    streams_stopped: Counter


def make_firewall_metrics(registry: CollectorRegistry) -> FirewallMetrics:
    return FirewallMetrics(
        decisions=Counter(
            "bastion_llm_decisions",
            "LLM firewall decisions by side (input, output) and action",
            ["side", "action"],
            registry=registry,
        ),
        findings=Counter(
            "bastion_llm_findings", "Rules fired by the LLM firewall", ["rule"], registry=registry
        ),
        tokens=Counter(
            "bastion_llm_tokens_estimated",
            "Tokens charged to the tokens bucket (estimate: characters / 4)",
            registry=registry,
        ),
        streams_stopped=Counter(
            "bastion_llm_streams_stopped", "Streams stopped by an output rule", registry=registry
        ),
    )
