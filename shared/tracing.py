"""Optional OpenTelemetry traces: one trace per request, from the web to the webhook.

Install the ``otel`` extra (``pip install 'imagegate[otel]'``) and set
``IMAGEGATE_TRACING=otlp`` (the exporter reads the standard ``OTEL_EXPORTER_OTLP_*``
variables). Without the extra, or with it but no tracer provider set (tracing off),
every function here is a no-op that costs one check: OpenTelemetry's own no-op tracer
cost about 2% of a worker's CPU per job in spans nobody records.

A trace holds: the web request (its parent taken from an incoming ``traceparent``),
admission, the time in the queue (admission to the worker's claim), the claim, each
attempt in a worker, each upstream HTTP exchange (every retry its own span), each
download, each stored image and each webhook delivery attempt.

The context travels in the job record (``meta.trace``, a W3C ``traceparent`` carrier
written at admission), not only in a Celery message: a job is also sent by reapers,
fallbacks and resends, whose messages carry only the job id, and it must still join
its trace. URLs go into spans without their query (signed URLs).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

try:  # the otel extra
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError:  # pragma: no cover - tracing is optional
    trace = None  # type: ignore[assignment]

TRACER = "imagegate"


def enabled() -> bool:
    """A tracer provider is set (by :func:`configure`, or a test's), so spans are recorded."""
    return trace is not None and not isinstance(
        trace.get_tracer_provider(), trace.ProxyTracerProvider
    )


def _clean(attributes: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attributes.items() if v is not None and v != ""}


@contextlib.contextmanager
def span(name: str, *, parent: Any = None, **attributes: Any) -> Iterator[Any]:
    """A span around the block (child of the current one, or of ``parent``: a context
    from :func:`context_from`); exceptions are recorded on it."""
    if not enabled():
        yield None
        return
    tracer = trace.get_tracer(TRACER)
    with tracer.start_as_current_span(name, context=parent, attributes=_clean(attributes)) as s:
        yield s


def past_span(name: str, start: float, end: float, *, parent: Any = None, **attributes: Any):
    """A span that already happened (unix seconds), e.g. the time a job spent queued."""
    if not enabled():
        return
    s = trace.get_tracer(TRACER).start_span(
        name, context=parent, attributes=_clean(attributes), start_time=int(start * 1e9)
    )
    s.end(end_time=int(max(start, end) * 1e9))


def carrier() -> dict[str, str]:
    """The current trace context as a W3C ``traceparent`` (55 characters), {} when there is
    none. Only that: a client's ``tracestate`` is not kept in the job record."""
    if not enabled():
        return {}
    out: dict[str, str] = {}
    propagate.inject(out)
    parent = out.get("traceparent", "")
    return {"traceparent": parent} if len(parent) == 55 else {}


def context_from(headers: Mapping[str, str] | None) -> Any:
    """A parent context from W3C headers (an incoming request, a job's ``meta.trace``)."""
    if not headers or not enabled():
        return None
    return propagate.extract(dict(headers))


def start_request(name: str, headers: Mapping[str, str], **attributes: Any) -> Any:
    """Start the server span of a web request and make it current; :func:`end_request`."""
    if not enabled():
        return None
    parent = propagate.extract({k.lower(): v for k, v in headers.items()})
    s = trace.get_tracer(TRACER).start_span(
        name, context=parent, kind=SpanKind.SERVER, attributes=_clean(attributes)
    )
    token = otel_context.attach(trace.set_span_in_context(s))
    return s, token


def end_request(handle: Any, status: int | None) -> None:
    if handle is None:
        return
    s, token = handle
    try:
        otel_context.detach(token)
    except ValueError:  # a streamed answer ends in another context
        pass
    if status is not None:
        s.set_attribute("http.response.status_code", status)
        if status >= 500:
            s.set_status(Status(StatusCode.ERROR))
    s.end()


def configure(settings: Any, role: str) -> None:
    """``IMAGEGATE_TRACING=otlp``: send this process's spans to an OTLP collector."""
    if settings.tracing != "otlp":
        return
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise RuntimeError(
            "IMAGEGATE_TRACING=otlp needs the otel extra: pip install 'imagegate[otel]'"
        ) from exc
    provider = TracerProvider(resource=Resource.create({"service.name": f"imagegate-{role}"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
