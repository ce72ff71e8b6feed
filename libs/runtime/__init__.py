"""Running a service: wiring, heartbeats, health endpoint and graceful shutdown."""

from libs.runtime.service import ServiceRuntime, Subscription, run_service

__all__ = ["ServiceRuntime", "Subscription", "run_service"]
