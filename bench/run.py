"""Run the standard benchmark scenarios on this machine; print a table, write JSON and charts.

    python -m bench.run                       # the full run (about 7 minutes on 2 cores)
    python -m bench.run --quick               # the smoke version (tiny numbers, no targets)
    python -m bench.run --scenarios overhead throughput --out bench/results

Scenarios (targets are for a 2-core machine):

  overhead    64 clients, upstream latency 1 s, url, 512x512:
              gateway's share of the latency p50 <= 10 ms, p99 <= 40 ms
  held        2,000 requests at once, upstream latency 20 s:
              0 errors, all done by 21.5 s, gateway RSS <= 1.5 GiB
  long        200 clients, upstream latency 60 s: 0 errors, no job queued > 1 s
  throughput  upstream latency 0, url, 256x256, 60 s: >= 200 images/s
  b64         as overhead with 1024x1024 PNG and b64_json:
              added latency and peak RSS within 2x of url mode
  scale-out   throughput with 1, 2, 4 worker processes x 1, 2 web processes

By default a private stack (``bench.stack``) is started and stopped: the
Procfile as shipped (``--tuned`` for the earlier tuned stack); the
gateway's memory (RSS, and PSS which counts pages shared after fork once) and
the CPU time of each component are measured while each scenario runs.
``--base-url/--api-key/--model --simulator URL`` point the same scenarios
(except scale-out) at another gateway configured to call that simulator.

Writes ``<out>/results.json``, ``<out>/results.md`` (the table) and one PNG
per scenario (``<out>/<scenario>.png``).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import multiprocessing
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import charts
from bench.load import (
    LoadResult,
    LoadSpec,
    client_name,
    percentiles_ms,
    run,
    set_simulator_latency,
)
from bench.procs import Group, cpu_delta, machine_busy_seconds
from bench.stack import MODEL_B64, MODEL_URL, SIM_KEY, TUNED, Stack, StackConfig
from shared.memory_tuning import keep_large_buffers

SCENARIOS = ("overhead", "held", "long", "throughput", "b64", "scale-out")
# Order of execution on the shared stack: the 2,000-request test last, so the
# threads it makes the worker pools start do not weigh on the others.
RUN_ORDER = ("overhead", "b64", "throughput", "long", "held", "scale-out")
GIB = 1024**3
UPSTREAM_MODEL = "compat-any"  # the simulator's model behind bench/url and bench/b64


@dataclass(frozen=True)
class Sizes:
    """The numbers of one run: full or quick."""

    overhead_clients: int = 64
    overhead_latency: float = 1.0
    overhead_seconds: float = 30.0
    held_requests: int = 2000
    held_latency: float = 20.0
    held_slack: float = 1.5  # the last answer by held_latency + this
    long_clients: int = 200
    long_latency: float = 60.0
    long_rounds: int = 2  # each client's requests, one after another
    throughput_clients: int = 64
    throughput_seconds: float = 60.0
    warmup_seconds: float = 3.0
    scale_workers: tuple[int, ...] = (1, 2, 4)
    scale_web: tuple[int, ...] = (1, 2)
    scale_seconds: float = 20.0
    quick: bool = False


FULL = Sizes()
QUICK = Sizes(
    overhead_clients=8,
    overhead_latency=0.2,
    overhead_seconds=1.5,
    held_requests=40,
    held_latency=1.0,
    long_clients=20,
    long_latency=1.0,
    throughput_clients=8,
    throughput_seconds=1.5,
    warmup_seconds=0.5,
    scale_workers=(1, 2),
    scale_web=(1,),
    scale_seconds=1.0,
    quick=True,
)


@dataclass
class Target:
    """What the scenarios run against: our private stack or another gateway."""

    base_url: str
    api_key: str
    model_url: str
    model_b64: str
    simulator_url: str
    simulator_key: str = SIM_KEY
    stack: Stack | None = None
    group: Group | None = None  # processes whose memory/CPU is measured
    # components counted as the gateway (idle_workers: the Procfile's other families)
    gateway: tuple[str, ...] = ("web", "workers", "idle_workers", "redis")

    def set_latency(self, seconds: float) -> None:
        set_simulator_latency(self.simulator_url, seconds)


# -- measuring while a load runs -------------------------------------------------------


class Sampler:
    """Samples the gateway's total RSS every ``interval`` s (PSS every few samples).

    The sampling runs in a forked child process, so reading ``/proc`` never
    holds the load generator's GIL while it times requests.
    """

    def __init__(self, target: Target, interval: float = 0.5, pss_every: int = 6) -> None:
        self.target = target
        self.interval = interval
        self.pss_every = pss_every
        self.times: list[float] = []
        self.rss: list[int] = []
        self.pss: list[int] = []
        self.by_component: dict[str, int] = {}
        self.first_by_component: dict[str, int] = {}  # at the start of the load
        self.cpu: dict[str, float] = {}
        self.machine: dict[str, float] = {}
        self._cpu0: dict = {}
        self._busy0 = (0.0, 0.0, 0.0)
        self._child: multiprocessing.process.BaseProcess | None = None
        self._stop = None
        self._receive = None

    def __enter__(self) -> Sampler:
        group = self.target.group
        if group is not None:
            self._cpu0 = group.cpu()
            self._busy0 = (machine_busy_seconds(), time.process_time(), time.monotonic())
            ctx = multiprocessing.get_context("fork")
            self._stop = ctx.Event()
            self._receive, send = ctx.Pipe(duplex=False)
            self._child = ctx.Process(
                target=_sample,
                args=(group.roots, self.target.gateway, self.interval, self.pss_every),
                kwargs={"stop": self._stop, "send": send},
                daemon=True,
            )
            self._child.start()
            send.close()
        return self

    def __exit__(self, *exc: object) -> None:
        group = self.target.group
        if group is None or self._child is None:
            return
        self._stop.set()
        if self._receive.poll(30):
            data = self._receive.recv()
            self.times, self.rss, self.pss = data["times"], data["rss"], data["pss"]
            self.by_component = data["by_component"]
            self.first_by_component = data["first"]
        self._child.join(5)
        self.cpu = cpu_delta(self._cpu0, group.cpu())
        busy0, client0, t0 = self._busy0
        elapsed = max(1e-9, time.monotonic() - t0)
        busy = machine_busy_seconds() - busy0
        client = time.process_time() - client0
        self.machine = {
            "cores_busy": round(busy / elapsed, 2),
            # CPU time used by neither the stack nor this load generator: other work
            # on the machine, which would distort the figures if it were large.
            "other_cores_busy": round(
                max(0.0, busy - sum(self.cpu.values()) - client) / elapsed, 2
            ),
        }

    def figures(self, images: int) -> dict[str, Any]:
        if not self.rss:
            return {}
        return {
            "peak_rss_mib": round(max(self.rss) / 2**20, 1),
            "peak_pss_mib": round(max(self.pss) / 2**20, 1) if self.pss else None,
            "rss_at_peak_by_component_mib": {
                c: round(v / 2**20, 1) for c, v in self.by_component.items()
            },
            "rss_at_start_by_component_mib": {
                c: round(v / 2**20, 1) for c, v in self.first_by_component.items()
            },
            "cpu_s": {c: round(v, 2) for c, v in self.cpu.items()},
            "cpu_ms_per_image": {
                c: round(v * 1000 / images, 2) for c, v in self.cpu.items() if images
            },
            **self.machine,
        }


def _sample(roots: dict, gateway: tuple[str, ...], interval: float, pss_every: int, *, stop, send):
    """The sampler child: RSS of the gateway's components until ``stop`` is set."""
    group = Group(roots)
    times: list[float] = []
    rss: list[int] = []
    pss: list[int] = []
    by_component: dict[str, int] = {}
    first: dict[str, int] = {}
    t0 = time.monotonic()
    n = 0
    while True:
        with_pss = n % pss_every == 0
        memory = group.memory(pss=with_pss)
        if not first:
            first = {c: memory[c][0] for c in memory}
        parts = [memory[c] for c in gateway if c in memory]
        total = sum(m[0] for m in parts)
        times.append(time.monotonic() - t0)
        rss.append(total)
        if with_pss:
            pss.append(sum(m[1] for m in parts))
        if total >= max(rss):
            by_component = {c: memory[c][0] for c in memory}
        n += 1
        if stop.wait(interval):
            break
    send.send(
        {"times": times, "rss": rss, "pss": pss, "by_component": by_component, "first": first}
    )
    send.close()


def load(target: Target, model: str, **kw: Any) -> LoadSpec:
    return LoadSpec(base_url=target.base_url, api_key=target.api_key, model=model, **kw)


def measured(
    target: Target, spec: LoadSpec, label: str, warmup: float
) -> tuple[LoadResult, Sampler]:
    """Run ``spec`` while sampling; requests started in the first ``warmup`` s are not counted.

    The clients' first requests are spread over one upstream latency (a ramp), so
    they do not all come back at the same instant for the whole run.
    """
    spec = replace(spec, warmup=warmup, ramp=spec.upstream_latency if spec.duration else 0.0)
    with Sampler(target) as sampler:
        result = asyncio.run(run(spec, label=label))
    return result, sampler


PHASES = {
    "web_in": "client sends -> job record created (HTTP, auth, validation, admission)",
    "queue": "job created -> a worker claims it (enqueue, broker, pick-up)",
    "worker": "claimed -> finished, minus the upstream latency (upstream call overhead, "
    "download, image check, store)",
    "web_out": "finished -> client has the answer (notification, job read, response)",
}


def phases(target: Target, result: LoadResult, upstream_latency: float, limit: int = 3000) -> dict:
    """Where the added latency goes, from the gateway's job records (ms, p50 and p99).

    Client and gateway share this machine's clock, so a request's unix start/end
    line up with its job's ``created``/``started``/``finished``.
    """
    if target.stack is None:
        return {}
    from shared.jobs import JobStore
    from shared.redis_client import connect

    jobs = JobStore(connect(target.stack.env["IMAGEGATE_REDIS_URL"]), retention_seconds=3600)
    ok = [x for x in result.ok if x.job_id]
    step = max(1, len(ok) // limit)
    spans: dict[str, list[float]] = {name: [] for name in PHASES}
    for sample in ok[::step]:
        job = jobs.get(sample.job_id)
        if job is None or job.started is None or job.finished is None:
            continue
        spans["web_in"].append(job.created - sample.wall_start)
        spans["queue"].append(job.started - job.created)
        spans["worker"].append(job.finished - job.started - upstream_latency)
        spans["web_out"].append(sample.wall_end - job.finished)
    out = {}
    for name, values in spans.items():
        ms = percentiles_ms(sorted(values))
        out[name] = {"p50": ms["p50"], "p99": ms["p99"], "mean": ms["mean"]}
    return out


def report(
    name: str,
    setup: str,
    result: LoadResult,
    sampler: Sampler,
    figures: dict[str, Any],
    target: str,
    met: bool | None,
    *,
    where: Target | None = None,
    upstream_latency: float = 0.0,
) -> dict[str, Any]:
    summary = result.summary()
    out = {
        "scenario": name,
        "setup": setup,
        "figures": figures,
        "target": target,
        "met": met,
        "load": summary,
        "resources": sampler.figures(result.images_total),
    }
    if where is not None:
        out["phases_ms"] = phases(where, result, upstream_latency)
    return out


# -- scenarios -------------------------------------------------------------------------


def upstream_alone(t: Target, spec: LoadSpec, s: Sizes, label: str) -> dict[str, Any]:
    """The same load sent straight to the simulator: what the upstream itself adds.

    The simulator answers after its configured latency plus its own few
    milliseconds (Flask, JSON, timer slack); those are not the gateway's.
    """
    direct = replace(
        spec,
        base_url=f"{t.simulator_url}/v1",
        api_key=t.simulator_key,
        model=UPSTREAM_MODEL,
        duration=min(10.0, spec.duration or 10.0),
        warmup=min(2.0, s.warmup_seconds),
        ramp=spec.upstream_latency,
    )
    result = asyncio.run(run(direct, label=f"{label}: upstream alone"))
    summary = result.summary()
    return {
        "upstream_alone_p50_ms": summary["added_ms"]["p50"],
        "upstream_alone_p99_ms": summary["added_ms"]["p99"],
        "upstream_alone_errors": summary["errors"],
    }


def _gateway_share(figures: dict[str, Any]) -> None:
    """Added latency minus what the upstream alone adds (p50, p99): the gateway's own."""
    for q in ("p50", "p99"):
        added, alone = figures.get(f"added_{q}_ms"), figures.get(f"upstream_alone_{q}_ms")
        if added is not None and alone is not None:
            figures[f"gateway_{q}_ms"] = round(added - alone, 2)


def scenario_overhead(t: Target, s: Sizes, out: Path, ctx: dict) -> dict[str, Any]:
    latency = s.overhead_latency
    t.set_latency(latency)
    spec = load(t, t.model_url, concurrency=s.overhead_clients,
        duration=s.overhead_seconds, size="512x512", response_format="url",
        upstream_latency=latency,
    )  # fmt: skip
    alone = upstream_alone(t, spec, s, "overhead")
    result, sampler = measured(t, spec, "overhead", s.warmup_seconds)
    summary = result.summary()
    added = summary["added_ms"]
    figures = {
        "added_p50_ms": added["p50"],
        "added_p95_ms": added["p95"],
        "added_p99_ms": added["p99"],
        "errors": summary["errors"],
        "images_per_s": summary["images_per_s"],
        "peak_rss_mib": sampler.figures(result.images_total).get("peak_rss_mib"),
        **alone,
    }
    _gateway_share(figures)
    met = None
    if not s.quick:
        # "End-to-end minus upstream": the upstream's own time is what it takes when
        # called directly (configured latency + its few ms), so the gateway's share
        # is judged; without that measurement, the stricter added latency.
        p50 = figures.get("gateway_p50_ms", added["p50"])
        p99 = figures.get("gateway_p99_ms", added["p99"])
        met = _ok(p50, 10) and _ok(p99, 40) and not summary["errors"]
    _latency_chart(out / "overhead.png", "overhead", result, latency, figures)
    return report(
        "overhead",
        f"{s.overhead_clients} clients, upstream latency {latency:g} s, url, 512x512, "
        f"{s.overhead_seconds:g} s",
        result, sampler, figures, "gateway's share of added p50 <= 10 ms, p99 <= 40 ms", met,
        where=t, upstream_latency=latency,
    )  # fmt: skip


def scenario_b64(t: Target, s: Sizes, out: Path, ctx: dict) -> dict[str, Any]:
    """The overhead load at 1024x1024, answered as b64_json, against the same load as url.

    Both legs use the same model and upstream behaviour (by default the upstream
    answers a URL the worker downloads, ``bench/url``), so the ratio is what the
    gateway's base64 answer costs and nothing else. ``--model-b64 bench/b64``
    makes the upstream answer base64 as well (as gpt-image-1 does).
    """
    latency = s.overhead_latency
    t.set_latency(latency)
    spec = load(
        t, t.model_b64, concurrency=s.overhead_clients, duration=s.overhead_seconds,
        size="1024x1024", response_format="b64_json", upstream_latency=latency,
    )  # fmt: skip
    # The upstream as the gateway calls it: our bench/url model asks it for a URL.
    upstream_spec = replace(spec, response_format="url") if t.model_b64 == MODEL_URL else spec
    alone = upstream_alone(t, upstream_spec, s, "b64")
    url_result, url_sampler = measured(
        t, replace(spec, response_format="url"), "b64: url leg", s.warmup_seconds
    )
    result, sampler = measured(t, spec, "b64", s.warmup_seconds)
    summary, url_summary = result.summary(), url_result.summary()
    added, url_added = summary["added_ms"], url_summary["added_ms"]
    res = sampler.figures(result.images_total)
    url_res = url_sampler.figures(url_result.images_total)
    figures = {
        "added_p50_ms": added["p50"],
        "added_p95_ms": added["p95"],
        "added_p99_ms": added["p99"],
        "errors": summary["errors"],
        "images_per_s": summary["images_per_s"],
        "peak_rss_mib": res.get("peak_rss_mib"),
        "response_mib": round(summary["mean_response_bytes"] / 2**20, 2),
        "url_added_p50_ms": url_added["p50"],
        "url_added_p99_ms": url_added["p99"],
        "url_errors": url_summary["errors"],
        "url_images_per_s": url_summary["images_per_s"],
        "url_peak_rss_mib": url_res.get("peak_rss_mib"),
        "url_cpu_ms_per_image": url_res.get("cpu_ms_per_image"),
        **alone,
    }
    _gateway_share(figures)
    ratios = {
        "p50": _ratio(added["p50"], url_added["p50"]),
        "p99": _ratio(added["p99"], url_added["p99"]),
        "peak_rss": _ratio(figures["peak_rss_mib"], figures["url_peak_rss_mib"]),
    }
    figures["ratio_to_url"] = ratios
    met: bool | None = None
    if not s.quick:
        met = (
            all(r is not None and r <= 2.0 for r in ratios.values())
            and not summary["errors"]
            and not url_summary["errors"]
        )
    _latency_chart(
        out / "b64.png", "b64", result, latency, figures,
        compare=("b64_json", "url (same load)", url_result),
    )  # fmt: skip
    upstream = {MODEL_URL: "url (downloaded)", MODEL_B64: "b64_json"}.get(
        t.model_b64, "as the model answers"
    )
    return report(
        "b64",
        f"{s.overhead_clients} clients, upstream latency {latency:g} s, 1024x1024 PNG, "
        f"b64_json vs url (upstream answers {upstream}), {s.overhead_seconds:g} s each",
        result, sampler, figures, "added latency and peak RSS within 2x of url mode", met,
        where=t, upstream_latency=latency,
    )  # fmt: skip


def scenario_throughput(t: Target, s: Sizes, out: Path, ctx: dict) -> dict[str, Any]:
    t.set_latency(0.0)
    spec = load(t, t.model_url, concurrency=s.throughput_clients,
        duration=s.throughput_seconds, size="256x256", response_format="url",
    )  # fmt: skip
    result, sampler = measured(t, spec, "throughput", s.warmup_seconds)
    summary = result.summary()
    figures = {
        "images_per_s": summary["images_per_s"],
        "errors": summary["errors"],
        "latency_p50_ms": summary["latency_ms"]["p50"],
        "latency_p99_ms": summary["latency_ms"]["p99"],
    }
    met = None if s.quick else summary["images_per_s"] >= 200 and not summary["errors"]
    _latency_chart(out / "throughput.png", "throughput", result, 0.0, figures, rate=True)
    return report(
        "throughput",
        f"{s.throughput_clients} clients, upstream latency 0, url, 256x256, "
        f"{s.throughput_seconds:g} s",
        result, sampler, figures, ">= 200 images/s", met, where=t,
    )  # fmt: skip


def scenario_held(t: Target, s: Sizes, out: Path, ctx: dict) -> dict[str, Any]:
    n, latency = s.held_requests, s.held_latency
    # Warm-up at a short latency with the same concurrency: the worker pools start
    # their threads and the clients open their connections, as in a running gateway.
    t.set_latency(min(1.0, latency / 4))
    warm = load(t, t.model_url, concurrency=n, requests=n, size="512x512")
    asyncio.run(run(warm, progress=False))
    t.set_latency(latency)
    spec = load(t, t.model_url, concurrency=n, requests=n, size="512x512",
        response_format="url", upstream_latency=latency, timeout=latency + 90,
    )  # fmt: skip
    result, sampler = measured(t, spec, "held", 0)
    summary = result.summary()
    res = sampler.figures(result.images_total)
    figures = {
        "errors": summary["errors"],
        "completion_s": summary["completion_s"],
        "added_p50_ms": summary["added_ms"]["p50"],
        "added_p99_ms": summary["added_ms"]["p99"],
        "peak_rss_mib": res.get("peak_rss_mib"),
        "peak_pss_mib": res.get("peak_pss_mib"),
        "held_job_kib": per_held_job(res, n),
    }
    met = None
    if not s.quick:
        rss_ok = figures["peak_rss_mib"] is None or figures["peak_rss_mib"] * 2**20 <= 1.5 * GIB
        met = not summary["errors"] and summary["completion_s"] <= latency + s.held_slack and rss_ok
    _latency_chart(
        out / "held.png", "held", result, latency, figures, sampler=sampler, completion=True
    )
    return report(
        "held",
        f"{n} requests at once, upstream latency {latency:g} s, url, 512x512",
        result, sampler, figures,
        f"0 errors, all done by {latency + s.held_slack:g} s, RSS <= 1.5 GiB", met,
        where=t, upstream_latency=latency,
    )  # fmt: skip


def scenario_long(t: Target, s: Sizes, out: Path, ctx: dict) -> dict[str, Any]:
    """A slow upstream (60 s) under 200 clients: nothing may wait in a queue for a thread.

    Each client sends ``long_rounds`` requests one after another; the job
    records say how long each job waited between admission and a worker
    starting it (``started - created``).
    """
    n, latency = s.long_clients, s.long_latency
    t.set_latency(latency)
    spec = load(t, t.model_url, concurrency=n, requests=n * s.long_rounds, size="512x512",
        response_format="url", upstream_latency=latency, timeout=latency + 90,
    )  # fmt: skip
    result, sampler = measured(t, spec, "long", 0)
    summary = result.summary()
    waits = queue_waits(t, result)
    figures = {
        "errors": summary["errors"],
        "requests": summary["ok"] + summary["errors"],
        "added_p50_ms": summary["added_ms"]["p50"],
        "added_p99_ms": summary["added_ms"]["p99"],
        "queue_wait_max_ms": round(max(waits) * 1000, 1) if waits else None,
        "queue_wait_p99_ms": percentiles_ms(sorted(waits))["p99"] if waits else None,
        "peak_rss_mib": sampler.figures(result.images_total).get("peak_rss_mib"),
    }
    met = None
    if not s.quick and waits:
        met = not summary["errors"] and max(waits) <= 1.0
    _latency_chart(out / "long.png", "long", result, latency, figures)
    return report(
        "long",
        f"{n} clients x {s.long_rounds} requests, upstream latency {latency:g} s, url, 512x512",
        result, sampler, figures, "0 errors, no job waits in a queue longer than 1 s", met,
        where=t, upstream_latency=latency,
    )  # fmt: skip


def queue_waits(target: Target, result: LoadResult) -> list[float]:
    """Seconds each answered job waited from admission until a worker started it."""
    if target.stack is None:
        return []
    from shared.jobs import JobStore
    from shared.redis_client import connect

    jobs = JobStore(connect(target.stack.env["IMAGEGATE_REDIS_URL"]), retention_seconds=3600)
    waits = []
    for sample in result.ok:
        job = jobs.get(sample.job_id) if sample.job_id else None
        if job is not None and job.started is not None:
            waits.append(job.started - job.created)
    return waits


def per_held_job(resources: dict[str, Any], n: int) -> dict[str, float]:
    """What one held request cost in memory, by component (KiB): (peak - start) / n."""
    peak = resources.get("rss_at_peak_by_component_mib") or {}
    start = resources.get("rss_at_start_by_component_mib") or {}
    return {
        c: round(max(0.0, peak[c] - start.get(c, 0.0)) * 1024 / n, 1)
        for c in peak
        if c != "simulator" and n
    }


def scenario_scale_out(t: Target, s: Sizes, out: Path, ctx: dict) -> dict[str, Any]:
    if t.stack is None:
        return {"scenario": "scale-out", "skipped": "needs the private stack", "met": None}
    base = t.stack.config
    rows = []
    series = []
    for web in s.scale_web:
        for workers in s.scale_workers:
            cfg = replace(base, web_processes=web, worker_processes=workers)
            run_dir = Path(tempfile.mkdtemp(prefix="scale-", dir=t.stack.run_dir))
            label = f"{workers}w x {web}web"
            _say(f"scale-out: starting {cfg.describe()}")
            with Stack(cfg, run_dir) as stack:
                sub = _target_for(stack)
                sub.set_latency(0.0)
                spec = load(sub, sub.model_url, concurrency=s.throughput_clients,
                    duration=s.scale_seconds, size="256x256", response_format="url",
                )  # fmt: skip
                result, sampler = measured(sub, spec, f"scale {label}", s.warmup_seconds)
            summary = result.summary()
            rows.append(
                {
                    "workers": workers,
                    "web": web,
                    "images_per_s": summary["images_per_s"],
                    "errors": summary["errors"],
                    "latency_p50_ms": summary["latency_ms"]["p50"],
                    "resources": sampler.figures(result.images_total),
                }
            )
            series.append((label, [x.latency * 1000 for x in result.ok]))
    per_config = {f"{r['workers']}w x {r['web']}web": r["images_per_s"] for r in rows}
    charts.bars(
        out / "scale-out.png",
        f"scale-out: images/s, {s.throughput_clients} clients, latency 0, 256x256 url",
        "images per second",
        per_config,
    )
    charts.histogram(
        out / "scale-out-latency.png",
        "scale-out: end-to-end latency per configuration",
        "latency (ms)",
        series,
    )
    errors = sum(r["errors"] for r in rows)
    return {
        "scenario": "scale-out",
        "setup": (
            f"throughput ({s.throughput_clients} clients, 256x256 url, {s.scale_seconds:g} s "
            f"each) with {', '.join(map(str, s.scale_workers))} worker and "
            f"{', '.join(map(str, s.scale_web))} web processes"
        ),
        "figures": {"images_per_s": per_config, "errors": errors},
        "target": "grows with processes until the cores are full",
        "met": None,
        "configs": rows,
    }


SCENARIO_FUNCS: dict[str, Callable[[Target, Sizes, Path, dict], dict[str, Any]]] = {
    "overhead": scenario_overhead,
    "held": scenario_held,
    "long": scenario_long,
    "throughput": scenario_throughput,
    "b64": scenario_b64,
    "scale-out": scenario_scale_out,
}


# -- charts, table, machine ---------------------------------------------------------------


def _latency_chart(
    path: Path,
    name: str,
    result: LoadResult,
    latency: float,
    figures: dict,
    *,
    rate: bool = False,
    completion: bool = False,
    sampler: Sampler | None = None,
    compare: tuple[str, str, LoadResult] | None = None,
) -> None:
    """The latency histogram of ``result``; ``compare`` = (this label, other label,
    other result) overlays another leg's (the b64 scenario's url leg)."""
    ok = result.ok
    if completion:
        values = [x.end for x in ok]
        xlabel = "time of the answer, seconds since all requests were sent"
        marks = {f"upstream latency {latency:g} s": latency}
    else:
        values = [(x.latency - latency) * 1000 for x in ok]
        xlabel = "end-to-end latency, ms"
        if latency:
            xlabel = "added latency, ms (end to end minus upstream latency)"
        summary = result.summary()["added_ms"]
        marks = {"p50": summary["p50"], "p99": summary["p99"]}
    timeline = None
    if sampler is not None and sampler.rss:
        timeline = ("gateway RSS, MiB", sampler.times, [r / 2**20 for r in sampler.rss])
    elif rate and ok:
        end = int(max(x.end for x in ok)) + 1
        counts = [0] * end
        for x in ok:
            counts[int(x.end)] += 1
        timeline = ("images completed per second", list(range(end)), counts)
    series = [(name, values)]
    if compare is not None:
        label, other_label, other = compare
        other_values = [(x.latency - latency) * 1000 for x in other.ok]
        series = [(other_label, other_values), (label, values)]
    shown = ", ".join(
        f"{k} {v}" for k, v in figures.items() if _scalar(v) and not k.startswith("url_")
    )
    title = textwrap.fill(f"{name}: {shown}", width=100)
    charts.histogram(path, title, xlabel, series, marks=marks, timeline=timeline)


def _scalar(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.1f}"
    return str(v)


def row_figure(r: dict[str, Any]) -> str:
    f = r.get("figures") or {}
    name = r["scenario"]
    if r.get("skipped"):
        return f"skipped: {r['skipped']}"
    if name in ("overhead", "b64"):
        text = (
            f"added p50 {_fmt(f['added_p50_ms'])} ms, p99 {_fmt(f['added_p99_ms'])} ms "
            f"(upstream alone: {_fmt(f.get('upstream_alone_p50_ms'))} / "
            f"{_fmt(f.get('upstream_alone_p99_ms'))}; gateway's share "
            f"{_fmt(f.get('gateway_p50_ms'))} / {_fmt(f.get('gateway_p99_ms'))}); "
            f"peak RSS {_fmt(f['peak_rss_mib'])} MiB; {f['errors']} errors"
        )
        if "url_added_p50_ms" in f:
            text += (
                f"; url leg: added p50 {_fmt(f['url_added_p50_ms'])} ms, p99 "
                f"{_fmt(f['url_added_p99_ms'])} ms, peak RSS {_fmt(f['url_peak_rss_mib'])} MiB"
            )
        if "ratio_to_url" in f:
            ratio = f["ratio_to_url"]
            text += (
                f" (x{_fmt(ratio['p50'])} / x{_fmt(ratio['p99'])} / RSS x{_fmt(ratio['peak_rss'])}"
                " of url)"
            )
        return text
    if name == "long":
        return (
            f"{f['errors']} errors of {f['requests']}; longest wait in a queue "
            f"{_fmt(f['queue_wait_max_ms'])} ms (p99 {_fmt(f['queue_wait_p99_ms'])}); "
            f"added p50 {_fmt(f['added_p50_ms'])} ms; peak RSS {_fmt(f['peak_rss_mib'])} MiB"
        )
    if name == "held":
        return (
            f"{f['errors']} errors; all done in {_fmt(f['completion_s'])} s; peak RSS "
            f"{_fmt(f['peak_rss_mib'])} MiB (PSS {_fmt(f['peak_pss_mib'])})"
        )
    if name == "throughput":
        return f"{_fmt(f['images_per_s'])} images/s; {f['errors']} errors"
    if name == "scale-out":
        return "; ".join(f"{k}: {v:.0f}/s" for k, v in f["images_per_s"].items())
    return json.dumps(f)


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| scenario | setup | result | target | met |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        met = {True: "yes", False: "**no**", None: "-"}[r.get("met")]
        lines.append(
            f"| {r['scenario']} | {r.get('setup', '')} | {row_figure(r)} | "
            f"{r.get('target', '')} | {met} |"
        )
    return "\n".join(lines)


def details(results: list[dict[str, Any]]) -> str:
    """Where the time goes: latency phases (p50 ms) and CPU per image by component."""
    lines = [
        "| scenario | web in | queue | worker (- upstream) | web out | CPU ms/image: web, "
        "workers, redis, simulator | load generator |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        p = r.get("phases_ms") or {}
        cpu = (r.get("resources") or {}).get("cpu_ms_per_image") or {}
        if not p and not cpu:
            continue
        cells = [_fmt((p.get(k) or {}).get("p50")) for k in PHASES]
        per = ", ".join(_fmt(cpu.get(c)) for c in ("web", "workers", "redis", "simulator"))
        ok = (r.get("load") or {}).get("ok") or 0
        client = (r.get("load") or {}).get("client_cpu_s") or 0
        client_ms = _fmt(client * 1000 / ok) if ok else "-"
        lines.append(f"| {r['scenario']} | {' | '.join(cells)} | {per} | {client_ms} |")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        with open("/proc/cpuinfo") as fh:
            info["cpu"] = next(
                (line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), ""
            )
        with open("/proc/meminfo") as fh:
            info["memory_gib"] = round(int(fh.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    versions = {}
    for dist in ("gunicorn", "gevent", "flask", "celery", "kombu", "redis", "aiohttp", "openai"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    try:
        out = subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True, timeout=10
        ).stdout
        versions["redis-server"] = out.split("v=")[1].split()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        pass
    info["versions"] = versions
    return info


def _ok(value: float | None, limit: float) -> bool:
    return value is not None and value <= limit


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or not b:
        return None
    return round(a / b, 2)


def _say(text: str) -> None:
    sys.stderr.write(f"== {text}\n")
    sys.stderr.flush()


def _target_for(stack: Stack, model_b64: str = "") -> Target:
    return Target(
        base_url=stack.base_url,
        api_key=stack.api_key,
        model_url=MODEL_URL,
        model_b64=model_b64 or MODEL_URL,  # by default the url mode's upstream (scenario_b64)
        simulator_url=stack.simulator_url,
        stack=stack,
        group=stack.measure,
    )


# -- main ----------------------------------------------------------------------------------


# -- side by side with another gateway ----------------------------------------------------

PEER_AFTER = "throughput"  # the peer runs once these scenarios are done, on the same simulator
PEER_SCENARIOS = ("overhead", "throughput")


def run_peer(
    opts: Options, stack: Stack, work: Path, ours: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """The overhead and throughput scenarios against the peer; ratios to ours.

    The peer is installed in its own virtualenv (``bench/peer.py``) and calls
    the simulator our stack calls. Our stack stays up but idle meanwhile (its
    idle CPU is counted in ``other_cores_busy``, ~0.01 cores).
    """
    from bench.peer import LiteLLMPeer

    _say(f"peer {opts.peer}: installing (first time ~1 min) and starting")
    with LiteLLMPeer(stack.simulator_url, SIM_KEY, work / "peer", workers=2) as peer:
        roots = {**peer.pids(), "simulator": [stack.simulator.pid]}  # type: ignore[union-attr]
        target = Target(
            base_url=peer.base_url,
            api_key=peer.api_key,
            model_url=peer.model,
            model_b64=peer.model,
            simulator_url=stack.simulator_url,
            group=Group(roots),
            gateway=(peer.component,),
        )
        theirs = {}
        for name in PEER_SCENARIOS:
            if name in ours:
                _say(f"peer {opts.peer}: scenario {name}")
                out = opts.out / f"peer-{opts.peer}"
                out.mkdir(parents=True, exist_ok=True)
                theirs[name] = SCENARIO_FUNCS[name](target, opts.sizes, out, {})
        version = peer.version
    ratios: dict[str, Any] = {}
    if "overhead" in theirs:
        a, b = ours["overhead"]["figures"], theirs["overhead"]["figures"]
        for q in ("p50", "p99"):
            ratios[f"gateway_share_{q}"] = _ratio(
                a.get(f"gateway_{q}_ms"), b.get(f"gateway_{q}_ms")
            )
    if "throughput" in theirs:
        ratios["images_per_s"] = _ratio(
            ours["throughput"]["figures"]["images_per_s"],
            theirs["throughput"]["figures"]["images_per_s"],
        )
    met = None
    if not opts.sizes.quick:
        checks = []
        if "gateway_share_p50" in ratios:
            checks.append(
                ratios["gateway_share_p50"] is not None and ratios["gateway_share_p50"] <= 0.1
            )
        if "images_per_s" in ratios:
            checks.append(ratios["images_per_s"] is not None and ratios["images_per_s"] >= 1.3)
        met = all(checks) if checks else None
    return {
        "name": opts.peer,
        "version": version,
        "setup": "LiteLLM proxy, 2 uvicorn workers, model openai/compat-any at the same simulator; "
        "it hands the upstream's image URL through, imagegate downloads, checks, stores and "
        "signs every image",
        "scenarios": theirs,
        "ratios": ratios,
        "target": "gateway's share at 64 clients <= 1/10 of the peer's; images/s >= 1.3x",
        "met": met,
        "ours": {n: ours[n]["figures"] for n in PEER_SCENARIOS if n in ours},
    }


def peer_table(peer: dict[str, Any]) -> str:
    """Side by side: our figures, the peer's, and the ratio."""
    lines = [
        f"Side by side with {peer['name']} {peer['version']} ({peer['setup']}):",
        "",
        "| scenario | imagegate | " + peer["name"] + " | ratio | target |",
        "|---|---|---|---|---|",
    ]
    ours, theirs, ratios = peer["ours"], peer["scenarios"], peer["ratios"]
    if "overhead" in theirs:
        a, b = ours["overhead"], theirs["overhead"]["figures"]
        lines.append(
            f"| overhead: gateway's share p50 / p99 ms | {_fmt(a.get('gateway_p50_ms'))} / "
            f"{_fmt(a.get('gateway_p99_ms'))} | {_fmt(b.get('gateway_p50_ms'))} / "
            f"{_fmt(b.get('gateway_p99_ms'))} | x{_fmt(ratios.get('gateway_share_p50'))} / "
            f"x{_fmt(ratios.get('gateway_share_p99'))} | p50 <= x0.1 |"
        )
    if "throughput" in theirs:
        a, b = ours["throughput"], theirs["throughput"]["figures"]
        lines.append(
            f"| throughput: images/s | {_fmt(a['images_per_s'])} | {_fmt(b['images_per_s'])} | "
            f"x{_fmt(ratios.get('images_per_s'))} | >= x1.3 |"
        )
    met = {True: "yes", False: "**no**", None: "-"}[peer.get("met")]
    lines.append(f"\ntargets met: {met}")
    return "\n".join(lines)


@dataclass
class Options:
    scenarios: list[str]
    out: Path
    sizes: Sizes
    stack: StackConfig
    external: dict[str, str] = field(default_factory=dict)
    keep_logs: bool = False
    model_b64: str = ""  # the private stack's model for the b64 scenario
    peer: str = ""  # "litellm": overhead and throughput against it too, on the same simulator


def run_all(opts: Options) -> dict[str, Any]:
    opts.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    work = Path(tempfile.mkdtemp(prefix="imagegate-bench-"))
    results: dict[str, dict[str, Any]] = {}
    stack: Stack | None = None
    peer_doc: dict[str, Any] | None = None
    failed = False
    try:
        if opts.external:
            target = Target(
                base_url=opts.external["base_url"],
                api_key=opts.external["api_key"],
                model_url=opts.external["model"],
                model_b64=opts.external.get("model_b64") or opts.external["model"],
                simulator_url=opts.external["simulator"],
                simulator_key=opts.external["simulator_key"],
            )
        else:
            _say(f"starting the stack: {opts.stack.describe()}")
            stack = Stack(opts.stack, work / "main").__enter__()
            target = _target_for(stack, opts.model_b64)
        for name in RUN_ORDER:
            if name not in opts.scenarios:
                continue
            if name == "scale-out" and stack is not None:
                # Free the cores for the scale-out stacks.
                stack.stop()
            _say(f"scenario {name}")
            t0 = time.monotonic()
            results[name] = SCENARIO_FUNCS[name](target, opts.sizes, opts.out, results)
            results[name]["seconds"] = round(time.monotonic() - t0, 1)
            if name == PEER_AFTER and opts.peer and stack is not None:
                peer_doc = run_peer(opts, stack, work, results)
    except BaseException:
        failed = True
        raise
    finally:
        if stack is not None:
            stack.stop()
        if failed or opts.keep_logs:
            _say(f"logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    ordered = [results[n] for n in SCENARIOS if n in results]
    doc = {
        "command": "python -m bench.run " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "started": dt.datetime.fromtimestamp(started, dt.UTC).isoformat(timespec="seconds"),
        "seconds": round(time.time() - started, 1),
        "quick": opts.sizes.quick,
        "machine": machine(),
        "client": client_name(LoadSpec("", "", "", requests=1)),
        "gateway": opts.external.get("base_url") if opts.external else opts.stack.describe(),
        "stack": None if opts.external else {**vars(opts.stack)},
        "scenarios": {r["scenario"]: r for r in ordered},
        "peer": peer_doc,
    }
    (opts.out / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    text = table(ordered)
    m = doc["machine"]
    header = (
        f"machine: {m.get('cores')} cores ({m.get('cpu', '?')}), {m.get('memory_gib')} GiB, "
        f"Python {m.get('python')}; gateway: {doc['gateway']}; client: {doc['client']}"
    )
    more = details(ordered)
    side = f"\n\n{peer_table(peer_doc)}" if peer_doc else ""
    (opts.out / "results.md").write_text(
        f"{header}\n\n{text}\n\nWhere the time goes (p50, ms):\n\n{more}{side}\n"
    )
    print(header)
    print(text)
    print()
    print("Where the time goes (p50, ms):")
    print(more)
    if side:
        print(side.strip("\n"))
    return doc


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke version: a few seconds per scenario")
    p.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    p.add_argument(
        "--tuned", action="store_true",
        help="instead of the Procfile as shipped: 2 web processes, 2 openai workers x 500 threads",
    )  # fmt: skip
    p.add_argument("--web", type=int, help="gunicorn processes (default: as shipped, one per core)")
    p.add_argument("--workers", type=int, help="openai worker processes (default: 1; tuned: 2)")
    p.add_argument("--pool", choices=["threads", "gevent"], help="worker pool (tuned stack only)")
    p.add_argument(
        "--concurrency", type=int, help="jobs per worker process (default: planned; tuned: 500)"
    )
    p.add_argument(
        "--images", choices=["noise", "solid"], default="noise",
        help="simulator images: photo-sized (noise) or a few kB (solid)",
    )  # fmt: skip
    p.add_argument(
        "--seconds", type=float, help="run each timed scenario this long instead (e.g. 10)"
    )
    p.add_argument(
        "--clients", type=int, help="concurrent clients of the timed scenarios instead of 64"
    )
    p.add_argument("--log-level", default="INFO", help="gateway log level (production: INFO)")
    p.add_argument("--keep-logs", action="store_true", help="keep the processes' logs")
    p.add_argument(
        "--peer", choices=["litellm"],
        help="also run overhead and throughput against this gateway (installed into its own "
        "virtualenv) on the same simulator, and print the ratios",
    )  # fmt: skip
    ext = p.add_argument_group("another gateway (instead of the private stack)")
    ext.add_argument("--base-url", help="OpenAI-compatible base URL, e.g. http://host:4000/v1")
    ext.add_argument("--api-key")
    ext.add_argument("--model", help="a model that calls the simulator's compat-any")
    ext.add_argument(
        "--model-b64",
        help="model of the b64 scenario (default: --model; on the private stack bench/url, "
        "or bench/b64 to have the upstream answer base64 too)",
    )
    ext.add_argument("--simulator", help="base URL of the simulator that gateway calls")
    ext.add_argument(
        "--simulator-key", default=SIM_KEY, help="the simulator's --api-key (for the baseline)"
    )
    return p


def stack_config(args: argparse.Namespace) -> StackConfig:
    """The Procfile as shipped, or the tuned stack, with what the command line changes."""
    base = TUNED if args.tuned else StackConfig()
    if args.pool and not args.tuned:
        raise SystemExit("--pool needs --tuned: the Procfile's workers use the threads pool")
    given = {
        "web_processes": args.web,
        "worker_processes": args.workers,
        "worker_pool": args.pool,
        "worker_concurrency": args.concurrency,
    }
    return replace(
        base,
        **{k: v for k, v in given.items() if v is not None},
        images=args.images,
        log_level=args.log_level,
        prewarm="" if args.quick else StackConfig.prewarm,
    )


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keep_large_buffers()  # as the gateway does: fewer page faults per image
    external: dict[str, str] = {}
    if args.base_url:
        if not (args.api_key and args.model and args.simulator):
            raise SystemExit("--base-url needs --api-key, --model and --simulator")
        external = {
            "base_url": args.base_url,
            "api_key": args.api_key,
            "model": args.model,
            "model_b64": args.model_b64 or "",
            "simulator": args.simulator,
            "simulator_key": args.simulator_key,
        }
    sizes = QUICK if args.quick else FULL
    if args.clients:
        sizes = replace(sizes, overhead_clients=args.clients, throughput_clients=args.clients)
    if args.seconds:
        sizes = replace(
            sizes,
            overhead_seconds=args.seconds,
            throughput_seconds=args.seconds,
            scale_seconds=args.seconds,
        )
    opts = Options(
        scenarios=args.scenarios,
        out=args.out,
        sizes=sizes,
        stack=stack_config(args),
        external=external,
        keep_logs=args.keep_logs,
        model_b64="" if external else (args.model_b64 or ""),
        peer="" if external else (args.peer or ""),
    )
    # SIGTERM (e.g. a CI timeout) unwinds like Ctrl-C, so the stack is always stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    doc = run_all(opts)
    errors = sum((r.get("figures") or {}).get("errors", 0) or 0 for r in doc["scenarios"].values())
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
