"""The official openai-node SDK, run against the gateway by ``openai_node_client.mjs``.

:func:`run` installs the packages pinned in ``openai-node-package.json`` with npm
into ``.run/openai-node/`` once (the installer of :mod:`tests.support.s3rver`:
later runs reuse the install until that file changes), then runs the driver
with the pinned Node binary (or a system Node >= 20) and returns what each
scenario answered: the SDK's parsed response, its list of stream events, or
the error it raised (``status`` and OpenAI's ``error`` body).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import REPO
from tests.support.s3rver import S3rverUnavailable, ensure_installed, node_binary

PACKAGE_JSON = Path(__file__).with_name("openai-node-package.json")
DRIVER = Path(__file__).with_name("openai_node_client.mjs")
CACHE_DIR = REPO / ".run" / "openai-node"
RUN_TIMEOUT = 180.0


def run(
    base_url: str, api_key: str, *, images: list[Path], mask: Path, prompt: str,
    scenarios: list[str] | None = None,
) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Each scenario's outcome by name: ``{"result": ...}`` or ``{"error": ...}``."""
    try:
        package_dir = ensure_installed(CACHE_DIR, package_json=PACKAGE_JSON, package="openai")
        node = node_binary(CACHE_DIR)
    except S3rverUnavailable as exc:  # the installer's error: npm, node or the registry
        pytest.fail(f"openai-node could not be installed: {exc}")
    options = {
        "sdk": (package_dir / "index.mjs").as_uri(),
        "baseURL": f"{base_url}/v1",
        "apiKey": api_key,
        "images": [str(path) for path in images],
        "mask": str(mask),
        "prompt": prompt,
        "scenarios": scenarios,
    }
    done = subprocess.run(
        [node, str(DRIVER), json.dumps(options)],
        capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"openai-node driver failed:\n{done.stderr[-4000:]}"
    outcomes = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return {outcome.pop("scenario"): outcome for outcome in outcomes}
