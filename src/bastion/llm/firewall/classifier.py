"""A prompt-injection classifier the user supplies: a Hugging Face sequence-classification
directory (``firewall.input.injection.classifier: DIR``, or ``--injection-classifier DIR``).

The directory is what ``save_pretrained`` writes for an ``AutoModelForSequenceClassification``
and its tokenizer: ``config.json``, ``model.safetensors`` and the tokenizer files. It is
checked and loaded as every local model is (:func:`bastion.llm.hf_target.safetensors_directory`:
safetensors only, ``local_files_only``, no remote code; pickled weights are refused with one
line before anything is read).

The injection label is ``classifier_label`` when set, else the one label of
``config.id2label`` whose name contains "injection" (any case: ``INJECTION``,
``prompt_injection``), else ``LABEL_1`` of a two-label model with the default names. Its
probability (softmax over the logits; a sigmoid for a one-logit model) is the classifier's
score of a text. Texts longer than the model's maximum length are read in overlapping
windows of that length (stride :data:`STRIDE` tokens), so a planted instruction at the end
of a long document is seen too; the score of a request is the highest window's.
:mod:`bastion.llm.firewall.classifier_training` trains a small one on Bastion's own corpus.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from bastion.errors import ConfigError
from bastion.llm.hf_target import LOAD_OPTIONS, first_line, safetensors_directory

STRIDE = 32
BATCH = 16
KIND = "sequence classifier"


def injection_label(id2label: dict[int, str], wanted: str | None, where: Path) -> int:
    """The index of the injection label (see the module docstring), or ConfigError."""
    names = {int(i): str(n) for i, n in id2label.items()}
    shown = ", ".join(f"{i}: {n}" for i, n in sorted(names.items()))
    if wanted is not None:
        hits = [i for i, n in names.items() if n == wanted]
        if not hits:
            raise ConfigError(
                f"{where}: classifier_label {wanted!r} is not one of the model's labels ({shown})"
            )
        return hits[0]
    hits = [i for i, n in names.items() if "injection" in n.lower()]
    if len(hits) == 1:
        return hits[0]
    if not hits and sorted(names.values()) == ["LABEL_0", "LABEL_1"]:
        return next(i for i, n in names.items() if n == "LABEL_1")
    raise ConfigError(
        f"{where}: cannot tell which label is the injection one ({shown}): set "
        "firewall.input.injection.classifier_label"
    )


def check_classifier_dir(path: Path, label: str | None = None) -> int:
    """The cheap start-up checks of a classifier directory (files, label): the injection
    label's index, or a one-line ConfigError. Reads only ``config.json``."""
    path = safetensors_directory(Path(path), named=f"--injection-classifier {path}", kind=KIND)
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{path}/config.json: not readable JSON: {first_line(exc)}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}/config.json: expected a JSON object")
    raw = config.get("id2label") or {"0": "LABEL_0", "1": "LABEL_1"}
    try:
        id2label = {int(k): str(v) for k, v in dict(raw).items()}
    except (TypeError, ValueError):
        raise ConfigError(f"{path}/config.json: id2label is not a mapping of indices") from None
    return injection_label(id2label, label, path)


class InjectionClassifier:
    """A loaded sequence classifier: :meth:`probability` of the injection label over texts.

    Thread-safe (one lock around tokenizing and the forward pass), so the async routes may
    call it from worker threads."""

    def __init__(self, path: Path, *, label: str | None = None, device: str = "cpu") -> None:
        self.path = Path(path)
        self.label = check_classifier_dir(self.path, label)
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.path), **LOAD_OPTIONS)
            self.model = AutoModelForSequenceClassification.from_pretrained(
                str(self.path), use_safetensors=True, **LOAD_OPTIONS
            )
        except Exception as exc:  # transformers/safetensors raise many kinds for a bad dir
            raise ConfigError(
                f"{self.path}: not a loadable sequence-classification directory: {first_line(exc)}"
            ) from None
        if not getattr(self.tokenizer, "is_fast", False):
            raise ConfigError(f"{self.path}: needs a fast tokenizer (a tokenizer.json)")
        self.model.to(device).eval()
        self.device = device
        self._torch = torch
        self._lock = threading.Lock()
        config = self.model.config
        positions = int(getattr(config, "max_position_embeddings", 0) or 0) or 512
        declared = int(min(getattr(self.tokenizer, "model_max_length", positions), 10**6))
        self.max_length = max(8, min(positions, declared))
        self.stride = min(STRIDE, self.max_length // 4)
        self.sigmoid = int(config.num_labels) == 1
        names = getattr(config, "id2label", {}) or {}
        self.label_name = str(names.get(self.label, f"LABEL_{self.label}"))

    def __repr__(self) -> str:
        return f"InjectionClassifier({str(self.path)!r}, label={self.label_name!r})"

    def _windows(self, texts: list[str]) -> tuple[Any, list[int]]:
        enc = self.tokenizer(
            texts,
            truncation=True,
            max_length=self.max_length,
            stride=self.stride,
            return_overflowing_tokens=True,
            padding=True,
            return_tensors="pt",
        )
        return enc, enc.pop("overflow_to_sample_mapping").tolist()

    def windows(self, text: str) -> list[str]:
        """The windows of ``text`` the model reads (decoded), first to last."""
        with self._lock:
            enc, _ = self._windows([text])
        return [self.tokenizer.decode(ids, skip_special_tokens=True) for ids in enc["input_ids"]]

    def probabilities(self, texts: list[str]) -> list[float]:
        """The injection probability of each text (its highest window's)."""
        if not texts:
            return []
        torch = self._torch
        with self._lock:
            enc, owner = self._windows(texts)
            inputs = {
                k: v.to(self.device)
                for k, v in enc.items()
                if k in ("input_ids", "attention_mask", "token_type_ids")
            }
            scores: list[float] = []
            with torch.inference_mode():
                for start in range(0, len(owner), BATCH):
                    batch = {k: v[start : start + BATCH] for k, v in inputs.items()}
                    logits = self.model(**batch).logits.float()
                    if self.sigmoid:
                        p = torch.sigmoid(logits[:, 0])
                    else:
                        p = torch.softmax(logits, dim=-1)[:, self.label]
                    scores += p.tolist()
        out = [0.0] * len(texts)
        for i, s in zip(owner, scores, strict=True):
            out[i] = max(out[i], float(s))
        return out

    def probability(self, texts: list[str]) -> float:
        """The highest injection probability over ``texts`` (0 when there are none)."""
        return max(self.probabilities(texts), default=0.0)
