"""OpenTelemetry: one request's trace from the web through the worker to its webhook.

In one process, with the SDK's in-memory exporter: the web app (Flask's test client on
the test Redis, a database no running worker consumes), then the job run by
``run_job`` against the session's OpenAI simulator (the first call fails with a 503,
so a retry shows as its own span), then its webhook delivered. Every span must be in
the trace the client's ``traceparent`` started, in the right parents.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from api.app import create_app
from shared.keys import KeyStore
from shared.redis_client import connect
from shared.settings import Settings
from tests.support.sim import fault
from workers.context import build_context
from workers.pipeline import run_job
from workers.webhooks import deliver

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    yield exporter
    provider.shutdown()  # later tests' spans go nowhere


@pytest.fixture()
def receiver() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers.get("content-length", 0)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()


def test_one_trace_spans_web_admission_queue_worker_upstream_storage_and_webhook(
    spans: InMemorySpanExporter, stack_env: dict[str, str], receiver: str, tmp_path
) -> None:
    url = stack_env["IMAGEGATE_REDIS_URL"].rsplit("/", 1)[0] + "/14"
    connect(url).flushdb()
    settings = Settings.from_env(
        {**stack_env, "IMAGEGATE_REDIS_URL": url, "IMAGEGATE_STORAGE_DIR": str(tmp_path)}
    )
    app = create_app(settings)
    plaintext, _ = KeyStore(connect(url)).create("tracing", tier="internal", unlimited=True)
    answer = app.test_client().post(
        "/v1/images/generations",
        json={
            "model": "dall-e-2",
            "prompt": fault(503, 1, prompt="traced"),
            "size": "256x256",
            "webhook_url": receiver,
        },
        headers={
            "Authorization": f"Bearer {plaintext}",
            "traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01",
        },
    )
    assert answer.status_code == 202, answer.json
    job_id = answer.json["id"]

    ctx = build_context(settings)
    assert run_job(job_id, ctx).status == "succeeded"
    assert (
        deliver(job_id, settings=settings, client=ctx.redis, jobs=ctx.jobs, storage=ctx.storage)
        == "delivered"
    )

    finished = spans.get_finished_spans()
    by_name: dict[str, list] = {}
    for span in finished:
        by_name.setdefault(span.name, []).append(span)
    assert {f"{s.context.trace_id:032x}" for s in finished} == {TRACE_ID}
    (web,) = by_name["POST /v1/images/generations"]
    assert f"{web.parent.span_id:016x}" == CLIENT_SPAN
    assert web.attributes["http.response.status_code"] == 202
    (admission,) = by_name["admission"]
    assert admission.parent.span_id == web.context.span_id
    for name in ("queue", "claim", "job attempt", "webhook delivery"):
        (span,) = by_name[name]
        assert span.parent.span_id == web.context.span_id, name
    (attempt,) = by_name["job attempt"]
    upstream = by_name["upstream POST"]
    assert [s.attributes["http.response.status_code"] for s in upstream] == [503, 200]
    assert all(s.parent.span_id == attempt.context.span_id for s in upstream)
    assert all("?" not in str(v) for s in upstream for v in s.attributes.values())
    (store,) = by_name["store"]
    assert store.parent.span_id == attempt.context.span_id
    (queued,) = by_name["queue"]
    assert queued.end_time >= queued.start_time
