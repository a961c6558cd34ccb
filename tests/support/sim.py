"""Per-test use of a shared upstream simulator: faults and counts of one test's own requests.

The session's simulators serve every test (and the workers of the live stack),
so a test must not change what other requests get, nor count requests it did
not send. Every simulator (see ``simulators/base.py``) fails a request that
names a fault (:data:`simulators.state.FAULT_DIRECTIVE`) in its prompt or in
an ``X-Sim-Fault`` header, and only such requests: :func:`fault` puts one in a
prompt (what a test can reach through the gateway), :func:`fault_header` in a
header (for a test that calls a simulator itself). :func:`tagged` makes a
prompt unique to the test, and :func:`sent_with` reads back just the requests
whose prompt carries it.
"""

from __future__ import annotations

import secrets
from typing import Any

import requests

FAULT_HEADER = "X-Sim-Fault"


def tagged(prompt: str = "x") -> str:
    """``prompt`` with a token no other request carries."""
    return f"{prompt} tag-{secrets.token_hex(6)}"


def directive(status: int, times: int, *, retry_after: float | None = None) -> str:
    """A fault no other request names: the first ``times`` requests that carry it fail."""
    after = f",retry-after={retry_after:g}" if retry_after is not None else ""
    return f"sim-fault={status}x{times}{after}@{secrets.token_hex(6)}"


def fault(status: int, times: int, *, retry_after: float | None = None, prompt: str = "x") -> str:
    """A prompt whose first ``times`` upstream requests fail with ``status``; then they don't."""
    return f"{prompt} {directive(status, times, retry_after=retry_after)}"


def fault_header(status: int, times: int, *, retry_after: float | None = None) -> dict[str, str]:
    """Headers whose first ``times`` requests to a simulator fail with ``status``."""
    return {FAULT_HEADER: directive(status, times, retry_after=retry_after)}


def prompt_of(entry: dict[str, Any]) -> Any:
    """The prompt a simulator's log entry carries, wherever its protocol puts it.

    ``json.prompt`` (OpenAI, BFL, fal, Ark, Zhipu), ``json.input.prompt``
    (Replicate) or the ``prompt`` form part (Stability); None if there is none.
    """
    body = entry.get("json")
    if isinstance(body, dict):
        if "prompt" in body:
            return body["prompt"]
        data = body.get("input")
        if isinstance(data, dict):
            return data.get("prompt")
    form = entry.get("form")
    return form.get("prompt") if isinstance(form, dict) else None


def sent_with(sim: str, prompt: str) -> list[dict[str, Any]]:
    """The simulator's log entries of requests whose prompt is ``prompt``, oldest first."""
    log = requests.get(f"{sim}/_sim/requests", timeout=5).json()
    return [e for e in log if prompt_of(e) == prompt]
