"""Who may do what. Two roles, two pages:

- the **owner** (the presenter) uses the main page at `/`: chat, histories, studies. On the
  loopback default, the owner is whoever connects from this machine; with `--auth USER:PASS`,
  the one logged in as USER. Every event of the main page, named endpoints and the "private"
  handlers alike, passes `owner_gate` before it runs: Gradio's `api_visibility="private"` only
  hides an endpoint from the docs, and `/gradio_api/queue/join` reaches any handler by index.
- a **rater** uses the study page at `/study/` with a link token. That page holds no chat, no
  history and no handler that reads one: only the study's next pair and the vote, and each of
  those checks the token against the study (ui/studies.py). It needs no password, so a study can
  be shared with raters without giving them the owner's.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import gradio as gr

from .security import is_loopback

log = logging.getLogger("costeer.app")


@dataclass(frozen=True)
class Access:
    owner: str | None  # the --auth user name, or None on the loopback default
    open_to_all: bool = False  # --insecure-no-auth on a network address: everyone is the owner

    def owner_problem(self, request: gr.Request | None) -> str | None:
        """Why this request may not act as the owner, or None when it may."""
        if self.open_to_all:
            return None
        if request is None:
            return "no request to check"
        if self.owner is not None:
            if getattr(request, "username", None) == self.owner:
                return None
            return "this page is the owner's: log in as the owner (a rater's study link opens /study/)"
        host = getattr(getattr(request, "client", None), "host", None) or ""
        if is_loopback(host):
            return None
        return f"the owner's page answers this machine only, not {host or 'an unknown address'}"


def owner_gate(demo: gr.Blocks, access: Access) -> gr.Blocks:
    """Refuse every event of `demo` that does not come from the owner, before it reaches a handler."""
    original = demo.process_api

    async def process_api(block_fn, inputs, state=None, request=None, *args, **kwargs):
        requests = request if isinstance(request, list) else [request]
        for r in requests:
            problem = access.owner_problem(r)
            if problem:
                fn = getattr(block_fn, "api_name", None) or getattr(block_fn, "name", None) or "handler"
                log.info("refused %s: not the owner (%s)", fn, problem)
                raise gr.Error(f"not allowed: {problem}", print_exception=False)
        return await original(block_fn, inputs, state, request, *args, **kwargs)

    demo.process_api = process_api
    return demo
