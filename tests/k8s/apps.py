"""Workflows only the Kubernetes tests need (not examples): loaded by a module's worker via ``WORKER_APPS``."""

from __future__ import annotations

from typing import Any

from durable import Workflow

big = Workflow("k8s_big_result")


@big.step
def make_big(input: dict[str, Any]) -> dict[str, Any]:
    """A result well past the operator's 16 KiB status bound (but far below the engine's context limit)."""
    size = int(input.get("kib", 24)) * 1024
    return {"size": size, "blob": "x" * size}


broken = Workflow("k8s_fails")


@broken.step
def explode(input: dict[str, Any]) -> dict[str, Any]:
    raise ValueError(str(input.get("why", "boom")))


WORKFLOWS = ("k8s_big_result", "k8s_fails")
