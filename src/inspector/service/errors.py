"""Errors that become a clear HTTP answer: status, a message for the caller, Retry-After when it helps, and a
short reason for the `inspector_errors` metric."""

from __future__ import annotations


class ServiceError(Exception):
    """Raised anywhere in the service (also in worker threads); the app turns it into `{"detail": ...}`."""

    status: int = 400
    reason: str = "bad_request"

    def __init__(
        self, detail: str, status: int | None = None, reason: str | None = None, retry_after: int | None = None
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status or self.status
        self.reason = reason or self.reason
        self.retry_after = retry_after

    @property
    def headers(self) -> dict[str, str] | None:
        return {"Retry-After": str(self.retry_after)} if self.retry_after is not None else None


class BadImage(ServiceError):
    """The upload is not a usable image (corrupt, truncated, unsupported, too small)."""

    status = 422
    reason = "bad_image"


class TooLarge(ServiceError):
    status = 413
    reason = "too_large"


class TooSlow(ServiceError):
    """The upload did not arrive within upload_timeout_s (a stalled camera or a slow-loris client)."""

    status = 408
    reason = "upload_timeout"


class Unavailable(ServiceError):
    """The service cannot take the request now (queue full, disk floor, starting); the caller should retry."""

    status = 503

    def __init__(self, detail: str, reason: str, retry_after: int = 1) -> None:
        super().__init__(detail, reason=reason, retry_after=retry_after)


class NotFound(ServiceError):
    status = 404
    reason = "not_found"


class Conflict(ServiceError):
    status = 409
    reason = "conflict"
