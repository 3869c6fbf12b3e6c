"""Bounded work for strangers: what the raters' page (no login) and the login form do for anyone.

The raters' page answers anyone who can reach the server, so before Gradio sees a request this
ASGI middleware refuses what a rater never needs: uploads there, queue joins faster than a person
votes, functions the page does not have (Gradio answered those with a 500 and a traceback), and
it slows logins after failures (the owner's page under --auth).
"""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

from costeer.serving.asgi import TooLarge, read_body, replay, reply

MAX_JOIN_BYTES = 4 * 2**20  # a queue join carries the form's values: the largest is a 100 kB history entry
JOIN_BURST = 600  # joins one address may make at once on the raters' page (a pair is two: next, vote)
JOIN_RATE = 100.0  # ... and per second after that: 12 scripted raters on one address make ~90 (README)
JOIN_TIMEOUT_S = 30.0
MAX_ADDRESSES = 10_000  # addresses remembered for the limits; past that the oldest are forgotten
LOGIN_FREE_FAILURES = 3  # wrong passwords an address may try before each next try waits
LOGIN_MAX_WAIT_S = 30.0


@dataclass
class Bucket:
    tokens: float
    at: float = field(default_factory=time.monotonic)

    def take(self, rate: float, burst: float) -> bool:
        now = time.monotonic()
        self.tokens = min(burst, self.tokens + (now - self.at) * rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class StrangerLimits:
    """`pages`: {path prefix: the ids of that page's functions}, longest prefix first; `public`: the
    prefix of the page that needs no login (the raters')."""

    def __init__(self, app, pages: dict[str, set[int]], public: str, joins: tuple[int, float] = (JOIN_BURST, JOIN_RATE)):
        self.app, self.public = app, public
        self.burst, self.rate = joins
        self.pages = dict(sorted(pages.items(), key=lambda kv: -len(kv[0])))
        self.joins: dict[str, Bucket] = {}
        self.failures: dict[str, tuple[int, float]] = {}  # address -> (failed logins in a row, when the last was)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        path, client = scope["path"], (scope.get("client") or ("?",))[0]
        prefix = next((p for p in self.pages if path.startswith(p)), None)
        if prefix is None:
            return await self.app(scope, receive, send)
        rest = path[len(prefix):].lstrip("/")
        if prefix == self.public and rest.rstrip("/").endswith("upload"):
            return await reply(send, 403, "the raters' page takes no uploads")
        if rest.rstrip("/") == "login":
            return await self.login(scope, receive, send, client)
        if rest.rstrip("/").endswith("queue/join"):
            if prefix == self.public and not self._bucket(client).take(self.rate, self.burst):
                return await reply(send, 429, "too many requests from this address; wait a moment and try again")
            try:
                body = await read_body(receive, MAX_JOIN_BYTES, JOIN_TIMEOUT_S)
            except TooLarge:
                return await reply(send, 413, f"request body over {MAX_JOIN_BYTES} bytes")
            except asyncio.TimeoutError:
                return await reply(send, 408, f"request body not received within {JOIN_TIMEOUT_S:g} s")
            try:
                fn = json.loads(body).get("fn_index")
            except (ValueError, AttributeError, RecursionError):
                return await reply(send, 422, "request body is not a JSON object")
            if isinstance(fn, bool) or not isinstance(fn, int) or fn not in self.pages[prefix]:
                return await reply(send, 404, f"no such function on this page: fn_index {str(fn)[:20]}")
            return await self.app(scope, replay(body, receive), send)
        return await self.app(scope, receive, send)

    async def login(self, scope, receive, send, client):
        """Each failure after the first few makes the next try from that address wait longer
        (1, 2, 4 … 30 s): 443 guesses a second become a handful a minute."""
        failed, last = self.failures.get(client, (0, 0.0))
        wait = min(LOGIN_MAX_WAIT_S, 2.0 ** (failed - LOGIN_FREE_FAILURES)) if failed >= LOGIN_FREE_FAILURES else 0
        left = last + wait - time.monotonic()
        if left > 0:
            return await reply(send, 429, f"too many failed logins from this address; try again in {left:.0f} s",
                               [(b"retry-after", str(int(left) + 1).encode())])
        status = {}

        async def watch(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        await self.app(scope, receive, watch)
        if status.get("code") == 200:
            self.failures.pop(client, None)
        elif status.get("code") in (400, 401, 403):
            self.failures[client] = (failed + 1, time.monotonic())
            _forget_oldest(self.failures, lambda v: v[1])

    def _bucket(self, client: str) -> Bucket:
        if client not in self.joins:
            _forget_oldest(self.joins, lambda b: b.at)
            self.joins[client] = Bucket(self.burst)
        return self.joins[client]


def _forget_oldest(table: dict, when):
    """Keeps a per-address table bounded: past MAX_ADDRESSES, the older half is forgotten."""
    if len(table) > MAX_ADDRESSES:
        for key in sorted(table, key=lambda k: when(table[k]))[:MAX_ADDRESSES // 2]:
            del table[key]
