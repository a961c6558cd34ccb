"""The README's two set-up commands, as a new user runs them.

The first (run the gateway) is run here from a clean clone of the committed
tree with an empty environment of IMAGEGATE_* settings and no upstream keys;
the second (run the tests) is what CI runs through .ci/run.
"""

from __future__ import annotations

import base64
import io
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import requests
from openai import OpenAI
from PIL import Image

from tests.support.processes import REPO, free_port


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block, "the README must start with a bash block of set-up commands"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_readme_starts_with_run_and_test_commands_and_ci_runs_the_test_one() -> None:
    commands = readme_commands()
    assert commands[:2] == ["bash scripts/run-local.sh", "bash scripts/test.sh"]
    assert commands[1] in (REPO / ".ci" / "run").read_text()


def test_run_command_from_a_clean_clone_serves_the_openai_client(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True, timeout=120)
    port, redis_port = free_port(), free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("IMAGEGATE_") and not k.endswith("_API_KEY") and k != "VIRTUAL_ENV"
    }
    env.update(PORT=str(port), IMAGEGATE_LOCAL_REDIS_PORT=str(redis_port))
    env["PATH"] = ":".join(p for p in env["PATH"].split(":") if ".venv" not in p)
    proc = subprocess.Popen(
        ["bash", readme_commands()[0].split()[1]],
        cwd=clone,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    output: list[str] = []
    reader = threading.Thread(
        target=lambda: [output.append(line.decode(errors="replace")) for line in proc.stdout],
        daemon=True,
    )
    reader.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600  # includes creating the virtualenv and installing
        while time.monotonic() < deadline:
            assert proc.poll() is None, "".join(output)[-5000:]
            try:
                if requests.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.5)
        else:
            raise AssertionError("gateway did not come up:\n" + "".join(output)[-5000:])
        key = re.search(r"Demo API key[^:]*: (ig-\S+)", "".join(output))
        assert key, "".join(output)[-3000:]

        client = OpenAI(api_key=key.group(1), base_url=f"{base}/v1", max_retries=0, timeout=60)
        r = client.images.generate(model="local/testcard", prompt="a red fox", size="512x512", n=2)
        assert len(r.data) == 2
        image = requests.get(r.data[0].url, timeout=10)
        assert image.status_code == 200
        assert Image.open(io.BytesIO(image.content)).size == (512, 512)
        r = client.images.generate(model="local/testcard", prompt="x", response_format="b64_json")
        assert Image.open(io.BytesIO(base64.b64decode(r.data[0].b64_json))).size == (1024, 1024)
        # No upstream keys: OpenAI models are listed but not available.
        models = {m.id: m.model_extra for m in client.models.list().data}
        assert models["local/testcard"]["available"] is True
        assert models["dall-e-3"]["available"] is False
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    # The script stops the Redis it started.
    assert (
        subprocess.run(
            ["redis-cli", "-p", str(redis_port), "ping"], capture_output=True, text=True
        ).stdout.strip()
        != "PONG"
    )
