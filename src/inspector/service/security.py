"""Response headers that keep a browser on the factory network from being turned against the service.

The operator page loads only its own scripts, styles and pictures (no inline code, no CDN), so its policy can be
strict: a part id or note crafted as HTML can never run as script even if a view forgot to escape it. FastAPI's
/docs and /redoc pages load Swagger UI and ReDoc from a CDN with inline script, so they keep no policy (they
work only where that CDN is reachable). No CORS headers are ever sent: another origin's page cannot read an
answer or send a keyed request.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
)
UNGUARDED = ("/docs", "/redoc")  # third-party pages that need their CDN and inline script


class SecurityHeaders:
    """Adds the policy and the hardening headers to every HTTP response (ASGI middleware)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy = not str(scope.get("path", "")).startswith(UNGUARDED)

        async def add_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += HEADERS
                if policy:
                    headers.append((b"content-security-policy", CONTENT_SECURITY_POLICY.encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, add_headers)
