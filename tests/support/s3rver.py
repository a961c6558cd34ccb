"""A local S3-compatible server that checks SigV4 signatures, for the storage tests.

moto does not check presigned-URL signatures or expiry, so the tests that need
an S3 server to refuse expired or tampered URLs run against s3rver instead:
the fork ``@20minutes/s3rver``, which verifies SigV4 header and query-string
signatures (the original ``s3rver`` 3.7.1 accepts any SigV4 signature).

:func:`ensure_installed` installs the packages pinned in
``s3rver-package.json`` with npm into ``.run/s3rver/`` (git ignores ``.run/``),
once: later runs reuse the install until that file changes. The pinned
packages include a Node 24 binary for this os/cpu, so the server does not
depend on the system's Node version; npm itself needs ``node`` and ``npm`` on
PATH (``scripts/test.sh`` installs them). :class:`S3rverServer` runs it on a
free port of 127.0.0.1 with its own data directory and log file.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import platform
import re
import shutil
import subprocess
from pathlib import Path
from types import TracebackType

import requests

from tests.support.processes import REPO, Process

PACKAGE_JSON = Path(__file__).with_name("s3rver-package.json")
CACHE_DIR = REPO / ".run" / "s3rver"
PACKAGE = "@20minutes/s3rver"
# s3rver's built-in account.
ACCESS_KEY_ID = "S3RVER"
SECRET_ACCESS_KEY = "S3RVER"
INSTALL_TIMEOUT = 600.0

_NODE_ARCH = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}
_MIN_SYSTEM_NODE = 20  # the fork's router needs Node 20 APIs
_READY = re.compile(r"S3RVER READY (http://\S+)")

# Runs the server through its JS API (the fork's npm tarball ships no bin/
# script). argv[1] is a JSON object of options; node's default SIGTERM
# handling ends the process.
_LAUNCHER = """
const opts = JSON.parse(process.argv[1]);
const S3rver = require(opts.lib);
new S3rver({
  address: opts.address,
  port: opts.port,
  directory: opts.directory,
  silent: opts.silent,
  configureBuckets: opts.buckets.map((name) => ({ name, configs: [] })),
})
  .run()
  .then(({ address, port }) => console.log(`S3RVER READY http://${address}:${port}`))
  .catch((err) => {
    console.error(err);
    process.exit(1);
  });
"""


class S3rverUnavailable(RuntimeError):
    """s3rver could not be installed or started on this machine."""


def _missing_tools_message(missing: list[str]) -> str:
    return (
        f"{' and '.join(missing)} not found on PATH: the s3rver storage tests install their "
        "S3 server with npm. Run `bash scripts/test.sh`, which installs nodejs and npm "
        "from Debian's packages, or install them yourself."
    )


def ensure_installed(
    cache_dir: Path = CACHE_DIR, *, package_json: Path = PACKAGE_JSON, package: str = PACKAGE
) -> Path:
    """Install the packages pinned in ``package_json`` into ``cache_dir`` unless done;
    return the directory of ``package`` (other test tools installed with npm use it too:
    tests/support/openai_node.py)."""
    spec = package_json.read_bytes()
    marker = cache_dir / ".installed"
    package_dir = cache_dir / "node_modules" / package
    digest = hashlib.sha256(spec).hexdigest()
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one installer at a time
        if _installed(marker, digest, package_dir):
            return package_dir
        missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
        if missing:
            raise S3rverUnavailable(_missing_tools_message(missing))
        marker.unlink(missing_ok=True)
        (cache_dir / "package.json").write_bytes(spec)
        argv = [
            shutil.which("npm") or "npm",
            "install",
            "--no-audit",
            "--no-fund",
            # The fork declares node >= 24 while npm may run on an older system
            # node; the server itself runs on the pinned node binary.
            "--engine-strict=false",
            "--prefix",
            str(cache_dir),
        ]
        try:
            result = subprocess.run(
                argv, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise S3rverUnavailable(
                f"`{' '.join(argv)}` did not finish in {INSTALL_TIMEOUT:.0f}s"
            ) from exc
        if result.returncode != 0:
            output = (result.stdout + result.stderr)[-4000:]
            raise S3rverUnavailable(
                f"`{' '.join(argv)}` failed with exit code {result.returncode}:\n{output}"
            )
        if not (package_dir / "package.json").is_file():
            raise S3rverUnavailable(f"npm install finished but {package_dir} is missing")
        marker.write_text(digest)
    return package_dir


def _installed(marker: Path, digest: str, package_dir: Path) -> bool:
    try:
        return marker.read_text() == digest and (package_dir / "package.json").is_file()
    except OSError:
        return False


def node_binary(cache_dir: Path = CACHE_DIR) -> str:
    """The pinned Node binary for this machine, else a new enough ``node`` on PATH."""
    arch = _NODE_ARCH.get(platform.machine().lower())
    if arch and platform.system() == "Linux":
        pinned = cache_dir / "node_modules" / f"node-linux-{arch}" / "bin" / "node"
        if pinned.is_file():
            return str(pinned)
    system = shutil.which("node")
    if system is None:
        raise S3rverUnavailable(_missing_tools_message(["node"]))
    version = subprocess.run(
        [system, "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    match = re.match(r"v(\d+)\.", version)
    if not match or int(match.group(1)) < _MIN_SYSTEM_NODE:
        raise S3rverUnavailable(
            f"no pinned Node binary for {platform.system()}/{platform.machine()} and "
            f"{system} is {version or 'unknown'}; s3rver needs Node >= {_MIN_SYSTEM_NODE}"
        )
    return system


class S3rverServer:
    """One s3rver process on a free port of 127.0.0.1, serving ``buckets``.

    Its data lives in ``data_dir``; its output goes to ``log_dir/s3rver.log``
    and is shown when it fails to start.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        log_dir: Path,
        buckets: tuple[str, ...] = (),
        cache_dir: Path = CACHE_DIR,
    ) -> None:
        self.data_dir = data_dir
        self.log_dir = log_dir
        self.buckets = tuple(buckets)
        self.cache_dir = cache_dir
        self.url = ""
        self.process: Process | None = None

    def start(self, timeout: float = 30.0) -> S3rverServer:
        package_dir = ensure_installed(self.cache_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        options = {
            "lib": str(package_dir / "lib" / "s3rver.js"),
            "address": "127.0.0.1",
            "port": 0,  # the launcher prints the port it got
            "directory": str(self.data_dir),
            # Request lines and server-side errors go to the log file.
            "silent": False,
            "buckets": list(self.buckets),
        }
        argv = [node_binary(self.cache_dir), "-e", _LAUNCHER, json.dumps(options)]
        self.process = Process("s3rver", argv, log_dir=self.log_dir).start()
        try:
            self.process.wait_until(self._answers, timeout=timeout)
        except RuntimeError as exc:
            self.stop()
            raise S3rverUnavailable(str(exc)) from exc
        return self

    def _answers(self) -> bool:
        assert self.process is not None
        match = _READY.search(self.process.log())
        if not match:
            return False
        requests.get(f"{match.group(1)}/", timeout=1)  # any HTTP answer will do
        self.url = match.group(1)
        return True

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited after 10 s."""
        if self.process is not None:
            self.process.stop()

    def __enter__(self) -> S3rverServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
