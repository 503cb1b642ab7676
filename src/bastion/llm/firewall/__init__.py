"""The LLM firewall of ``bastion serve --upstream`` (issue 16): one concern per module.

- :mod:`~bastion.llm.firewall.records`: the typed findings and decisions;
- :mod:`~bastion.llm.firewall.config`: the ``firewall:`` YAML section and the CLI flags;
- :mod:`~bastion.llm.firewall.injection`: prompt-injection heuristics;
- :mod:`~bastion.llm.firewall.secrets`: detect-secrets' regex plugins, in process;
- :mod:`~bastion.llm.firewall.pii`: e-mail, phone, card (Luhn), IBAN, SSN recognizers;
- :mod:`~bastion.llm.firewall.leakage`: canary and system-prompt leakage in an output;
- :mod:`~bastion.llm.firewall.links`: markup and exfiltration-link stripping;
- :mod:`~bastion.llm.firewall.attack_state`: repeated attempts per client;
- :mod:`~bastion.llm.firewall.scanners`: the input and output scanners composed;
- :mod:`~bastion.llm.firewall.stream`: the incremental scan of an SSE stream;
- :mod:`~bastion.llm.firewall.upstream`: the OpenAI-compatible upstream client;
- :mod:`~bastion.llm.firewall.exchange`: one request's models, token estimate and audit entry;
- :mod:`~bastion.llm.firewall.relay`: the scanned SSE relay;
- :mod:`~bastion.llm.firewall.metrics`: the firewall's Prometheus counters;
- :mod:`~bastion.llm.firewall.corpus`: the evaluation corpus (held-out attacks, benign prompts);
- :mod:`~bastion.llm.firewall.app` / :mod:`~bastion.llm.firewall.routes`: the gateway.
"""
