"""A minimal HTTP endpoint for health and metrics, for services that have no web framework.

`GET /healthz`: 200 with a JSON body when every check passes, 503 otherwise.
`GET /metrics`: the process's Prometheus metrics (libs.metrics). It is deliberately tiny
(asyncio streams) because it runs inside every service, and orchestrators
(docker-compose, `make status`) only need the status code, Prometheus only the text.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from libs.metrics import exposition

HealthReport = Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]


class HealthServer:
    """Serves a health report on a local port."""

    def __init__(self, report: HealthReport, host: str, port: int) -> None:
        self._report = report
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The bound port (useful when started on port 0)."""
        if self._server is None or not self._server.sockets:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self._host, self._port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), timeout=5)
            while (await asyncio.wait_for(reader.readline(), timeout=5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = request_line.decode("latin-1").split()
            path = parts[1].split("?")[0] if len(parts) >= 2 and parts[0] == "GET" else None
            content_type = "application/json"
            if path == "/healthz":
                ok, body = await self._report()
                status = "200 OK" if ok else "503 Service Unavailable"
                payload = orjson.dumps(body)
            elif path == "/metrics":
                status = "200 OK"
                payload, content_type = exposition()
            else:
                status, payload = "404 Not Found", b'{"error":"not found"}'
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
                + payload
            )
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
