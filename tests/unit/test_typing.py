"""User workflow code type-checks under ``mypy --strict``, and misuse is rejected."""

from __future__ import annotations

from pathlib import Path

import pytest
from mypy import api

from tests.support import ROOT

GOOD = '''
from typing import Any
from durable import Retry, Workflow, assign, seconds

wf = Workflow("typed", timeout=seconds(5))

@wf.step
def first(input: dict[str, Any]) -> dict[str, Any]:
    return dict(input)

@wf.step(retry=Retry(max_attempts=2), timeout=seconds(1))
def second(ctx: dict[str, Any]) -> dict[str, Any]:
    return assign(ctx, done=True)

reveal_type(first)
'''

BAD = '''
from durable import Retry, Workflow
wf = Workflow("typed_bad")

@wf.step(retry=3)
def first(ctx: dict) -> dict:
    return ctx

Retry(backoff="fibonacci")
'''


def _check(tmp_path: Path, source: str) -> str:
    path = tmp_path / "snippet.py"
    path.write_text(source)
    out, err, _ = api.run(["--strict", "--no-incremental", "--cache-dir", str(tmp_path / ".mypy"),
                           "--config-file", "", str(path)])
    return out + err


def test_user_code_type_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MYPYPATH", str(ROOT / "runtime"))
    out = _check(tmp_path, GOOD)
    assert "error" not in out, out
    assert 'Revealed type is "def (input: dict[str, Any]) -> dict[str, Any]"' in out


def test_misuse_is_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MYPYPATH", str(ROOT / "runtime"))
    out = _check(tmp_path, BAD)
    assert 'snippet.py:5: error: No overload variant' in out and "retry: Retry | None" in out, out
    assert 'Argument "backoff" to "Retry"' in out and "fibonacci" in out, out
