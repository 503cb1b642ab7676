"""The real `bastion` entry point run in-process, as a user's shell sees it."""

from __future__ import annotations

import sys

import pytest

from bastion.cli import main


def run_main(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """``bastion ARGS`` through ``main()``: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["bastion", *[str(a) for a in args]])
    with pytest.raises(SystemExit) as exc:
        main()
    out = capsys.readouterr()
    return int(exc.value.code or 0), out.out, out.err
