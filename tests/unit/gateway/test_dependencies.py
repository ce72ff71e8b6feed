"""Every route's dependencies run on the gateway's event loop, none in a worker thread."""

from __future__ import annotations

import inspect
from collections.abc import Iterable

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from tests.unit.gateway.conftest import GatewayUnderTest


def _api_routes(routes: Iterable[BaseRoute]) -> list[APIRoute]:
    found: list[APIRoute] = []
    for route in routes:
        if isinstance(route, APIRoute):
            found.append(route)
        included = getattr(route, "original_router", None)  # a router the app includes
        if included is not None:
            found.extend(_api_routes(included.routes))
    return found


def _calls(dependant: Dependant) -> list[object]:
    found: list[object] = []
    for sub in dependant.dependencies:
        found.append(sub.call)
        found.extend(_calls(sub))
    return found


async def test_no_route_hands_a_dependency_to_a_worker_thread(gateway: GatewayUnderTest) -> None:
    # FastAPI runs a plain-function dependency (or route) in a thread of its pool: a hand-off
    # per request that cost the gateway more CPU than the key check it carried.
    routes = _api_routes(gateway.app.routes)
    assert len(routes) > 20
    in_threads = sorted(
        f"{route.path}: {getattr(call, '__name__', call)}"
        for route in routes
        for call in [route.endpoint, *_calls(route.dependant)]
        if not inspect.iscoroutinefunction(call)
    )
    assert in_threads == []
