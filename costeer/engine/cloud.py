"""The cloud side: token ids in, next-token log-probs out, and nothing else.

`CloudLM` is the whole interface the engine has to a cloud model. Its only input is token ids
(`open(prompts)`, then `Rows.step(tokens)`); no method has a parameter that could carry the
personal context, which exists only on the device side (device.py).

    InProcessCloud   a LoadedModel in this process (batched KV caches, exact log-probs)
    RemoteCloud      an OpenAI-compatible /v1/completions server returning top-k log-probs:
                     vLLM, llama.cpp's llama-server, or `python -m costeer serve-cloud`

Over HTTP only the cloud's top-k are known: steering re-ranks among them, and a token outside
keeps probability 0, so the cloud's own quality floor holds. Faults (refused connection,
timeout, 408/409/429/5xx, malformed JSON) are retried a bounded number of times with backoff
min(0.5 * 2^n, 8) s plus jitter, honouring Retry-After; then a CloudError names the server, the
path and what happened. Every request has a timeout.
"""
from __future__ import annotations

import json
import math
import random
import time
from typing import Protocol

import torch

from costeer.engine.rows import ModelRows
from costeer.models.load import LoadedModel

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
PROBE_TEXT = "CoSteer probe: Grüße, 東京, naïve café — 123 tokens? 🎷"


class Rows(Protocol):
    """Rows of one cloud or device batch; see rows.py for the contract."""

    logprobs: torch.Tensor

    def step(self, tokens: list[int]) -> torch.Tensor: ...

    def keep(self, rows: list[int]) -> None: ...


class Scorer(Protocol):
    """One answer's cloud rows for speculative decoding (speculative.py): `score(answers, drafts)`
    gives, per stream, the next-token log-probs after `prompt + answer + draft[:i]` for every i
    from 0 to len(draft), (len(draft) + 1, V), from one request; a finished stream's answer is
    None (and so is its result)."""

    requests: int

    def score(self, answers: list[list[int]], drafts: list[list[int]]) -> list[torch.Tensor]: ...


class CloudLM(Protocol):
    name: str
    where: str  # for people: "in this process", "over HTTP, top-20 log-probs per token"
    tokenizer: object
    eos_ids: frozenset[int]
    context_limit: int | None

    def open(self, prompts: list[list[int]]) -> Rows: ...

    def scorer(self, prompts: list[list[int]]) -> Scorer: ...


class CloudError(RuntimeError):
    """The cloud endpoint failed after retries; the message names it and the fault."""


class InProcessCloud:
    """A cloud model running in this process. With `top_k`, it tells only its top-k log-probs,
    as a server does: the same answers as a remote cloud with the same weights."""

    def __init__(self, lm: LoadedModel, top_k: int | None = None):
        self.lm, self.name, self.tokenizer, self.top_k = lm, lm.name, lm.tokenizer, top_k
        self.eos_ids, self.context_limit = lm.eos_ids, lm.context_limit
        self.remote = False
        self.where = "in this process" + (f", top-{top_k} log-probs per token" if top_k else "")

    def open(self, prompts: list[list[int]]) -> Rows:
        rows = ModelRows(self.lm, prompts)
        return rows if self.top_k is None else TopKRows(rows, self.top_k)

    def scorer(self, prompts: list[list[int]]) -> "InProcessScorer":
        return InProcessScorer(self.lm, prompts, self.top_k)


def top_k_cut(logprobs: torch.Tensor, k: int) -> torch.Tensor:
    """The top-k log-probs of each row, -inf elsewhere (not renormalized), as a server tells them."""
    values, ids = torch.topk(logprobs, k, dim=-1)
    return torch.full_like(logprobs, float("-inf")).scatter(-1, ids, values)


class InProcessScorer:
    """A draft scorer in this process: one TrailRow per stream (rows.py)."""

    def __init__(self, lm: LoadedModel, prompts: list[list[int]], top_k: int | None):
        from costeer.engine.rows import TrailRow

        self.trails, self.top_k, self.requests = [TrailRow(lm, p) for p in prompts], top_k, 0

    def score(self, answers: list[list[int]], drafts: list[list[int]]) -> list[torch.Tensor]:
        self.requests += 1
        out = [None if a is None else t.along(a + d, len(d) + 1) for t, a, d in zip(self.trails, answers, drafts)]
        return out if self.top_k is None else [None if x is None else top_k_cut(x, self.top_k) for x in out]


class TopKRows:
    """Rows that show only their top-k log-probs (-inf elsewhere, not renormalized)."""

    def __init__(self, rows: ModelRows, k: int):
        self.rows, self.k = rows, k
        self.logprobs = self._cut()

    def _cut(self) -> torch.Tensor:
        return top_k_cut(self.rows.logprobs, self.k)

    def step(self, tokens: list[int]) -> torch.Tensor:
        self.rows.step(tokens)
        self.logprobs = self._cut()
        return self.logprobs

    def keep(self, rows: list[int]):
        self.rows.keep(rows)
        self.logprobs = self.logprobs[rows]


class RemoteCloud:
    """A cloud model behind /v1/completions. `tokenizer`, `vocab_size` and `eos_ids` are the
    device model's: `connect()` checks that the server's token ids agree with them."""

    def __init__(self, base_url: str, tokenizer, vocab_size: int, eos_ids: frozenset[int], top_k: int = 20,
                 timeout: float = 30.0, connect_timeout: float = 5.0, retries: int = 2, model: str | None = None,
                 device: str = "cpu"):
        import httpx

        if not base_url.startswith(("http://", "https://")):
            raise CloudError(f"cloud URL must start with http:// or https://, got {base_url!r}")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= 1000:
            raise CloudError(f"top_k must be an integer in [1, 1000], got {top_k!r}")
        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        self.tokenizer, self.vocab_size, self.eos_ids = tokenizer, vocab_size, frozenset(eos_ids)
        self.top_k, self.retries, self.device = top_k, retries, device
        self.http = httpx.Client(timeout=httpx.Timeout(timeout, connect=connect_timeout))  # keep-alive
        self.model_id = model
        self.context_limit: int | None = None
        self.requests = 0
        self.where = f"over HTTP, top-{top_k} log-probs per token"
        self.remote = True  # a request is a network round trip: the device works while it is in flight

    @property
    def name(self) -> str:
        return f"{self.model_id or '?'} @ {self.base_url}"

    # -- transport ------------------------------------------------------------------------
    def _request(self, method: str, path: str, body: dict | None = None, retry: bool = True) -> dict:
        import httpx

        url = self.base_url + path
        last = "no attempt"
        attempts = self.retries + 1 if retry else 1
        for attempt in range(attempts):
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
                    raise CloudError(f"cloud {self.base_url}: {method} {path} was refused: HTTP {r.status_code}: "
                                     f"{r.text[:300]}")
                else:
                    try:
                        return r.json()
                    except (json.JSONDecodeError, ValueError):
                        last = f"malformed JSON in the response: {r.text[:120]!r}"
            except httpx.TimeoutException:
                last = "timed out"
            except httpx.TransportError as exc:
                last = f"cannot connect ({type(exc).__name__}: {exc})"
            if attempt < attempts - 1:
                time.sleep(delay)
        raise CloudError(f"cloud {self.base_url}: {method} {path} failed after {attempts} attempts: {last}")

    def _status(self, path: str, body: dict) -> int:
        try:
            return self.http.post(self.base_url + path, json=body).status_code
        except Exception:  # noqa: BLE001 - only a probe: any failure means "not there"
            return 0

    # -- connecting ---------------------------------------------------------------------------
    def connect(self):
        """Find the model, its context window, and check that its token ids agree with ours."""
        models = self._request("GET", "/v1/models")
        try:
            entry = models["data"][0]
            self.model_id = self.model_id or entry["id"]
        except (KeyError, IndexError, TypeError):
            raise CloudError(f"cloud {self.base_url}: GET /v1/models answered without a model list") from None
        self.context_limit = entry.get("max_model_len") if isinstance(entry, dict) else None
        theirs = self._tokenize(PROBE_TEXT)
        ours = self.tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]
        if theirs != ours:
            raise CloudError(f"cloud {self.base_url} ({self.model_id}) tokenizes differently from the device model "
                             f"(probe: {len(theirs)} server tokens vs {len(ours)} here): CoSteer needs the same "
                             "token ids on both sides")
        if self.context_limit is None:  # llama-server says it in /props
            try:
                self.context_limit = self._request("GET", "/props", retry=False)["default_generation_settings"]["n_ctx"]
            except (CloudError, KeyError, TypeError):
                pass
        return self

    def _tokenize(self, text: str) -> list[int]:
        # vLLM and ours read `prompt` (and add BOS unless told not to); llama-server reads `content`.
        body = {"model": self.model_id, "prompt": text, "content": text,
                "add_special_tokens": False, "add_special": False}
        try:
            out = self._request("POST", "/tokenize", body, retry=False)
        except CloudError as exc:
            if "HTTP 404" in str(exc) and self._status("/extras/tokenize", {"input": text}) == 200:
                raise CloudError(
                    f"cloud {self.base_url} looks like llama-cpp-python's server, which CoSteer cannot use: it takes "
                    "no token-id prompts, scores one prompt per request and keys log-probs by text (so ids are "
                    "lost). Serve the model with llama.cpp's own llama-server or vLLM instead") from None
            raise
        tokens = out.get("tokens") if isinstance(out, dict) else None
        if not isinstance(tokens, list) or not tokens:
            raise CloudError(f"cloud {self.base_url}: POST /tokenize returned no tokens for the probe text "
                             f"(answer: {json.dumps(out)[:200]})")
        # llama-server may answer [{id, piece}] when asked for pieces; plain ids otherwise
        return [t["id"] if isinstance(t, dict) else t for t in tokens]

    # -- the CloudLM interface ----------------------------------------------------------------
    def open(self, prompts: list[list[int]]) -> "RemoteRows":
        return RemoteRows(self, prompts)

    def scorer(self, prompts: list[list[int]]) -> "RemoteScorer":
        return RemoteScorer(self, prompts)

    def next_logprobs(self, rows: list[list[int]]) -> list[dict[int, float]]:
        """For each row of token ids, the cloud's top-k next-token log-probs {id: logprob}."""
        body = {"model": self.model_id, "prompt": rows, "max_tokens": 1, "logprobs": self.top_k,
                "temperature": 0, "return_tokens_as_token_ids": True}
        out = self._request("POST", "/v1/completions", body)
        try:
            choices = sorted(out["choices"], key=lambda c: c["index"])
            result = [self._parse_top(c["logprobs"]) for c in choices]
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise CloudError(f"cloud {self.base_url}: POST /v1/completions: unexpected response shape "
                             f"({type(exc).__name__}: {exc})") from None
        if len(result) != len(rows):
            raise CloudError(f"cloud {self.base_url}: asked for {len(rows)} rows, got {len(result)}")
        for top in result:
            if not top:
                raise CloudError(f"cloud {self.base_url}: POST /v1/completions returned no top log-probs")
            bad = next((v for v in top.values() if math.isnan(v) or v > 1e-3), None)
            if bad is not None:
                raise CloudError(f"cloud {self.base_url}: POST /v1/completions returned the log-prob {bad}, "
                                 "which is not a log-probability (must be finite and <= 0)")
            out_of_range = [i for i in top if not 0 <= i < self.vocab_size]
            if out_of_range:
                raise CloudError(f"cloud {self.base_url}: token id {out_of_range[0]} is outside the vocabulary "
                                 f"(size {self.vocab_size})")
        return result

    def _parse_top(self, logprobs: dict) -> dict[int, float]:
        if "content" in logprobs:  # llama-server: content[i].top_logprobs[j] = {id, token, bytes, logprob}
            return {int(t["id"]): float(t["logprob"]) for t in logprobs["content"][0]["top_logprobs"]
                    if float(t["logprob"]) != float("-inf")}
        top = logprobs["top_logprobs"][0]  # OpenAI legacy: {"token_id:123": logprob}
        return {int(t.split(":", 1)[1]) if t.startswith("token_id:") else self._id_of(t): float(v)
                for t, v in top.items() if float(v) != float("-inf")}

    def _id_of(self, piece: str) -> int:
        ids = self.tokenizer(piece, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"token {piece!r} is not one token; ask the server for token ids")
        return ids[0]


class RemoteRows:
    """Cloud rows served over HTTP: the cloud's top-k log-probs, -inf elsewhere."""

    def __init__(self, cloud: RemoteCloud, prompts: list[list[int]]):
        self.cloud = cloud
        self.ids = [list(p) for p in prompts]
        self.logprobs = self._fetch()

    def _fetch(self) -> torch.Tensor:
        out = torch.full((len(self.ids), self.cloud.vocab_size), float("-inf"), device=self.cloud.device)
        for row, top in enumerate(self.cloud.next_logprobs(self.ids)):
            out[row, torch.tensor(list(top.keys()))] = torch.tensor(list(top.values()))
        return out

    def step(self, tokens: list[int]) -> torch.Tensor:
        return self.extend([[t] for t in tokens])

    def extend(self, tokens: list[list[int]]) -> torch.Tensor:
        for row, new in zip(self.ids, tokens):
            row.extend(new)
        self.logprobs = self._fetch()
        return self.logprobs

    def keep(self, rows: list[int]):
        self.ids = [self.ids[i] for i in rows]
        self.logprobs = self.logprobs[rows]


class RemoteScorer:
    """Drafts scored over HTTP in one request: every stream's `prompt + answer + draft[:i]` is a
    row of one /v1/completions call with max_tokens 1. Rows that share a prefix are what vLLM's
    and llama-server's prefix caches are for, and serve-cloud scores them in one forward; unlike
    `echo` or `prompt_logprobs`, the answer stays O(rows x k) however long the prompt."""

    def __init__(self, cloud: RemoteCloud, prompts: list[list[int]]):
        self.cloud, self.prompts, self.requests = cloud, [list(p) for p in prompts], 0

    def score(self, answers: list[list[int]], drafts: list[list[int]]) -> list[torch.Tensor]:
        rows, spans = [], []
        for prompt, answer, draft in zip(self.prompts, answers, drafts):
            if answer is None:
                continue
            base = prompt + answer
            rows += [base + draft[:i] for i in range(len(draft) + 1)]
            spans.append(len(draft) + 1)
        self.requests += 1
        tops = self.cloud.next_logprobs(rows)
        out = torch.full((len(rows), self.cloud.vocab_size), float("-inf"), device=self.cloud.device)
        for row, top in enumerate(tops):
            out[row, torch.tensor(list(top.keys()))] = torch.tensor(list(top.values()))
        parts = iter(torch.split(out, spans))
        return [None if a is None else next(parts) for a in answers]
