"""Tweaks (OpenAI's `images.edit`): new images made from the caller's or uploaded ones.

A tweak is a job like a generation whose spec lists the images it starts from
(`EditSource`): the gateway recognizes its own account's darkroom images (by
`image_id`, or by the sha256 of the uploaded file) and sends their stored token grid;
any other upload goes as a small PNG that the decoder's VQ encoder turns into a
grid. Which cells are drawn again comes from the mask, or from `strength`
(services.gateway.tweaks). Everything after that is the generation path.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from libs.apikeys import Principal
from libs.events.schemas import EditSource
from libs.model.interface import pack_cells
from libs.readmodels.catalog import CatalogImage
from services.gateway import jobs
from services.gateway.context import Gateway, get_gateway, get_principal
from services.gateway.errors import APIError, invalid
from services.gateway.jobs_http import job_spec, respond
from services.gateway.library import owned_image
from services.gateway.models import ImageEditRequest
from services.gateway.tweaks import DEFAULT_STRENGTH, TweakInputError, cells_from_mask, cells_from_strength, read_upload

router = APIRouter(prefix="/v1/images", tags=["images"])

GatewayDep = Annotated[Gateway, Depends(get_gateway)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
MAX_IMAGES = 4
FILE_FIELDS = ("image", "image[]", "mask")


@router.post("/edits", response_model=None)
async def create_edit(
    request: Request,
    gateway: GatewayDep,
    principal: PrincipalDep,
    prefer: Annotated[str | None, Header()] = None,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> Response:
    """Tweak images with a new prompt (multipart, as the openai SDK sends `images.edit`).

    Each image given is tweaked `n` times (at most 4 images in all). The mask applies
    to the first image (the one named by `image_id` when there is one); without one,
    `strength` (default 0.6) sets the share of cells drawn again. An Idempotency-Key
    works as for generations: the images and cells are part of the request it names.
    """
    form = await request.form()
    uploads = [f for key in ("image", "image[]") for f in form.getlist(key) if isinstance(f, UploadFile)]
    mask_file = form.get("mask")
    fields = {k: v for k, v in form.multi_items() if k not in FILE_FIELDS and isinstance(v, str)}
    try:
        body = ImageEditRequest.model_validate(fields)
    except ValidationError as exc:
        # Answered like a JSON body's validation error (services.gateway.errors).
        raise RequestValidationError(exc.errors()) from exc
    if not uploads and body.image_id is None:
        raise APIError(400, "Missing required parameter: 'image'.", param="image", code="missing_required_parameter")
    spec = job_spec(body, principal, gateway, idempotency_key)
    try:
        mask = mask_file if isinstance(mask_file, UploadFile) else None
        # Each source, with the darkroom image it starts from (None for a foreign upload).
        starts: list[tuple[EditSource, CatalogImage | None]] = []
        if body.image_id:
            starts.append(await _source_for_id(gateway, principal, body.image_id, mask, body, spec.seed))
        for i, upload in enumerate(uploads):
            first_mask = mask if i == 0 and not starts else None
            data = await upload.read()
            starts.append(await _source_for_upload(gateway, principal, data, first_mask, body, spec.seed + i))
    except TweakInputError as exc:
        raise invalid(exc.param, str(exc)) from exc
    sources = [source for source, _ in starts]
    parents = [parent for _, parent in starts if parent is not None]
    spec = spec.model_copy(update={"model": _model_of(gateway, body.model, spec.model, parents)})
    if len(sources) > MAX_IMAGES:
        raise invalid("image", f"At most {MAX_IMAGES} images can be tweaked at once.")
    total = body.n * len(sources)
    if total > MAX_IMAGES:
        raise invalid("n", f"n x images is {total}; at most {MAX_IMAGES} images per request.")
    if body.stream and total > 1:
        raise invalid("n", "Streaming returns one image; send one image with n=1, or turn off stream.")
    spec = spec.model_copy(update={"n": total, "edits": sources})
    return await respond(
        gateway,
        request,
        jobs.SubmitJob(principal, spec),
        stream=body.stream,
        response_format=body.response_format,
        prefer=prefer,
        kind="image_edit",
    )


def _model_of(gateway: Gateway, requested: str | None, resolved: str, parents: list[CatalogImage]) -> str:
    """The model of a tweak: the one its darkroom images were drawn by when the request names
    none (their grids mean something to that model only).

    Raises:
        APIError: 400 naming `model` when the images come from another model than the one
            requested, or from several.
    """
    drawn_by = {parent.model for parent in parents}
    if not drawn_by:
        return resolved
    if len(drawn_by) > 1:
        raise invalid("model", f"These images were drawn by different models ({', '.join(sorted(drawn_by))}).")
    [model] = drawn_by
    if requested is not None and resolved != model:
        raise invalid("model", f"This image was drawn by {model}: tweak it with model '{model}' (or leave model out).")
    if model not in gateway.settings.models:
        raise invalid("model", f"This image was drawn by {model}, which this service no longer serves.")
    return model


async def _source_for_id(
    gateway: Gateway,
    principal: Principal,
    image_id: str,
    mask: UploadFile | None,
    body: ImageEditRequest,
    seed: int,
) -> tuple[EditSource, CatalogImage]:
    image = await owned_image(gateway, principal, image_id, "image_id")
    cells = cells_from_mask(await mask.read(), image.size, image.size) if mask is not None else None
    return await _darkroom_source(gateway, image, cells, seed, body.strength), image


async def _source_for_upload(
    gateway: Gateway,
    principal: Principal,
    data: bytes,
    mask: UploadFile | None,
    body: ImageEditRequest,
    seed: int,
) -> tuple[EditSource, CatalogImage | None]:
    upload = read_upload(data)
    cells = cells_from_mask(await mask.read(), upload.width, upload.height) if mask is not None else None
    known = await gateway.catalog.find_by_content(principal.account_id, hashlib.sha256(data).hexdigest())
    if known is not None:
        return await _darkroom_source(gateway, known, cells, seed, body.strength), known
    if cells is None:
        cells = cells_from_strength(body.strength if body.strength is not None else DEFAULT_STRENGTH, seed)
    return EditSource(image_png=_b64(upload.rgb_png), remask=_b64(pack_cells(cells))), None


async def _darkroom_source(
    gateway: Gateway, image: CatalogImage, cells: np.ndarray | None, seed: int, strength: float | None = None
) -> EditSource:
    if cells is None:
        cells = cells_from_strength(strength if strength is not None else DEFAULT_STRENGTH, seed)
    tokens = await gateway.blobs.get(image.tokens_key)
    return EditSource(parent_image_id=image.image_id, tokens=_b64(tokens), remask=_b64(pack_cells(cells)))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
