"""``imagegate-worker``: run a family's Celery worker command in as many processes as it needs.

Each Procfile worker line is ``imagegate-worker celery -A workers.celery_app
worker -Q <family> ...``. This launcher reads the ``-Q`` queues, then:

    every family of those queues unusable here (no upstream key, or switched
    off in the catalog)
        -> says why and waits, holding no memory (``sleep infinity``): a pool
           for models the web answers with 503 costs ~65 MB for nothing;
           set the key and restart the line
    otherwise, N = IMAGEGATE_WORKER_PROCESSES, by default 2 for generation
    queues on a machine with 2 cores or more and 1 for the webhooks queue
        -> N = 1: becomes the command (exec)
        -> N > 1: runs N copies (node names ``name``, ``name-1``, ...), passes
           SIGTERM / SIGINT / SIGQUIT / SIGHUP on to all of them, and when one
           ends, stops the others and exits with its status (so the process
           manager sees the line fail: honcho stops, systemd restarts it)

Why more than one process: a job's CPU work (Celery's consumer, HTTP,
checking and storing the image) runs under one GIL per process, so one process
uses at most about one core however many jobs wait on upstreams. Each
process sizes its own pool (``workers/pool.py``); processes of a line
share nothing but Redis, like workers on other hosts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from shared.jobs import WEBHOOK_QUEUE
from shared.settings import Settings
from workers.pool import queues_of

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP)
STOP_GRACE_SECONDS = 60.0  # after one copy ended: the others finish their jobs, then are killed


def queues_in(argv: Sequence[str]) -> list[str]:
    """The queues of a ``celery worker`` command line (``-Q a,b``, ``--queues=a``)."""
    found: list[str] = []
    for i, arg in enumerate(argv):
        if arg in ("-Q", "--queues") and i + 1 < len(argv):
            found += queues_of(argv[i + 1])
        elif arg.startswith("--queues="):
            found += queues_of(arg.split("=", 1)[1])
        elif arg.startswith("-Q") and len(arg) > 2:
            found += queues_of(arg[2:])
    return found


def why_idle(settings: Settings, queues: Sequence[str]) -> str:
    """Why none of ``queues`` can be served here, or "" when one can."""
    catalog = settings.load_catalog()
    by_queue = {f.queue: f for f in catalog.families.values()}
    reasons = []
    for queue in queues:
        family = by_queue.get(queue)
        if family is None:  # the webhooks queue, or one the catalog doesn't know
            return ""
        reason = settings.why_unusable(family)
        if not reason:
            return ""
        reasons.append(reason)
    return "; ".join(reasons)


def process_count(settings: Settings, queues: Sequence[str], cores: int | None) -> int:
    if settings.worker_processes:
        return settings.worker_processes
    if list(queues) == [WEBHOOK_QUEUE]:
        return 1
    return min(2, cores or 1)


def with_node_suffix(argv: Sequence[str], index: int) -> list[str]:
    """``argv`` with ``-n name@host`` made ``name-<index>@host`` (index 0: unchanged)."""
    out = list(argv)
    if index == 0:
        return out
    for i, arg in enumerate(out):
        if arg in ("-n", "--hostname") and i + 1 < len(out):
            name, at, host = out[i + 1].partition("@")
            out[i + 1] = f"{name}-{index}{at}{host}"
            return out
        if arg.startswith("--hostname="):
            name, at, host = arg.split("=", 1)[1].partition("@")
            out[i] = f"--hostname={name}-{index}{at}{host}"
            return out
    return [*out, "-n", f"worker-{index}@%h"]


def beside_python(command: str) -> str:
    """``celery`` from this launcher's own environment when it has one, else from PATH."""
    own = Path(sys.executable).parent / command
    return str(own) if os.sep not in command and own.exists() else command


def supervise(commands: Sequence[Sequence[str]]) -> int:
    """Run the commands; forward signals; when one ends, stop the rest. Its exit status."""
    children = [subprocess.Popen(list(c)) for c in commands]
    stopping: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        stopping.append(signum)
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    for sig in FORWARDED:
        signal.signal(sig, forward)
    pid, status = os.wait()
    code = os.waitstatus_to_exitcode(status)
    for child in children:
        if child.pid == pid:
            child.returncode = code
    if not stopping:  # one copy ended by itself: stop the others (a signal reached them all)
        forward(signal.SIGTERM, None)
    for child in children:
        try:
            child.wait(STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    return code if code >= 0 else 128 - code


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print("usage: imagegate-worker celery -A workers.celery_app worker -Q <queue> ...",
              file=sys.stderr)  # fmt: skip
        return 2
    settings = Settings.from_env()
    queues = queues_in(args)
    reason = why_idle(settings, queues)
    if reason:
        print(
            f"imagegate-worker {','.join(queues)}: nothing to run: {reason}. This line waits; "
            "restart it once that is fixed.",
            file=sys.stderr,
            flush=True,
        )
        os.execvp("sleep", ["sleep", "infinity"])
    args[0] = beside_python(args[0])
    count = process_count(settings, queues, os.cpu_count())
    if count == 1:
        os.execvp(args[0], args)
    return supervise([with_node_suffix(args, i) for i in range(count)])


if __name__ == "__main__":
    sys.exit(main())
