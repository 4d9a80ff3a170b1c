"""Error bodies as the API gateway in front of the coding service writes them."""

from __future__ import annotations

import json

from aiohttp import web

NOT_AUTHORIZED = "User is not authorized to access this resource with an explicit deny"


def api_error(status: int, message: str) -> web.HTTPException:
    """An aiohttp exception carrying `{"message": ...}`, ready to raise."""
    return _error(status, {"message": message})


def denied() -> web.HTTPException:
    # The gateway's explicit-deny body spells its key with a capital M.
    return _error(403, {"Message": NOT_AUTHORIZED})


def _error(status: int, body: dict) -> web.HTTPException:
    cls = web.HTTPException
    for candidate in (
        web.HTTPBadRequest, web.HTTPUnauthorized, web.HTTPForbidden, web.HTTPNotFound,
        web.HTTPConflict, web.HTTPRequestEntityTooLarge, web.HTTPTooManyRequests,
        web.HTTPInternalServerError,
    ):
        if candidate.status_code == status:
            cls = candidate
            break
    return cls(text=json.dumps(body), content_type="application/json")


def s3_error(status: int, code: str, message: str) -> web.HTTPException:
    """Presigned URLs answer with S3's XML error documents."""
    body = f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>'
    cls = {400: web.HTTPBadRequest, 403: web.HTTPForbidden, 404: web.HTTPNotFound}[status]
    return cls(text=body, content_type="application/xml")
