"""Run the gateway: `python -m services.gateway` (uvicorn on DARKROOM_GATEWAY_PORT)."""

from __future__ import annotations

import uvicorn

from libs.runtime.entrypoint import load_settings
from libs.settings import GatewaySettings
from libs.telemetry import configure_logging, configure_tracing
from services.gateway.app import create_app


def main() -> None:
    """Serve the gateway until SIGTERM (uvicorn drains requests, then the lifespan stops Kafka)."""
    settings = load_settings(GatewaySettings)
    configure_logging(settings.log_level, "gateway")
    configure_tracing("gateway", settings.otlp_endpoint, settings.instance_id, settings.trace_sample_ratio)
    uvicorn.run(
        create_app(settings),
        host=settings.gateway_host,
        port=settings.gateway_port,
        log_level=settings.log_level.lower(),
        access_log=False,
    )


if __name__ == "__main__":
    main()
