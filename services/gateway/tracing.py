"""A server span per HTTP request, whose trace id is the `x-request-id` of the response.

The span is current while the route runs, so the commands the route publishes carry
its trace context into Kafka, and the whole job (gateway, requests, safety, decoder,
storage) shares one trace id: the one the client sees in `x-request-id`.
"""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_tracer = trace.get_tracer("darkroom.gateway")


class TracingMiddleware:
    """Pure ASGI middleware (it keeps the span open for the whole of a streamed response)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        route = path if not path.startswith("/v1/images/jobs/") else "/v1/images/jobs/{job_id}"
        with _tracer.start_as_current_span(
            f"{method} {route}",
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": path, "http.route": route},
        ) as span:
            request_id = format(span.get_span_context().trace_id, "032x")

            async def send_with_id(message: Message) -> None:
                if message["type"] == "http.response.start":
                    MutableHeaders(scope=message).append("x-request-id", request_id)
                    status = int(message["status"])
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(Status(StatusCode.ERROR))
                await send(message)

            await self.app(scope, receive, send_with_id)
