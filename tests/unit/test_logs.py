"""Structured logs: JSON lines carrying the run id and step given in ``extra``."""

from __future__ import annotations

import json
import logging

from durable.logs import JsonFormatter, TextFormatter


def _record() -> logging.LogRecord:
    logger = logging.getLogger("durable.test")
    return logger.makeRecord("durable.test", logging.INFO, __file__, 1, "step failed", (), None,
                             extra={"run_id": "r-1", "step": "charge", "attempt": 2})


def test_json_formatter_carries_run_and_step() -> None:
    line = json.loads(JsonFormatter().format(_record()))
    assert line["message"] == "step failed" and line["level"] == "info"
    assert (line["run_id"], line["step"], line["attempt"]) == ("r-1", "charge", 2)


def test_text_formatter_for_terminals() -> None:
    text = TextFormatter().format(_record())
    assert "step failed" in text and "run_id=r-1" in text and "step=charge" in text
