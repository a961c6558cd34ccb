"""Asynchronous load generator for any OpenAI-compatible image endpoint.

    python -m bench.load --base-url http://127.0.0.1:8080/v1 --api-key KEY --model bench/url \\
        --concurrency 64 --duration 30 --size 512x512 --response-format url \\
        --upstream-latency 1.0 [--simulator http://127.0.0.1:9100] [--json out.json]

``concurrency`` clients each send ``POST {base-url}/images/generations``
back to back (a closed loop) until ``--requests`` have been sent in all or
``--duration`` seconds have passed. With ``--requests`` equal to
``--concurrency`` every request starts at once (the "held at once" test).
``--simulator URL`` first sets that simulator's latency to
``--upstream-latency`` (``POST /_sim/config``), so the same command measures
any gateway configured to call the simulator.

Each request's start, end, status and error are recorded; the summary gives
p50/p90/p95/p99 of the end-to-end latency and of the *added* latency (end to
end minus ``--upstream-latency``), errors by kind, and completed images per
second. A one-line progress display goes to stderr.

Two HTTP clients: ``aiohttp`` (default when installed: the cheapest per
request, which matters when the load generator shares the machine with the
gateway) and ``openai`` (the official ``AsyncOpenAI`` SDK, as users call it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from shared.memory_tuning import keep_large_buffers

try:
    import aiohttp
except ImportError:  # pragma: no cover - depends on the environment
    aiohttp = None

PROMPT = "a lighthouse on a cliff at dusk, benchmark"


@dataclass(frozen=True)
class LoadSpec:
    base_url: str
    api_key: str
    model: str
    concurrency: int = 64
    requests: int | None = None  # total requests; None: run for `duration`
    duration: float | None = None  # seconds; None: run for `requests`
    size: str = "512x512"
    response_format: str = "url"
    upstream_latency: float = 0.0  # subtracted to get the added latency
    timeout: float = 150.0  # per request
    client: str = "auto"  # aiohttp | openai | auto
    prompt: str = PROMPT
    ramp: float = 0.0  # spread the clients' first requests over this many seconds
    warmup: float = 0.0  # requests started in the first `warmup` seconds are not recorded

    def __post_init__(self) -> None:
        if self.requests is None and self.duration is None:
            raise ValueError("give requests or duration")


@dataclass
class Sample:
    start: float  # seconds since the run started
    end: float
    status: int  # HTTP status; 0 = no answer (connection error, timeout)
    error: str = ""
    nbytes: int = 0
    job_id: str = ""  # the gateway's x-job-id header, when it sends one
    wall_start: float = 0.0  # unix time, to line up with the gateway's job records

    @property
    def wall_end(self) -> float:
        return self.wall_start + self.latency

    @property
    def latency(self) -> float:
        return self.end - self.start


@dataclass
class LoadResult:
    spec: LoadSpec
    samples: list[Sample] = field(default_factory=list)
    warmup_samples: list[Sample] = field(default_factory=list)  # not counted
    wall: float = 0.0  # from the first start to the last end
    client_cpu: float = 0.0  # CPU seconds the load generator itself used

    @property
    def images_total(self) -> int:
        """Images delivered during the whole run, warm-up included (for CPU per image)."""
        every = self.samples + self.warmup_samples
        return sum(1 for s in every if s.status == 200 and not s.error)

    @property
    def ok(self) -> list[Sample]:
        return [s for s in self.samples if s.status == 200 and not s.error]

    def errors(self) -> dict[str, int]:
        return dict(
            Counter(
                f"{s.status} {s.error}".strip() for s in self.samples if s.status != 200 or s.error
            )
        )

    def summary(self) -> dict[str, Any]:
        ok = self.ok
        latencies = sorted(s.latency for s in ok)
        added = [x - self.spec.upstream_latency for x in latencies]
        first = min((s.start for s in self.samples), default=0.0)
        last = max((s.end for s in self.samples), default=0.0)
        window = max(1e-9, last - first)
        return {
            "requests": len(self.samples),
            "ok": len(ok),
            "errors": len(self.samples) - len(ok),
            "error_kinds": self.errors(),
            "wall_s": round(window, 3),
            "completion_s": round(last, 3),  # run start -> last answer
            "images_per_s": round(len(ok) / window, 2),
            "latency_ms": percentiles_ms(latencies),
            "added_ms": percentiles_ms(added),
            "mean_response_bytes": int(sum(s.nbytes for s in ok) / len(ok)) if ok else 0,
            "client_cpu_s": round(self.client_cpu, 2),
        }


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not sorted_values:
        return math.nan
    pos = (len(sorted_values) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def percentiles_ms(sorted_values: list[float]) -> dict[str, float | None]:
    if not sorted_values:
        return {k: None for k in ("min", "p50", "p90", "p95", "p99", "max", "mean")}
    out = {f"p{q}": percentile(sorted_values, q) for q in (50, 90, 95, 99)}
    out.update(min=sorted_values[0], max=sorted_values[-1])
    out["mean"] = sum(sorted_values) / len(sorted_values)
    return {k: round(v * 1000, 2) for k, v in out.items()}


# -- clients -------------------------------------------------------------------------

Send = Callable[[], Awaitable[tuple[int, str, int, str]]]  # -> (status, error, bytes, job id)


def _check_body(payload: Any, response_format: str) -> str:
    """'' if the body is an images response with the asked-for format, else what is wrong."""
    try:
        item = payload["data"][0]
    except (KeyError, IndexError, TypeError):
        return "no data"
    value = item.get("b64_json" if response_format == "b64_json" else "url")
    return "" if isinstance(value, str) and value else f"no {response_format}"


class _AiohttpClient:
    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        # Keep-alive shorter than gunicorn's 5 s, so no request races a server-side close.
        connector = aiohttp.TCPConnector(
            limit=spec.concurrency, limit_per_host=0, keepalive_timeout=4.0, ttl_dns_cache=300
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=spec.timeout),
            headers={"Authorization": f"Bearer {spec.api_key}"},
        )
        self.url = spec.base_url.rstrip("/") + "/images/generations"
        self.body = {
            "model": spec.model,
            "prompt": spec.prompt,
            "n": 1,
            "size": spec.size,
            "response_format": spec.response_format,
        }

    async def send(self) -> tuple[int, str, int, str]:
        try:
            async with self.session.post(self.url, json=self.body) as response:
                raw = await response.read()
                job = response.headers.get("x-job-id", "")
                if response.status != 200:
                    return response.status, _error_code(raw), len(raw), job
                problem = _check_body(json.loads(raw), self.spec.response_format)
                return 200, problem, len(raw), job
        except TimeoutError:
            return 0, "timeout", 0, ""
        except aiohttp.ClientError as exc:
            return 0, type(exc).__name__, 0, ""
        except ValueError:
            return 200, "invalid json", 0, ""

    async def close(self) -> None:
        await self.session.close()


class _OpenAIClient:
    def __init__(self, spec: LoadSpec) -> None:
        import openai

        self.spec = spec
        self.openai = openai
        self.client = openai.AsyncOpenAI(
            api_key=spec.api_key, base_url=spec.base_url, max_retries=0, timeout=spec.timeout
        )

    async def send(self) -> tuple[int, str, int, str]:
        openai = self.openai
        try:
            raw = await self.client.images.with_raw_response.generate(
                model=self.spec.model,
                prompt=self.spec.prompt,
                n=1,
                size=self.spec.size,  # type: ignore[arg-type] - any WxH
                response_format=self.spec.response_format,  # type: ignore[arg-type]
            )
            result = raw.parse()
        except openai.APIStatusError as exc:
            return exc.status_code, str(getattr(exc, "code", "") or "error"), 0, ""
        except openai.APITimeoutError:
            return 0, "timeout", 0, ""
        except openai.APIConnectionError as exc:
            return 0, type(exc.__cause__ or exc).__name__, 0, ""
        job = raw.headers.get("x-job-id", "")
        item = result.data[0] if result.data else None
        value = getattr(item, "b64_json" if self.spec.response_format == "b64_json" else "url", "")
        if not value:
            return 200, f"no {self.spec.response_format}", 0, job
        return 200, "", len(value), job

    async def close(self) -> None:
        await self.client.close()


def _error_code(raw: bytes) -> str:
    try:
        err = json.loads(raw)["error"]
        return str(err.get("code") or err.get("type") or "error")
    except (ValueError, KeyError, TypeError, AttributeError):
        return "error"


def make_client(spec: LoadSpec) -> _AiohttpClient | _OpenAIClient:
    kind = spec.client
    if kind == "auto":
        kind = "aiohttp" if aiohttp is not None else "openai"
    if kind == "aiohttp":
        if aiohttp is None:
            raise SystemExit("aiohttp is not installed: pip install aiohttp, or --client openai")
        return _AiohttpClient(spec)
    if kind == "openai":
        return _OpenAIClient(spec)
    raise ValueError(f"unknown client {kind!r}")


def client_name(spec: LoadSpec) -> str:
    if spec.client != "auto":
        return spec.client
    return "aiohttp" if aiohttp is not None else "openai"


# -- the run -------------------------------------------------------------------------


class Progress:
    """One status line on stderr: rewritten in place on a terminal, every 5 s otherwise."""

    def __init__(self, label: str, result: LoadResult, total: int | None, enabled: bool) -> None:
        self.label = label
        self.result = result
        self.total = total
        self.enabled = enabled
        self.in_flight = 0
        self.tty = sys.stderr.isatty()
        self._task: asyncio.Task | None = None
        self._t0 = time.monotonic()
        self._last = (self._t0, 0)

    def start(self) -> None:
        if self.enabled:
            self._t0 = time.monotonic()
            self._last = (self._t0, 0)
            self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._print(final=True)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(0.5 if self.tty else 5.0)
            self._print()

    def line(self) -> str:
        samples = self.result.samples
        now = time.monotonic()
        elapsed = now - self._t0
        done = len(samples) + len(self.result.warmup_samples)
        errors = sum(1 for s in samples if s.status != 200 or s.error)
        recent = [s.latency for s in samples[-200:] if s.status == 200]
        p50 = f"{percentile(sorted(recent), 50) * 1000:7.0f} ms" if recent else "      - ms"
        of = f"/{self.total}" if self.total else ""
        last_t, last_done = self._last
        rate = (done - last_done) / (now - last_t) if now > last_t else 0.0
        self._last = (now, done)
        phase = "warm-up " if elapsed < self.result.spec.warmup else ""
        return (
            f"[{self.label}] {phase}{elapsed:6.1f}s  done {done}{of}  in flight "
            f"{self.in_flight:4d}  errors {errors}  {rate:7.1f}/s  recent p50 {p50}"
        )

    def _print(self, final: bool = False) -> None:
        if self.tty:
            end = "\n" if final else ""
            sys.stderr.write("\r\033[K" + self.line() + end)
        else:
            sys.stderr.write(self.line() + "\n")
        sys.stderr.flush()


async def run(spec: LoadSpec, *, label: str = "load", progress: bool = True) -> LoadResult:
    """Run the load described by ``spec``; returns every request's sample."""
    result = LoadResult(spec)
    client = make_client(spec)
    total = spec.requests
    sent = 0
    cpu0 = time.process_time()
    t0 = time.monotonic()
    stop_at = t0 + spec.warmup + spec.duration if spec.duration is not None else math.inf
    display = Progress(label, result, total, progress)

    async def one_client(index: int) -> None:
        nonlocal sent
        if spec.ramp > 0:
            # Without a ramp, clients of a fixed-latency upstream stay in lockstep:
            # all send together and all come back together, in bursts.
            await asyncio.sleep(spec.ramp * index / spec.concurrency)
        while True:
            if (total is not None and sent >= total) or time.monotonic() >= stop_at:
                return
            sent += 1
            display.in_flight += 1
            wall = time.time()
            start = time.monotonic() - t0
            try:
                status, error, nbytes, job = await client.send()
            except Exception as exc:  # noqa: BLE001 - count it, keep going
                status, error, nbytes, job = 0, type(exc).__name__, 0, ""
            display.in_flight -= 1
            end = time.monotonic() - t0
            sample = Sample(start, end, status, error, nbytes, job, wall)
            if start >= spec.warmup:
                result.samples.append(sample)
            else:
                result.warmup_samples.append(sample)

    display.start()
    try:
        await asyncio.gather(*(one_client(i) for i in range(spec.concurrency)))
    finally:
        await display.stop()
        await client.close()
    result.wall = time.monotonic() - t0
    result.client_cpu = time.process_time() - cpu0
    return result


def set_simulator_latency(simulator_url: str, seconds: float) -> None:
    import requests

    response = requests.post(f"{simulator_url}/_sim/config", json={"latency": seconds}, timeout=10)
    response.raise_for_status()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n")[0])
    p.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8080/v1")
    p.add_argument("--api-key", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--concurrency", type=int, default=64)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--requests", type=int, help="total requests")
    group.add_argument("--duration", type=float, help="seconds")
    p.add_argument("--size", default="512x512")
    p.add_argument("--response-format", choices=["url", "b64_json"], default="url")
    p.add_argument("--upstream-latency", type=float, default=0.0, help="seconds, subtracted")
    p.add_argument("--simulator", help="simulator base URL whose latency to set first")
    p.add_argument("--timeout", type=float, default=150.0, help="per request, seconds")
    p.add_argument("--ramp", type=float, default=0.0, help="spread client starts (seconds)")
    p.add_argument("--warmup", type=float, default=0.0, help="seconds not recorded at first")
    p.add_argument("--client", choices=["auto", "aiohttp", "openai"], default="auto")
    p.add_argument("--json", help="write the summary (and samples) to this file")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keep_large_buffers()  # as the gateway does: fewer page faults per image
    spec = LoadSpec(
        base_url=args.base_url,
        api_key=args.api_key,
        model=args.model,
        concurrency=args.concurrency,
        requests=args.requests,
        duration=args.duration,
        size=args.size,
        response_format=args.response_format,
        upstream_latency=args.upstream_latency,
        timeout=args.timeout,
        client=args.client,
        ramp=args.ramp,
        warmup=args.warmup,
    )
    if args.simulator:
        set_simulator_latency(args.simulator, args.upstream_latency)
    result = asyncio.run(run(spec, progress=not args.no_progress))
    summary = {"client": client_name(spec), **result.summary()}
    print(json.dumps(summary, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            samples = [
                [round(s.start, 4), round(s.end, 4), s.status, s.error] for s in result.samples
            ]
            json.dump({"summary": summary, "samples": samples}, fh)
    return 0 if summary["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
