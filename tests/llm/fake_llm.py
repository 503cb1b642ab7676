"""The tests' OpenAI-compatible application with known weaknesses: Bastion's deliberately
vulnerable demo application (:mod:`bastion.llm.demo_app`), shared with `bastion demo`."""

from bastion.llm.demo_app import WEAKNESSES, FakeLLM, respond, sse_chunks

__all__ = ["WEAKNESSES", "FakeLLM", "respond", "sse_chunks"]
