"""The app's security posture: no egress, a loopback bind by default, a Host-header guard.

Why a Host guard: Gradio's CORS check trusts the Host header, so a page on an attacker's domain
that re-binds its DNS name to 127.0.0.1 could otherwise read this app from the victim's browser.
"""
from __future__ import annotations

import ipaddress
from pathlib import Path

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


def private_temp_dir(base: Path) -> Path:
    """Gradio's upload/temp folder, readable by this user only (uploads hold personal data)."""
    path = base / "gradio-tmp"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)
    return path


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind_refusal(host: str, auth: str | None, insecure_no_auth: bool) -> str | None:
    """Why the app must not start on this address, or None when it may."""
    if is_loopback(host) or auth or insecure_no_auth:
        return None
    return (f"refusing to bind {host} without --auth USER:PASS: anyone on that network could read every "
            "user's personal history. Add --auth, or pass --insecure-no-auth if you really mean it.")


def _host_of(header: str) -> str:
    """'127.0.0.1:7860' -> '127.0.0.1', '[::1]:7860' -> '::1'."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class HostGuard:
    """ASGI middleware: 403 for any request whose Host is not an allowed name."""

    def __init__(self, app, allowed: set[str]):
        self.app = app
        self.allowed = {h.strip("[]").lower() for h in allowed}

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            headers = dict(scope.get("headers") or [])
            host = _host_of(headers.get(b"host", b"").decode("latin-1"))
            if host not in self.allowed:
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                body = b"Forbidden: unexpected Host header (DNS-rebinding guard)"
                await send({"type": "http.response.start", "status": 403,
                            "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def host_guard_middleware(bind_host: str):
    """The middleware list for FastAPI, or [] when not bound to loopback (auth protects then)."""
    from starlette.middleware import Middleware

    if not is_loopback(bind_host):
        return []
    return [Middleware(HostGuard, allowed=LOOPBACK_NAMES | {bind_host})]
