"""LLM applications: assess an OpenAI-compatible chat endpoint (issue 16).

- :mod:`bastion.llm.profile`: the YAML application profile (system prompt, tools,
  retrieval documents, canaries);
- :mod:`bastion.llm.target`: an OpenAI-compatible chat-completions client over httpx;
- :mod:`bastion.llm.payloads`: Bastion's own attack templates (seeded, mutated);
- :mod:`bastion.llm.oracles`: the deterministic success oracles;
- :mod:`bastion.llm.probes`: the probes, each an OWASP LLM Top 10 2025 / MITRE ATLAS item;
- :mod:`bastion.llm.runner`: runs them and writes report.json (the assess Report schema).
"""
