"""The caller's own images: the list (newest first), one image, and its file.

Everything is read from the gateway's image catalog (libs.readmodels.catalog) and
the blob store, and only the owner sees an image: another account's is a 404, the
same as an unknown id. The list pages by cursor (`after` = the last image id of the
previous page), which stays stable while new images arrive at the top.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse, Response

from libs.apikeys import Principal
from libs.readmodels.catalog import CatalogImage
from services.gateway.context import Gateway, get_gateway, get_principal
from services.gateway.errors import APIError

router = APIRouter(prefix="/v1/images", tags=["images"])

GatewayDep = Annotated[Gateway, Depends(get_gateway)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
DEFAULT_PAGE: Final = 20
MAX_PAGE: Final = 100
CONTENT_TYPES: Final = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
CONTENT_CACHE: Final = "private, max-age=86400, immutable"
"""An image's file never changes under its id; `private`: it was read with the owner's key."""


@router.get("", response_model=None)
async def list_images(
    gateway: GatewayDep,
    principal: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = DEFAULT_PAGE,
    after: Annotated[str | None, Query(max_length=200)] = None,
) -> JSONResponse:
    """The caller's images, newest first, as an OpenAI-style list; `after` is a cursor (an image id)."""
    # One more than asked says whether another page follows.
    found = await gateway.catalog.owned(principal.account_id, limit + 1, after)
    page = found[:limit]
    objects, children = await asyncio.gather(
        asyncio.gather(*(image_object(gateway, image) for image in page)),
        asyncio.gather(*(gateway.catalog.children(principal.account_id, image.image_id) for image in page)),
    )
    data = [
        body | {"children": [{"id": child.image_id, "prompt": child.prompt} for child in kids]}
        for body, kids in zip(objects, children, strict=True)
    ]
    return JSONResponse(page_object(data, has_more=len(found) > limit))


def page_object(data: list[dict[str, Any]], *, has_more: bool) -> dict[str, Any]:
    """OpenAI's list object around one page of objects (each with an `id`)."""
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


@router.get("/{image_id}", response_model=None)
async def get_image(image_id: str, gateway: GatewayDep, principal: PrincipalDep) -> JSONResponse:
    """One of the caller's images: its prompt, its file and what it was tweaked from."""
    image = await owned_image(gateway, principal, image_id, "image_id")
    return JSONResponse(await image_object(gateway, image))


@router.get("/{image_id}/content", response_model=None)
async def get_image_content(image_id: str, gateway: GatewayDep, principal: PrincipalDep) -> Response:
    """The file of one of the caller's images, as stored (png, jpeg or webp)."""
    image = await owned_image(gateway, principal, image_id, "image_id")
    try:
        data = await gateway.blobs.get(image.object_key)
    except KeyError as exc:
        message = f"The file of image '{image_id}' is not stored."
        raise APIError(404, message, param="image_id", code="not_found") from exc
    return Response(
        data,
        media_type=CONTENT_TYPES.get(image.output_format, "application/octet-stream"),
        headers={
            "content-disposition": f'inline; filename="{image.image_id}.{image.output_format}"',
            "cache-control": CONTENT_CACHE,
            "x-content-type-options": "nosniff",
        },
    )


async def image_object(gateway: Gateway, image: CatalogImage) -> dict[str, Any]:
    """The `image` object: what `GET /v1/images/{id}` answers and the list's items hold."""
    parent = await gateway.catalog.get(image.parent_image_id) if image.parent_image_id else None
    return {
        "id": image.image_id,
        "object": "image",
        "created_at": int(image.created_at.timestamp()),
        "job_id": image.job_id,
        "prompt": image.prompt,
        "size": f"{image.size}x{image.size}",
        "output_format": image.output_format,
        "model": image.model,
        "model_version": image.version,
        "sha256": image.sha256,
        "url": await gateway.blobs.url(image.object_key, gateway.settings.url_expiry_s),
        "parent": None
        if image.parent_image_id is None
        else {"id": image.parent_image_id, "prompt": parent.prompt if parent is not None else None},
    }


async def owned_image(gateway: Gateway, principal: Principal, image_id: str, param: str) -> CatalogImage:
    """The caller's image by id.

    Raises:
        APIError: 404 naming `param` for an unknown id or another account's image.
    """
    image = await gateway.catalog.get(image_id)
    if image is None or image.account_id != principal.account_id:
        raise APIError(404, f"No image found with id '{image_id}'.", param=param, code="not_found")
    return image
