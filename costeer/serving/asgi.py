"""Three ASGI pieces shared by the servers' guards (cloud_server.Bounded, ui/limits.py): read a
request body within a size and a time, hand it on from memory, answer with a JSON detail."""
from __future__ import annotations

import asyncio
import json


class TooLarge(Exception):
    pass


async def read_body(receive, limit: int, timeout_s: float | None = None) -> bytes:
    """The whole body, or TooLarge past `limit` bytes, or asyncio.TimeoutError when it has not all
    arrived within `timeout_s` (a half-sent request). A client that left gives what came."""
    body = bytearray()
    loop = asyncio.get_running_loop()
    deadline = None if timeout_s is None else loop.time() + timeout_s
    while True:
        wait = None if deadline is None else max(0.0, deadline - loop.time())
        message = await asyncio.wait_for(receive(), wait)
        if message["type"] == "http.disconnect":
            return bytes(body)
        body += message.get("body", b"")
        if len(body) > limit:
            raise TooLarge(len(body))
        if not message.get("more_body"):
            return bytes(body)


def replay(body: bytes, receive):
    """A `receive` that gives `body` once, then the client's own messages (its disconnect)."""
    sent = False

    async def again():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()
    return again


async def reply(send, status: int, detail: str, headers=()):
    """A JSON {"detail": …} answer; the connection is closed (the body may not have been read)."""
    payload = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            (b"connection", b"close"), *headers]})
    await send({"type": "http.response.body", "body": payload})
