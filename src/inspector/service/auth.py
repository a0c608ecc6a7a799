"""API keys: cameras may inspect and read records; operators may do everything (review, calibration, reload).

Keys come in the `X-API-Key` header (or `Authorization: Bearer <key>`), never in the URL, so access logs and
proxies never see them; comparisons are constant-time, and a config may hold a key's hash instead of the key
(service/keys.py). With no key configured every request is allowed, which is why `serve` then binds to loopback
unless told otherwise.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from inspector.service.config import Settings
from inspector.service.keys import key_matches

_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="camera or operator key")
_bearer = HTTPBearer(auto_error=False, description="the same key as a bearer token")


class Role(StrEnum):
    camera = "camera"
    operator = "operator"


def role_of(settings: Settings, key: str | None) -> Role | None:
    """The role a presented key grants, or None when it matches no configured key."""
    if not key:
        return None
    for role, secret in ((Role.operator, settings.operator_key), (Role.camera, settings.camera_key)):
        if secret is not None and key_matches(key, secret.get_secret_value()):
            return role
    return None


def require(role: Role):
    """A dependency that lets a request through when its key grants `role` (operator covers camera)."""

    def check(
        request: Request,
        api_key: Annotated[str | None, Depends(_header)],
        bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        settings: Settings = request.app.state.settings
        if not settings.has_keys:
            return
        key = api_key or (bearer.credentials if bearer else None)
        granted = role_of(settings, key)
        if granted is None:
            detail = "missing API key (X-API-Key header)" if not key else "invalid API key"
            raise HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})
        if role is Role.operator and granted is not Role.operator:
            raise HTTPException(403, "this needs the operator key")

    return check


def caller(
    request: Request,
    api_key: Annotated[str | None, Depends(_header)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """Who authorised a request, for the audit log: its key's role, or "none" on a service without keys."""
    settings: Settings = request.app.state.settings
    granted = role_of(settings, api_key or (bearer.credentials if bearer else None)) if settings.has_keys else None
    return granted.value if granted else "none"


camera = Depends(require(Role.camera))
operator = Depends(require(Role.operator))

# For the OpenAPI docs of every guarded router.
RESPONSES: dict[int | str, dict[str, str]] = {
    401: {"description": "missing or invalid API key"},
    403: {"description": "a camera key on an operator route"},
}
