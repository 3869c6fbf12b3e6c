"""The cloud side seen from the device: an OpenAI-compatible completions endpoint (vLLM, llama.cpp's
server, or `python -m costeer serve-cloud`) that returns the top-k next-token log-probabilities.

The interface takes token ids and nothing else (`next_logprobs(rows_of_ids)`), so the personal
context cannot reach the cloud through it. Steering then re-ranks among the cloud's top-k: a token
outside them keeps probability 0, so the cloud's own quality floor holds.

Faults (refused connection, timeout, 408/409/429/5xx, malformed JSON) are retried a bounded number
of times with backoff min(0.5 * 2^n, 8) s plus jitter, honouring Retry-After; then a CloudError
names the cloud and what happened. Nothing waits forever: every request has a timeout.
"""
from __future__ import annotations

import json
import random
import time

import torch

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
PROBE_TEXT = "CoSteer probe: Grüße, 東京, naïve café — 123 tokens? 🎷"


class CloudError(RuntimeError):
    """The cloud endpoint failed after retries; the message names it and the fault."""


class RemoteCloud:
    """A cloud model behind /v1/completions. Plays the `cloud` role of CoSteerEngine."""

    def __init__(self, base_url: str, tokenizer, top_k: int = 20, timeout: float = 30.0,
                 connect_timeout: float = 5.0, retries: int = 2, model: str | None = None):
        import httpx

        if not base_url.startswith(("http://", "https://")):
            raise CloudError(f"cloud URL must start with http:// or https://, got {base_url!r}")
        if not isinstance(top_k, int) or not 1 <= top_k <= 1000:
            raise CloudError(f"top_k must be an integer in [1, 1000], got {top_k!r}")
        self.base_url = base_url.rstrip("/")
        self.tokenizer, self.top_k, self.retries = tokenizer, top_k, retries
        self.device = "cpu"
        self.http = httpx.Client(timeout=httpx.Timeout(timeout, connect=connect_timeout))  # keep-alive
        self.model_id = model
        self.requests = 0

    @property
    def name(self) -> str:
        return f"{self.model_id or '?'} @ {self.base_url}"

    # -- transport ------------------------------------------------------------------------
    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        import httpx

        url = self.base_url + path
        last = "no attempt"
        for attempt in range(self.retries + 1):
            delay = min(0.5 * 2 ** attempt, 8.0) * (0.75 + 0.5 * random.random())
            try:
                self.requests += 1
                r = self.http.request(method, url, json=body)
                if r.status_code in RETRY_STATUS:
                    last = f"HTTP {r.status_code}: {r.text[:200]}"
                    after = r.headers.get("retry-after")
                    if after and after.replace(".", "", 1).isdigit():
                        delay = min(float(after), 30.0)
                elif r.status_code >= 400:
                    raise CloudError(f"cloud {self.base_url} refused the request: HTTP {r.status_code}: {r.text[:300]}")
                else:
                    try:
                        return r.json()
                    except (json.JSONDecodeError, ValueError):
                        last = f"malformed JSON in the response: {r.text[:120]!r}"
            except httpx.TimeoutException:
                last = "timed out"
            except httpx.TransportError as exc:
                last = f"cannot connect ({type(exc).__name__}: {exc})"
            if attempt < self.retries:
                time.sleep(delay)
        raise CloudError(f"cloud {self.base_url} failed after {self.retries + 1} attempts: {last}")

    # -- the interface the engine uses ------------------------------------------------------
    def connect(self):
        """Find the model and check that its token ids agree with the device's tokenizer."""
        models = self._request("GET", "/v1/models")
        try:
            self.model_id = self.model_id or models["data"][0]["id"]
        except (KeyError, IndexError, TypeError):
            raise CloudError(f"cloud {self.base_url}: /v1/models answered without a model list") from None
        theirs = self._request("POST", "/tokenize", {"model": self.model_id, "prompt": PROBE_TEXT}).get("tokens")
        ours = self.tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]
        if theirs != ours:
            raise CloudError(f"cloud {self.base_url} ({self.model_id}) tokenizes differently from the device model: "
                             "CoSteer needs the same token ids on both sides")
        return self

    def next_logprobs(self, rows: list[list[int]]) -> list[dict[int, float]]:
        """For each row of token ids, the cloud's top-k next-token log-probs {id: logprob}."""
        body = {"model": self.model_id, "prompt": rows, "max_tokens": 1, "logprobs": self.top_k,
                "temperature": 0, "return_tokens_as_token_ids": True}
        out = self._request("POST", "/v1/completions", body)
        vocab = len(self.tokenizer)
        try:
            choices = sorted(out["choices"], key=lambda c: c["index"])
            result = []
            for c in choices:
                top = c["logprobs"]["top_logprobs"][0]
                parsed = {int(t.split(":", 1)[1]) if t.startswith("token_id:") else self._id_of(t): float(v)
                          for t, v in top.items()}
                result.append(parsed)
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise CloudError(f"cloud {self.base_url}: unexpected response shape ({type(exc).__name__}: {exc})") from None
        if len(result) != len(rows):
            raise CloudError(f"cloud {self.base_url}: asked for {len(rows)} rows, got {len(result)}")
        bad = [i for r in result for i in r if not 0 <= i < vocab]
        if bad:
            raise CloudError(f"cloud {self.base_url}: token id {bad[0]} is outside the vocabulary (size {vocab})")
        return result

    def _id_of(self, piece: str) -> int:
        ids = self.tokenizer(piece, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"token {piece!r} is not one token; ask the server for token ids")
        return ids[0]


class RemoteRows:
    """Cloud rows served over HTTP, with the `_Rows` contract: `.logits` (B, V) and `.step()`.

    Outside the top-k the logits are -inf, so log_softmax renormalizes over the top-k and the
    steered distribution can only re-rank them."""

    def __init__(self, cloud: RemoteCloud, prompts: list[list[int]], vocab: int, device: str = "cpu"):
        self.cloud, self.vocab, self.device = cloud, vocab, device
        self.ids = [list(p) for p in prompts]
        self.logits = self._fetch()

    def _fetch(self) -> torch.Tensor:
        logits = torch.full((len(self.ids), self.vocab), float("-inf"), device=self.device)
        for row, top in enumerate(self.cloud.next_logprobs(self.ids)):
            idx = torch.tensor(list(top.keys()), device=self.device)
            logits[row, idx] = torch.tensor(list(top.values()), device=self.device)
        return logits

    def step(self, tokens: list[int]) -> torch.Tensor:
        for row, t in zip(self.ids, tokens):
            row.append(t)
        self.logits = self._fetch()
        return self.logits

    def keep(self, rows: list[int]):
        self.ids = [self.ids[i] for i in rows]
        self.logits = self.logits[rows]
