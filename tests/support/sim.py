"""Per-test use of a shared upstream simulator: faults and counts of one test's own requests.

The session's simulators serve every test (and the workers of the live stack),
so a test must not change what other requests get, nor count requests it did
not send. :func:`fault` names a fault in the prompt
(:data:`simulators.state.FAULT_DIRECTIVE`): only requests carrying that
prompt fail. :func:`tagged` makes a prompt unique to the test, and
:func:`sent_with` reads back just the requests whose prompt carries it.
"""

from __future__ import annotations

import secrets
from typing import Any

import requests


def tagged(prompt: str = "x") -> str:
    """``prompt`` with a token no other request carries."""
    return f"{prompt} tag-{secrets.token_hex(6)}"


def fault(status: int, times: int, *, retry_after: float | None = None, prompt: str = "x") -> str:
    """A prompt whose first ``times`` upstream requests fail with ``status``; then they don't."""
    after = f",retry-after={retry_after:g}" if retry_after is not None else ""
    return f"{prompt} sim-fault={status}x{times}{after}@{secrets.token_hex(6)}"


def sent_with(sim: str, prompt: str) -> list[dict[str, Any]]:
    """The simulator's log entries of requests whose JSON prompt is ``prompt``, oldest first."""
    log = requests.get(f"{sim}/_sim/requests", timeout=5).json()
    return [e for e in log if isinstance(e.get("json"), dict) and e["json"].get("prompt") == prompt]
