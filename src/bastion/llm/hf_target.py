"""A local Hugging Face causal LM directory as an in-process chat target (transformers).

``hf:DIR`` (or a directory path) names a directory saved with ``save_pretrained``: a
``config.json``, the weights as ``model.safetensors`` (or sharded with
``model.safetensors.index.json``) and the tokenizer files. It is loaded with
``AutoModelForCausalLM``/``AutoTokenizer``, ``use_safetensors=True``,
``local_files_only=True`` and ``trust_remote_code=False``: nothing is downloaded, no code
from the directory runs, and a directory holding pickled weights (``*.bin``, ``*.pt``,
``*.pth``, ``*.pkl``, ``*.ckpt``) is refused with one line, before anything is read.

Replies are generated greedily (``do_sample=False``, so the same prompt always gives the
same reply; the profile's temperature is not used), at most ``max_tokens`` new tokens when
the attempt sets it, else the target's ``max_new_tokens``. The conversation is rendered
with the tokenizer's chat template when it has one, else with :data:`PLAIN_TEMPLATE`.

Tools: when the chat template mentions ``tools`` the tools go to the template (the model's
own tool format); otherwise :func:`tool_instructions` is appended to the system message.
Either way tool calls are read back from the generated text by :func:`parse_tool_calls`:
a JSON object ``{"tool_call": {"name": ..., "arguments": {...}}}``, or the common
``{"name": ..., "arguments": {...}}`` form (bare or inside ``<tool_call>…</tool_call>``), for
a tool the profile offers. A model that was never taught either form will seldom call a
tool, so the agency and tool-injection probes measure what this convention lets it do.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from bastion.assess.schema import ModelRef
from bastion.errors import ConfigError, TargetError
from bastion.llm.target import ChatReply, Message, Reported, ToolCall
from bastion.models.loaded import Artifact, artifacts_sha256, file_sha256

log = logging.getLogger(__name__)
PREFIX = "hf:"
PICKLED = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
#: How every local Hugging Face directory is loaded: nothing downloaded, no code from it run
#: (``use_safetensors=True`` goes with the model's ``from_pretrained``).
LOAD_OPTIONS: dict[str, Any] = {"local_files_only": True, "trust_remote_code": False}
WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
)
#: The plain conversation format used when the tokenizer has no chat template: one block a
#: message, ``<|ROLE|>`` on its own line then the content; assistant tool calls are written
#: in the JSON convention; the prompt ends with ``<|assistant|>`` and a newline.
PLAIN_TEMPLATE = "<|{role}|>\n{content}\n"
TOOL_CALL_TAG = re.compile(r"</?tool_call>")


def is_hf_target(target: str) -> bool:
    """``hf:DIR``, or an existing directory (not an ``openai+`` URL)."""
    return target.startswith(PREFIX) or ("://" not in target and Path(target).expanduser().is_dir())


def hf_directory(target: str) -> Path:
    """The model directory of ``hf:DIR``, checked to hold safetensors weights only."""
    path = Path(target.removeprefix(PREFIX)).expanduser()
    return safetensors_directory(path, named=f"--target {target!r}", kind="causal LM")


def safetensors_directory(path: Path, *, named: str, kind: str) -> Path:
    """``path`` checked to be a ``save_pretrained`` directory with safetensors weights, a
    ``config.json`` and no pickled weights anywhere in it (one-line ConfigError otherwise,
    before anything is read). ``named`` opens the not-a-directory message (the option and
    value), ``kind`` names the model kind ("causal LM", "sequence classifier")."""
    if not path.is_dir():
        raise ConfigError(f"{named}: {path} is not a directory")
    pickled = sorted(p.name for p in path.rglob("*") if p.suffix.lower() in PICKLED)
    if pickled:
        raise ConfigError(
            f"{path} holds pickled weights ({', '.join(pickled[:3])}): Bastion loads local "
            "models from safetensors only; convert them (save_pretrained with safetensors) "
            "and remove the pickled files"
        )
    if not any((path / w).is_file() for w in WEIGHTS):
        raise ConfigError(f"{path} has no model.safetensors: not a safetensors {kind} dir")
    if not (path / "config.json").is_file():
        raise ConfigError(f"{path} has no config.json: save the model with save_pretrained")
    return path


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def model_artifacts(path: Path) -> list[Artifact]:
    """The files the model and tokenizer load from, each with its SHA-256."""
    files = [(p, "weights") for p in sorted(path.glob("*.safetensors"))]
    index = path / "model.safetensors.index.json"
    if index.is_file():
        files.append((index, "weights"))
    files.append((path / "config.json", "config"))
    if (path / "generation_config.json").is_file():
        files.append((path / "generation_config.json", "config"))
    files += [(path / n, "tokenizer") for n in TOKENIZER_FILES if (path / n).is_file()]
    return [Artifact(path=str(p), sha256=file_sha256(p), role=role) for p, role in files]


def tool_instructions(tools: list[dict[str, Any]]) -> str:
    """What the system message gains when the chat template does not take tools."""
    specs = [t.get("function", t) for t in tools]
    return (
        "\n\nYou can call these tools:\n"
        + json.dumps(specs, sort_keys=True)
        + '\nTo call one, answer with only this JSON: {"tool_call": {"name": "TOOL", '
        '"arguments": {...}}}'
    )


def _objects(text: str) -> list[tuple[int, int, Any]]:
    """Every JSON object in ``text`` with its span (outermost first)."""
    decoder = json.JSONDecoder()
    out, pos = [], text.find("{")
    while pos != -1:
        try:
            obj, end = decoder.raw_decode(text, pos)
        except ValueError:
            pos = text.find("{", pos + 1)
            continue
        out.append((pos, end, obj))
        pos = text.find("{", end)
    return out


def parse_tool_calls(text: str, offered: set[str]) -> tuple[str, list[ToolCall]]:
    """Tool calls written as JSON in ``text`` (for tools in ``offered``) and the text
    without them."""
    calls: list[ToolCall] = []
    kept, last = [], 0
    for start, end, obj in _objects(text):
        call = obj.get("tool_call", obj) if isinstance(obj, dict) else None
        if not isinstance(call, dict) or call.get("name") not in offered:
            continue
        args = call.get("arguments", call.get("parameters", {}))
        arguments = args if isinstance(args, str) else json.dumps(args, sort_keys=True)
        calls.append(
            ToolCall(id=f"call_local_{len(calls)}", name=call["name"], arguments=arguments)
        )
        kept.append(text[last:start])
        last = end
    kept.append(text[last:])
    rest = "".join(kept) if calls else text
    return TOOL_CALL_TAG.sub("", rest).strip() if calls else rest, calls


def _call_json(c: ToolCall) -> str:
    try:
        args: Any = json.loads(c.arguments)
    except ValueError:
        args = c.arguments
    return json.dumps({"tool_call": {"name": c.name, "arguments": args}}, sort_keys=True)


def plain_prompt(messages: list[Message]) -> str:
    """:data:`PLAIN_TEMPLATE` over the conversation, ending with the assistant's turn."""
    parts = []
    for m in messages:
        content = m.content or ""
        if m.tool_calls:
            content = "\n".join([content, *(_call_json(c) for c in m.tool_calls)]).strip()
        parts.append(PLAIN_TEMPLATE.format(role=m.role, content=content))
    return "".join(parts) + "<|assistant|>\n"


def _template_message(m: Message) -> dict[str, Any]:
    """A message as Hugging Face chat templates expect it (arguments as a mapping)."""
    out: dict[str, Any] = {"role": m.role, "content": m.content or ""}
    if m.tool_calls:
        calls = []
        for c in m.tool_calls:
            try:
                args: Any = json.loads(c.arguments)
            except ValueError:
                args = {}
            calls.append(
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": args}}
            )
        out["tool_calls"] = calls
    if m.tool_call_id is not None:
        out["tool_call_id"] = m.tool_call_id
    return out


def _merge_system(messages: list[Message]) -> list[Message]:
    """The system message folded into the first user message."""
    system, rest = messages[0], list(messages[1:])
    for i, m in enumerate(rest):
        if m.role == "user":
            rest[i] = m.model_copy(update={"content": f"{system.content}\n\n{m.content or ''}"})
            return rest
    return [Message(role="user", content=system.content), *rest]


class HFChatTarget:
    """Answer chat conversations with a local causal LM, in process, deterministically."""

    form = "hf-causal-lm"

    def __init__(self, target: str, *, max_new_tokens: int = 256, device: str = "cpu") -> None:
        if max_new_tokens < 1:
            raise ConfigError("max_new_tokens must be >= 1")
        self.url = target
        self.path = hf_directory(target)
        self.base = str(self.path)
        self.max_new_tokens = max_new_tokens
        self.requests = 0
        self.artifacts = model_artifacts(self.path)
        self.sha256 = artifacts_sha256(self.artifacts)
        self._load(device)

    def _load(self, device: str) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # Rich owns the terminal

        opts = LOAD_OPTIONS
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.path), **opts)
            self.lm = AutoModelForCausalLM.from_pretrained(
                str(self.path), use_safetensors=True, **opts
            )
        except Exception as exc:  # transformers/safetensors raise many kinds for a bad dir
            raise ConfigError(
                f"{self.path}: not a loadable causal LM directory: {first_line(exc)}"
            ) from None
        self.lm.to(device).eval()
        self.device = device
        self._torch = torch
        config = self.lm.config
        self.model = str(getattr(config, "_name_or_path", "") or "") or self.path.name
        if Path(self.model).is_absolute():  # save_pretrained records the local path
            self.model = self.path.name
        self.context = int(
            getattr(config, "max_position_embeddings", None)
            or getattr(config, "n_positions", None)
            or 0
        )
        template = getattr(self.tokenizer, "chat_template", None)
        self.chat_template = template if isinstance(template, str) and template else None

    def __repr__(self) -> str:
        return f"HFChatTarget({self.base!r}, model={self.model!r})"

    def close(self) -> None:
        """Nothing to release (the model is garbage-collected)."""

    def __enter__(self) -> HFChatTarget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def model_ref(self, reported: Reported) -> ModelRef:
        """The report's model record: the directory's files (weights, config, tokenizer)
        with their hashes, so that an attestation covers exactly the model assessed."""
        how = "its chat template" if self.chat_template else "the plain template"
        return ModelRef(
            name=self.model,
            sha256=self.sha256,
            path=self.base,
            form=self.form,
            capabilities={**reported.capabilities(), "requests": self.requests},
            artifacts=[a.model_dump() for a in self.artifacts],
            notes=[
                f"local causal LM {self.base} (transformers, safetensors), greedy decoding, "
                f"at most {self.max_new_tokens} new tokens, conversation rendered with {how}"
            ],
        )

    def prompt(self, messages: list[Message], tools: list[dict[str, Any]] | None) -> str:
        """The text the model continues: the chat template's rendering, or the plain one."""
        template_tools = bool(tools and self.chat_template and "tools" in self.chat_template)
        if tools and not template_tools:
            messages = list(messages)
            if messages and messages[0].role == "system":
                first = messages[0]
                messages[0] = first.model_copy(
                    update={"content": (first.content or "") + tool_instructions(tools)}
                )
            else:
                messages.insert(0, Message(role="system", content=tool_instructions(tools).strip()))
        if self.chat_template is None:
            return plain_prompt(messages)
        try:
            return self._render(messages, tools if template_tools else None)
        except Exception as exc:  # a template's own error (jinja raise_exception)
            if not messages or messages[0].role != "system":
                raise TargetError(f"{self.path}: the chat template refused: {exc}") from None
        # templates without a system role (e.g. Gemma's): the system prompt opens the
        # first user message, as their model cards advise
        merged = _merge_system(messages)
        try:
            return self._render(merged, tools if template_tools else None)
        except Exception as exc:
            raise TargetError(f"{self.path}: the chat template refused: {exc}") from None

    def _render(self, messages: list[Message], tools: list[dict[str, Any]] | None) -> str:
        return str(
            self.tokenizer.apply_chat_template(
                [_template_message(m) for m in messages],
                tools=tools,
                add_generation_prompt=True,
                tokenize=False,
            )
        )

    def chat(
        self,
        messages: list[Message],
        *,
        tools: list[dict[str, Any]] | None = None,
        max_tokens: int | None = None,
        temperature: float = 0.0,
    ) -> ChatReply:
        """Generate one reply greedily (``temperature`` is ignored: greedy is deterministic)."""
        torch = self._torch
        self.requests += 1
        text = self.prompt(messages, tools)
        enc = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)
        ids = enc["input_ids"].to(self.device)
        budget = max_tokens or self.max_new_tokens
        if self.context:
            room = self.context - ids.shape[1]
            if room < 1:
                raise TargetError(
                    f"{self.path}: the prompt is {ids.shape[1]} tokens, the model's context is "
                    f"{self.context}: use a model with a longer context or a shorter profile"
                )
            budget = min(budget, room)
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id
        try:
            with torch.no_grad():
                out = self.lm.generate(
                    input_ids=ids,
                    attention_mask=enc["attention_mask"].to(self.device),
                    max_new_tokens=budget,
                    do_sample=False,
                    pad_token_id=pad,
                )
        except (RuntimeError, ValueError) as exc:  # out of memory, a bad generation config
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TargetError(f"{self.path}: generation failed: {first}") from None
        new = out[0, ids.shape[1] :]
        eos = self.tokenizer.eos_token_id
        finish = "stop" if eos is not None and len(new) and int(new[-1]) == eos else "length"
        reply = self.tokenizer.decode(new, skip_special_tokens=True)
        offered = {str(t.get("function", t).get("name")) for t in tools or []}
        content, calls = parse_tool_calls(reply, offered)
        return ChatReply(
            content=content,
            tool_calls=calls,
            finish_reason="tool_calls" if calls else finish,
            model=self.model,
            completion_tokens=len(new),
        )
