"""Run an upstream simulator: ``python -m simulators <provider> [options]``.

Example::

    python -m simulators openai --host 127.0.0.1 --port 0 \\
        --latency 0.0 --failure-rate 0.0 --api-key sim-key

Serves the app with ``gevent.pywsgi`` so hundreds of slow requests can be held
at once. When listening it prints exactly one line to stdout,
``SIMULATOR READY http://<host>:<port>`` (``--port 0`` picks a free port), and
exits with status 0 on SIGTERM or SIGINT. New providers register their app
factory in :data:`PROVIDERS`.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import importlib  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable  # noqa: E402

import gevent  # noqa: E402
from gevent.event import Event  # noqa: E402
from gevent.pywsgi import WSGIServer  # noqa: E402

from simulators import PROVIDERS  # noqa: E402
from simulators.state import SimConfig  # noqa: E402

AppFactory = Callable[[SimConfig], Callable]


def app_factory(provider: str) -> AppFactory:
    return importlib.import_module(PROVIDERS[provider]).create_app


class NoDelayWSGIServer(WSGIServer):
    """TCP_NODELAY on every connection: gevent.pywsgi sends a response's headers
    and body separately, and with Nagle's algorithm the body waits for the
    client's delayed ACK (~40 ms on Linux) on every small answer."""

    def handle(self, sock, address):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        return super().handle(sock, address)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simulators", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="provider", required=True, metavar="PROVIDER")
    for name in PROVIDERS:
        p = sub.add_parser(name, help=f"simulate the {name} upstream")
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, default=0, help="0 = pick a free port")
        p.add_argument("--latency", type=float, default=0.0, help="seconds before answering")
        p.add_argument("--failure-rate", type=float, default=0.0, help="0..1")
        p.add_argument("--fail-status", type=int, default=500, help="status of injected failures")
        p.add_argument("--retry-after", type=float, default=None, help="Retry-After on failures")
        p.add_argument("--fail-next", type=int, default=0, help="fail the next N requests")
        p.add_argument("--api-key", default=None, help="required bearer key (default: any)")
        p.add_argument("--backlog", type=int, default=2048, help="listen backlog")
        p.add_argument("--access-log", action="store_true", help="log requests to stderr")
    return parser


def _raise_fd_limit() -> None:
    """Allow many concurrent connections (best effort)."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = hard if hard != resource.RLIM_INFINITY else 65536
        if soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ImportError, ValueError, OSError):
        pass


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = SimConfig.validated(
            {
                "latency": args.latency,
                "failure_rate": args.failure_rate,
                "fail_status": args.fail_status,
                "retry_after": args.retry_after,
                "fail_next": args.fail_next,
                "api_key": args.api_key,
            }
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    _raise_fd_limit()
    app = app_factory(args.provider)(config)
    server = NoDelayWSGIServer(
        (args.host, args.port),
        app,
        backlog=args.backlog,
        log=sys.stderr if args.access_log else None,
    )
    stop = Event()
    gevent.signal_handler(signal.SIGTERM, stop.set)
    gevent.signal_handler(signal.SIGINT, stop.set)
    server.start()

    host = args.host
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    print(f"SIMULATOR READY http://{host}:{server.server_port}", flush=True)

    stop.wait()
    server.stop(timeout=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
