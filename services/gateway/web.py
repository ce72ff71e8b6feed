"""The web app: the user's page at `/` and the operators' console at `/admin`.

Plain HTML and JavaScript modules served from `services/gateway/web/`, with no build
step and nothing fetched from elsewhere: the page speaks only the public HTTP API (and
the operator endpoints under /v1/admin), so anything it does a client can do too. A
strict Content-Security-Policy keeps it that way: scripts, styles and connections go
to this origin only; images are also allowed from `data:` (streamed previews) and
`blob:` (images read through the API with the caller's key).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.staticfiles import PathLike
from starlette.types import Scope

WEB_DIR: Final = Path(__file__).parent / "web"
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
    "style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS: Final = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}

router = APIRouter(include_in_schema=False)


def _page(name: str) -> Response:
    return FileResponse(WEB_DIR / name, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)


@router.get("/")
async def user_page() -> Response:
    """The user's page: sign up, generate, watch a render develop, tweak, the gallery."""
    return _page("index.html")


@router.get("/admin")
async def operator_console() -> Response:
    """The operators' console (it asks for the operator token; the API checks it)."""
    return _page("admin.html")


class WebAssets(StaticFiles):
    """The page's scripts and styles, revalidated on every load (they change with the code)."""

    def file_response(
        self, full_path: PathLike, stat_result: os.stat_result, scope: Scope, status_code: int = 200
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update(PAGE_HEADERS)
        return response


def assets() -> StaticFiles:
    """The app mounts this at `/web`."""
    return WebAssets(directory=WEB_DIR)
