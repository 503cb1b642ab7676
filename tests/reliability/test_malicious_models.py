"""Code-executing model files through every Bastion loading path (issue 14): each is refused
with one line and exit 2, and its payload never runs (the marker file never appears).

The corpus's torch and pickle items (tests/scan/corpus.py, each proven to fire under
``pickle.load``/``torch.load(weights_only=False)``/``joblib.load`` in the corpus's own slow
test) are saved as ``model.pt`` (and ``model.ts`` for the TorchScript path) and given to
``load_model`` with and without ``--entry-point``, ``bastion assess``, ``bastion harden``,
``bastion guard fit`` and ``bastion serve`` (a real process: a refused model must stop it
before "serving on").
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bastion.errors import BastionError
from bastion.models.io import load_model
from tests.cli_runner import run_main
from tests.scan.corpus import CorpusItem, build_corpus

PICKLE_FORMATS = {"pickle", "torch-zip", "torch-legacy", "torch-tar", "joblib"}
# one per format family: the fast subset
FAST = {
    "pickle-p0:os.system",
    "pickle-p2:build-setstate-injection",
    "pickle-p4:stack-global-from-memo",
    "torch-zip:renamed-folder",
    "torch-legacy:payload-in-magic-number-pickle",
    "torch-tar:storages-member",
    "joblib:zlib",
}
ENTRY = "tiny_arch:build"


@pytest.fixture(scope="module")
def items(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[CorpusItem], Path]:
    root = tmp_path_factory.mktemp("hostile")
    marker = root / "MARKER"
    built = build_corpus(root / "files", marker, verify=False, benign=False)
    return [i for i in built if i.malicious and i.format in PICKLE_FORMATS], marker


def _select(items: list[CorpusItem], fast: bool) -> list[CorpusItem]:
    return [i for i in items if (i.technique in FAST) == fast]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "tiny_arch.py").write_text(
        "from torch import nn\n\ndef build():\n    return nn.Linear(2, 2)\n"
    )
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _as(item: CorpusItem, folder: Path, name: str) -> Path:
    dst = folder / name
    shutil.copyfile(item.path, dst)
    return dst


def _one_line_refusal(code: int, err: str, item: CorpusItem) -> None:
    lines = err.strip().splitlines()
    assert code == 2, f"{item.technique}: exit {code}: {err[-300:]}"
    assert len(lines) == 1, f"{item.technique}: {len(lines)} lines: {err[-300:]}"
    assert "refused" in lines[0].lower(), f"{item.technique}: {lines[0]}"
    assert "weights_only=False" not in lines[0]


def _library_paths(item: CorpusItem, marker: Path, work: Path) -> None:
    for target, kwargs in (
        (_as(item, work, "model.pt"), {"entry_point": ENTRY}),
        (_as(item, work, "model.pt"), {}),
        (_as(item, work, "model.ts"), {}),  # the TorchScript path
    ):
        with pytest.raises(BastionError, match=r"(?i)refused"):
            load_model(target, **kwargs)
        assert not marker.exists(), f"{item.technique} ran through load_model({kwargs})"


def _cli_paths(item: CorpusItem, marker: Path, work: Path, monkeypatch, capsys) -> None:
    model = _as(item, work, "model.pt")
    for args in (
        ("assess", "--model", model, "--data", "digits", "--n-eval", 2, "--out", work / "a"),
        (
            "assess",
            "--model",
            model,
            "--entry-point",
            ENTRY,
            "--data",
            "digits",
            "--out",
            work / "b",
        ),
        (
            "harden",
            "--model",
            model,
            "--recipe",
            "standard",
            "--data",
            "digits",
            "--out",
            work / "h",
        ),
        ("guard", "fit", "--model", model, "--data", "digits"),
    ):
        code, _, err = run_main(monkeypatch, capsys, *args)
        _one_line_refusal(code, err, item)
        assert not marker.exists(), f"{item.technique} ran through bastion {args[0]}"


def _serve(item: CorpusItem, marker: Path, work: Path) -> None:
    model = _as(item, work, "model.pt")
    env = {**os.environ, "BASTION_DEBUG": ""}
    cmd = [sys.executable, "-m", "bastion.cli", "serve", "--model", str(model), "--port", "1"]
    proc = subprocess.run(
        cmd, cwd=work, capture_output=True, text=True, timeout=120, env=env, check=False
    )
    assert "serving on" not in proc.stdout + proc.stderr
    _one_line_refusal(proc.returncode, proc.stderr, item)
    assert not marker.exists(), f"{item.technique} ran through bastion serve"


def test_fast_subset_is_refused_on_every_path(items, workdir, monkeypatch, capsys) -> None:
    chosen, marker = items
    chosen = _select(chosen, fast=True)
    assert {i.technique for i in chosen} == FAST
    for item in chosen:
        _library_paths(item, marker, workdir)
        _cli_paths(item, marker, workdir, monkeypatch, capsys)
    _serve(chosen[0], marker, workdir)


@pytest.mark.slow
def test_every_torch_and_pickle_payload_is_refused_on_every_path(
    items, workdir, monkeypatch, capsys
) -> None:
    chosen, marker = items
    rest = _select(chosen, fast=False)
    assert len(rest) >= 40
    for item in rest:
        _library_paths(item, marker, workdir)
        _cli_paths(item, marker, workdir, monkeypatch, capsys)
    for item in [i for i in chosen if i.technique in FAST][1:]:
        _serve(item, marker, workdir)
