"""The web front-end refuses to start with a catalog its adapters cannot serve.

The worker checks every model's adapter ``options`` when it starts
(:func:`workers.adapters.validate_catalog`); gunicorn's config does the same in the
master, before it forks a web process, so a broken ``options`` entry stops the
deployment with one line naming the model and the option instead of answering that
model's requests with 500.
"""

from __future__ import annotations

import os
import runpy
import signal
import subprocess
from pathlib import Path

import pytest
from gunicorn import util

from tests.support.processes import BIN, REPO, free_port

BAD_OPTIONS = """
[[models]]
id = "typo/fal"
family = "fal"
upstream = "fal-ai/z-image/turbo"
price = "0.001"
size_rule = { kind = "max_side", min = 64, max = 1024 }
options = { poll_interval = "fast" }
"""


def _overlay(tmp_path: Path, text: str = BAD_OPTIONS) -> Path:
    path = tmp_path / "overlay.toml"
    path.write_text(text)
    return path


@pytest.mark.fast
def test_gunicorn_config_stops_on_bad_adapter_options(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(util, "write_error", util.write_error)  # the config replaces it
    monkeypatch.setenv("IMAGEGATE_CATALOG_OVERLAYS", str(_overlay(tmp_path)))
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(REPO / "api" / "gunicorn_conf.py"))
    message = str(info.value.code)
    assert message.startswith("imagegate: ") and "\n" not in message
    assert "'typo/fal'" in message and "options.poll_interval" in message


@pytest.mark.fast
def test_gunicorn_config_loads_with_good_options(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(util, "write_error", util.write_error)
    good = BAD_OPTIONS.replace('poll_interval = "fast"', "poll_interval = 0.5")
    monkeypatch.setenv("IMAGEGATE_CATALOG_OVERLAYS", str(_overlay(tmp_path, good)))
    assert runpy.run_path(str(REPO / "api" / "gunicorn_conf.py"))["worker_class"] == "gevent"


def test_gunicorn_exits_with_the_message_before_serving(tmp_path: Path) -> None:
    """The real server: it exits at once with the one line, and never listens."""
    env = {
        "PATH": str(BIN),
        "IMAGEGATE_CATALOG_OVERLAYS": str(_overlay(tmp_path)),
        "IMAGEGATE_REDIS_URL": "redis://127.0.0.1:1/0",  # never reached
        "IMAGEGATE_STORAGE_DIR": str(tmp_path / "images"),
        "IMAGEGATE_HOST": "127.0.0.1",
        "PORT": str(free_port()),
    }
    server = subprocess.Popen(
        [str(BIN / "gunicorn"), "-c", "api/gunicorn_conf.py", "api.wsgi:app"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own group, so a server that did start is stopped whole
    )
    try:
        _, stderr = server.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.communicate()
        pytest.fail("gunicorn started with a catalog whose options its adapter refuses")
    assert server.returncode != 0
    assert "imagegate: " in stderr and "options.poll_interval" in stderr
    assert "Traceback" not in stderr and "Booting worker" not in stderr
