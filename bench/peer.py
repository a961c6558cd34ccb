"""A LiteLLM proxy as the benchmark's peer: the same simulator behind another gateway.

    python -m bench.peer --simulator http://127.0.0.1:9100 --simulator-key bench-upstream-key

LiteLLM lives in its own virtualenv (``.bench-venvs/litellm`` under the repo,
made by :func:`ensure_litellm` with ``python -m venv`` and pip, about a minute
the first time), because its pins (pydantic, openai, httpx, ...) are not the
gateway's. :class:`LiteLLMPeer` writes a proxy ``config.yaml`` with one model,
``compat-any``, routed as an OpenAI-compatible upstream (``openai/compat-any``
at ``<simulator>/v1``), starts ``litellm --config ... --num_workers N`` as a
process group (the tests' :class:`~tests.support.processes.Process`, so it is
always stopped) and waits until ``/v1/models`` answers with its master key::

    with LiteLLMPeer(stack.simulator_url, SIM_KEY, run_dir) as peer:
        peer.base_url, peer.api_key, peer.model, peer.version, peer.measure

What LiteLLM does with an images request for an ``openai/<name>`` model (as
of the pinned version):

* ``size`` (any ``WxH``), ``n``, ``quality`` and ``user`` go to the upstream
  unchanged.
* ``response_format`` is refused (400 ``UnsupportedParamsError``) unless the
  model is ``dall-e-2``/``dall-e-3``: any other name gets gpt-image-1's
  parameter list. ``drop_params`` would drop it silently (a ``b64_json``
  request then gets a URL), so the config declares ``base_model: dall-e-2``
  instead, which makes LiteLLM forward ``response_format`` as sent.
* The answer is the upstream's: a ``url`` item is the upstream's own URL
  (here the simulator's ``/files/...``), passed through, not downloaded or
  stored by LiteLLM; ``b64_json`` is passed through too. LiteLLM adds null
  fields (``background``, ``output_format``, ``quality``, ``usage``, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path

import requests

from bench.procs import Group
from tests.support.processes import REPO, Process, free_port

# 1.108.7 is the newest release whose ``[proxy]`` extra resolves from the
# package index this was checked against (Python 3.11, x86_64): later ones pin
# companion distributions it lacks (1.108.8: litellm-enterprise==0.1.79.post2;
# 1.110.2: litellm-proxy==1.110.2). An exact pin also keeps the figures comparable.
LITELLM_VERSION = "1.108.7"
LITELLM_REQUIREMENT = f"litellm[proxy]=={LITELLM_VERSION}"
DEFAULT_VENV = REPO / ".bench-venvs" / "litellm"
MODEL = "compat-any"
MASTER_KEY = "sk-bench-litellm-peer"
INSTALL_TIMEOUT = 1800.0  # seconds; a cold install (no pip cache) took 57 s here, 760 MB
START_TIMEOUT = 180.0  # seconds until /v1/models answers: 8 s here with 1 worker, 20 s with 2

# The proxy's environment: nothing outside this machine is reachable (and none
# of it should be asked), and nothing may point it at a database or a cache.
QUIET_ENV: dict[str, str | None] = {
    # Bundled copies instead of fetching from GitHub at import and start.
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS": "True",
    "LITELLM_LOCAL_BLOG_POSTS": "True",
    "LITELLM_LOCAL_POLICY_TEMPLATES": "True",
    "LITELLM_LOCAL_AUTOROUTER_PRESETS": "True",
    "LITELLM_TELEMETRY_DISABLED": "True",
    # WARNING also sets uvicorn's level: no access-log line per request.
    "LITELLM_LOG": "WARNING",
    "LITELLM_DONT_SHOW_FEEDBACK_BOX": "True",
    "DISABLE_ADMIN_UI": "True",
    # litellm calls load_dotenv(), which walks up from its site-packages, i.e.
    # through the repo: a developer's .env must not configure the peer.
    "PYTHON_DOTENV_DISABLED": "1",
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
    # Unset: any of these would add a database, a cache or other keys.
    "DATABASE_URL": None,
    "DIRECT_URL": None,
    "STORE_MODEL_IN_DB": None,
    "LITELLM_MASTER_KEY": None,
    "LITELLM_LICENSE": None,
    "LITELLM_CONFIG_BUCKET_NAME": None,
    "CONFIG_FILE_PATH": None,
    "REDIS_HOST": None,
    "REDIS_URL": None,
    "REDIS_PORT": None,
    "REDIS_PASSWORD": None,
    "OPENAI_API_KEY": None,
    "OPENAI_BASE_URL": None,
    "OPENAI_API_BASE": None,
    "PYTHONPATH": None,
    "VIRTUAL_ENV": None,
    "PORT": None,
    "HOST": None,
    "NUM_WORKERS": None,
}


class PeerInstallError(RuntimeError):
    """The LiteLLM virtualenv could not be made (the message holds pip's output)."""


# -- the virtualenv ------------------------------------------------------------------


def installed_version(venv_dir: Path = DEFAULT_VENV) -> str | None:
    """LiteLLM's version in ``venv_dir`` if it and the proxy's server are installed, else None.

    Looks only at package metadata and module specs: importing ``litellm``
    takes seconds.
    """
    python = venv_dir / "bin" / "python"
    if not python.exists() or not (venv_dir / "bin" / "litellm").exists():
        return None
    probe = (
        "import importlib.metadata as m, importlib.util as u\n"
        "assert all(u.find_spec(n) for n in ('litellm', 'fastapi', 'uvicorn', 'backoff'))\n"
        "print(m.version('litellm'))\n"
    )
    try:
        out = subprocess.run(
            [str(python), "-c", probe],
            capture_output=True,
            text=True,
            timeout=60,
            env=_env({}),
            cwd=venv_dir,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def ensure_litellm(venv_dir: Path = DEFAULT_VENV) -> Path:
    """The bin directory of a virtualenv holding ``litellm[proxy]`` at :data:`LITELLM_VERSION`.

    Creates ``venv_dir`` (``python -m venv``) and pip-installs
    :data:`LITELLM_REQUIREMENT` into it unless that version is already there;
    pip's output goes to ``venv_dir/pip-install.log``. Raises
    :class:`PeerInstallError` when pip fails.
    """
    venv_dir = Path(venv_dir)
    bin_dir = venv_dir / "bin"
    if installed_version(venv_dir) == LITELLM_VERSION:
        return bin_dir
    if not (bin_dir / "python").exists():
        venv_dir.parent.mkdir(parents=True, exist_ok=True)
        # sys.executable may itself be a venv's python; venv builds on its base interpreter.
        subprocess.run([sys.executable, "-m", "venv", str(venv_dir)], check=True, timeout=300)
    log_path = venv_dir / "pip-install.log"
    argv = [str(bin_dir / "python"), "-m", "pip", "install", "--disable-pip-version-check"]
    with log_path.open("w") as log:
        try:
            done = subprocess.run(
                [*argv, LITELLM_REQUIREMENT],
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=INSTALL_TIMEOUT,
                env=_env({}),
            )
        except subprocess.TimeoutExpired as exc:
            raise PeerInstallError(f"pip install timed out after {INSTALL_TIMEOUT:.0f}s") from exc
    if done.returncode != 0:
        tail = log_path.read_text(errors="replace")[-4000:]
        raise PeerInstallError(f"pip install {LITELLM_REQUIREMENT} failed:\n{tail}")
    found = installed_version(venv_dir)
    if found != LITELLM_VERSION:
        raise PeerInstallError(f"installed litellm {found!r}, expected {LITELLM_VERSION}")
    return bin_dir


# -- the proxy -----------------------------------------------------------------------


def proxy_config(simulator_url: str, simulator_key: str, master_key: str = MASTER_KEY) -> dict:
    """LiteLLM's ``config.yaml`` (as a dict; JSON is YAML) for one OpenAI-compatible model."""
    return {
        "model_list": [
            {
                "model_name": MODEL,
                "litellm_params": {
                    "model": f"openai/{MODEL}",
                    "api_base": f"{simulator_url.rstrip('/')}/v1",
                    "api_key": simulator_key,
                    # LiteLLM picks an image model's parameter list by its name; any
                    # name but dall-e-* gets gpt-image-1's, which has no response_format
                    # (400 UnsupportedParamsError). dall-e-2's list forwards
                    # response_format, size (any WxH), n, quality and user as sent.
                    # (drop_params would instead drop response_format silently.)
                    "base_model": "dall-e-2",
                },
                "model_info": {"mode": "image_generation"},
            }
        ],
        "general_settings": {
            "master_key": master_key,
            # No database: spend logs and key/user tracking would need one.
            "disable_spend_logs": True,
        },
    }


class LiteLLMPeer:
    """``litellm --config`` on a free loopback port, in front of the simulator; a context manager.

    ``base_url`` (``http://127.0.0.1:<port>/v1``), ``api_key`` (the master
    key), ``model`` (``compat-any``) and ``version`` are set once started;
    :meth:`pids` / :attr:`measure` name its process tree as ``"litellm"``
    (the uvicorn supervisor and its workers).
    """

    component = "litellm"

    def __init__(
        self,
        simulator_url: str,
        simulator_key: str,
        run_dir: Path,
        workers: int = 2,
        port: int | None = None,
        *,
        venv_dir: Path = DEFAULT_VENV,
        install: bool = True,
        env: Mapping[str, str | None] | None = None,
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        self.simulator_url = simulator_url.rstrip("/")
        self.simulator_key = simulator_key
        self.run_dir = Path(run_dir)
        self.workers = workers
        self.port = port
        self.venv_dir = Path(venv_dir)
        self.install = install
        self.extra_env = dict(env or {})
        self.start_timeout = start_timeout
        self.api_key = MASTER_KEY
        self.model = MODEL
        self.base_url = ""
        self.version = ""
        self.config_path = self.run_dir / "litellm-config.yaml"
        self.process: Process | None = None

    def __enter__(self) -> LiteLLMPeer:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> LiteLLMPeer:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        bin_dir = ensure_litellm(self.venv_dir) if self.install else self.venv_dir / "bin"
        self.version = installed_version(self.venv_dir) or ""
        if not self.version:
            raise PeerInstallError(f"no litellm[proxy] in {self.venv_dir}")
        port = self.port or free_port()
        config = proxy_config(self.simulator_url, self.simulator_key, self.api_key)
        self.config_path.write_text(json.dumps(config, indent=2) + "\n")
        argv = [
            str(bin_dir / "litellm"), "--config", str(self.config_path),
            "--host", "127.0.0.1", "--port", str(port), "--num_workers", str(self.workers),
        ]  # fmt: skip
        # cwd = the run directory, not the repo: nothing of the gateway's on its path.
        self.process = Process(
            "litellm",
            argv,
            env=_env(self.extra_env),
            log_dir=self.run_dir,
            cwd=self.run_dir,
        ).start()
        self.base_url = f"http://127.0.0.1:{port}/v1"
        self.process.wait_until(self._ready, timeout=self.start_timeout)
        return self

    def _ready(self) -> bool:
        response = requests.get(
            f"{self.base_url}/models",
            headers={"Authorization": f"Bearer {self.api_key}"},
            timeout=2,
        )
        return response.ok and any(m.get("id") == self.model for m in response.json()["data"])

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=15)

    def pids(self) -> dict[str, list[int]]:
        """Root pids by component, for :class:`bench.procs.Group` (which adds the children)."""
        assert self.process is not None, "not started"
        return {self.component: [self.process.pid]}

    @property
    def measure(self) -> Group:
        return Group(self.pids())

    def log(self) -> str:
        return self.process.log() if self.process else ""


def _env(extra: Mapping[str, str | None]) -> dict[str, str | None]:
    """QUIET_ENV plus ``extra`` (None unsets), for :class:`Process` (merges os.environ)."""
    env = {**QUIET_ENV, **extra}
    merged = {**os.environ, **env}
    return {k: v for k, v in merged.items() if v is not None}


# -- command line --------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.peer", description=__doc__.split("\n")[0])
    p.add_argument(
        "--simulator", required=True, help="simulator base URL, e.g. http://127.0.0.1:9100"
    )
    p.add_argument("--simulator-key", required=True, help="the simulator's --api-key")
    p.add_argument("--port", type=int, default=None, help="default: a free port")
    p.add_argument("--workers", type=int, default=2, help="litellm --num_workers")
    p.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="LiteLLM's virtualenv")
    p.add_argument("--run-dir", type=Path, default=REPO / ".run" / "bench-peer")
    args = p.parse_args(argv)
    print(f"preparing {LITELLM_REQUIREMENT} in {args.venv} ...", file=sys.stderr, flush=True)
    ensure_litellm(args.venv)
    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # also when started with SIGINT ignored (`&`)
        signal.signal(sig, lambda *_: stopped.set())
    with LiteLLMPeer(
        args.simulator, args.simulator_key, args.run_dir, args.workers, args.port,
        venv_dir=args.venv,
    ) as peer:  # fmt: skip
        print(
            f"LiteLLM {peer.version} ready: base URL {peer.base_url}  key {peer.api_key}  "
            f"model {peer.model}  (log {peer.process.log_path if peer.process else ''}; "
            "Ctrl-C stops it)",
            flush=True,
        )
        while not stopped.wait(1.0):
            if peer.process is not None and not peer.process.running():
                print(f"litellm exited:\n{peer.log()[-4000:]}", file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
