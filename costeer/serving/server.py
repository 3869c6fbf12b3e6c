"""`python -m costeer serve-cloud`: the cloud side as its own process, speaking the subset of the
OpenAI completions API that vLLM serves (token-id prompts, top-k `logprobs`, `/tokenize`).

It never receives personal data from CoSteer clients: the device sends the conversation's token
ids and the chosen tokens only. `--audit-log FILE` appends every request body to a JSONL file so
that claim can be checked (tests/test_cloud_privacy.py does).

Work. All prompts of a request go through one batched forward (left padding, as the engine
does). The model runs on one worker thread, never on the event loop, so `/health` answers while
it computes. A request is refused with a 400 naming the limit before any work when it has more
rows than `max_rows`, a prompt longer than the model's context, or more tokens in all than
`max_request_tokens`; long prompts are prefilled in chunks, and between chunks the worker stops
if the client has gone or the server is shutting down.

KV caches. A CoSteer client's next request extends each row of its previous one by a token, so
the server keeps the batched cache of recent requests and runs only the new tokens. A request
matches a kept batch when every one of its prompts extends one of the batch's rows by the same
number of tokens (two rows may extend the same cached row, as the side-by-side streams do at
their first step). The caches are bounded in bytes, least recently used dropped first.
"""
from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Union

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from costeer.models.load import LoadedModel
from costeer.serving.asgi import TooLarge, read_body, replay, reply

DEFAULT_MAX_LOGPROBS = 20  # vLLM's default cap
DEFAULT_MAX_ROWS = 32  # a speculative side-by-side round: 2 streams x up to 8 positions, with room
DEFAULT_MAX_REQUEST_TOKENS = 16384
DEFAULT_CACHE_MB = 1024
TOKENS_PER_FORWARD = 2048  # rows x chunk length of one prefill forward: bounds memory and time between checks
CHARS_PER_TOKEN = 8  # a text prompt longer than max_request_tokens x this is refused before tokenizing
BODY_TIMEOUT_S = 10.0  # a request body not received within this is refused (408): a half-sent request is dropped


def max_body_bytes(max_request_tokens: int) -> int:
    """The largest request body read: room for max_request_tokens ids as JSON, or their text."""
    return max(2**20, 16 * max_request_tokens)


class Bounded:
    """ASGI middleware in front of every route: a body over `max_bytes` is refused (413) before it
    is read whole, and one that does not arrive within `timeout_s` (408); the app then reads the
    body from memory. Nothing over the limit is parsed, tokenized or logged."""

    def __init__(self, app, max_bytes: int, timeout_s: float = BODY_TIMEOUT_S):
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await reply(send, 413, f"request body is {length.decode(errors='replace')[:20]} bytes; the "
                                           f"limit is {self.max_bytes} (--max-request-tokens x 16)")
        try:
            body = await read_body(receive, self.max_bytes, self.timeout_s)
        except asyncio.TimeoutError:
            return await reply(send, 408, f"request body not received within {self.timeout_s:g} s")
        except TooLarge:
            return await reply(send, 413, f"request body is over {self.max_bytes} bytes, the limit "
                                          "(--max-request-tokens x 16)")
        await self.app(scope, replay(body, receive), send)


class Cancelled(Exception):
    """The client went away or the server is stopping: the work is abandoned."""


class Refused(Exception):
    """A request over a limit; the message names the field and the limit."""


# -- request and response models ---------------------------------------------------------------
class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI clients send more fields than we read

    model: StrictStr | None = None
    prompt: Union[StrictStr, list[StrictInt], list[list[StrictInt]]]
    max_tokens: StrictInt = Field(16, ge=1, le=512)
    logprobs: StrictInt | None = Field(None, ge=0)
    temperature: float | None = 0
    return_tokens_as_token_ids: StrictBool = False


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: StrictStr | None = None
    prompt: StrictStr | None = None  # vLLM's name
    content: StrictStr | None = None  # llama-server's name
    add_special_tokens: StrictBool = True  # vLLM's default


class Logprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class Choice(BaseModel):
    index: int
    text: str
    logprobs: Logprobs | None
    finish_reason: str


class CompletionResponse(BaseModel):
    id: str
    object: str = "text_completion"
    created: int
    model: str
    choices: list[Choice]
    usage: dict[str, int]


# -- batched rows with a prefix cache ------------------------------------------------------------
class _Batch:
    """Rows in one KV cache, as the engine's ModelRows, plus the token ids of every row."""

    def __init__(self, rows, cache, mask, next_pos, logprobs):
        self.rows, self.cache, self.mask, self.next_pos, self.logprobs = rows, cache, mask, next_pos, logprobs

    @property
    def nbytes(self) -> int:
        """Everything the batch keeps: the KV cache and each row's mask, position and log-probs
        (a row's log-probs are a whole vocabulary: 196 kB here, more than its cache at first)."""
        kv = sum(t.numel() * t.element_size() for layer in self.cache.layers
                 for t in (getattr(layer, "keys", None), getattr(layer, "values", None)) if t is not None)
        return kv + sum(t.numel() * t.element_size() for t in (self.mask, self.next_pos, self.logprobs))

    def select(self, idx: list[int]):
        if idx != list(range(len(self.rows))):
            index = torch.tensor(idx, device=self.mask.device)
            self.cache.batch_select_indices(index)
            self.mask, self.next_pos, self.logprobs = self.mask[index], self.next_pos[index], self.logprobs[index]
            self.rows = [self.rows[i] for i in idx]


class PrefixCache:
    def __init__(self, lm: LoadedModel, max_bytes: int, stopping: threading.Event):
        self.lm, self.max_bytes, self.stopping = lm, max_bytes, stopping
        self.entries: OrderedDict[int, _Batch] = OrderedDict()
        self.hits = self.misses = 0
        self._next_key = 0

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self.entries.values())

    def _match(self, prompts: list[tuple]):
        """The most recent kept batch every prompt extends by the same number of tokens."""
        for key in reversed(self.entries):
            rows = self.entries[key].rows
            idx, grow = [], set()
            for p in prompts:
                best = max((j for j, r in enumerate(rows) if len(r) <= len(p) and p[:len(r)] == r),
                           key=lambda j: len(rows[j]), default=None)
                if best is None:
                    break
                idx.append(best)
                grow.add(len(p) - len(rows[best]))
            if len(idx) == len(prompts) and len(grow) == 1:
                return key, idx, grow.pop()
        return None

    def run(self, prompts: list[tuple], cancel: threading.Event) -> _Batch:
        """The batch for these prompts, with next-token log-probs."""
        hit = self._match(prompts)
        if hit:
            key, idx, grow = hit
            batch = self.entries.pop(key)  # its cache is extended in place below
            batch.select(idx)
            self.hits += 1
            if grow:
                self.extend(batch, [list(p[-grow:]) for p in prompts], cancel)
        else:
            self.misses += 1
            batch = self._prefill([list(p) for p in prompts], cancel)
        return batch  # the caller keeps it once its work is done (a cancelled batch is dropped)

    def keep(self, batch: _Batch):
        self._next_key += 1
        self.entries[self._next_key] = batch
        while len(self.entries) > 1 and self.nbytes > self.max_bytes:
            self.entries.popitem(last=False)

    def _prefill(self, prompts: list[list[int]], cancel) -> _Batch:
        from transformers import DynamicCache

        device, pad = self.lm.device, self.lm.tokenizer.pad_token_id
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
        full_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        positions = (full_mask.cumsum(-1) - 1).clamp(min=0)
        batch = _Batch([tuple(p) for p in prompts], DynamicCache(config=self.lm.model.config),
                       full_mask[:, :0], None, None)
        chunk = max(16, TOKENS_PER_FORWARD // len(prompts))
        for start in range(0, width, chunk):
            self._check(cancel)
            end = min(width, start + chunk)
            batch.mask = full_mask[:, :end]
            batch.logprobs = self._model(ids[:, start:end], batch.mask, positions[:, start:end], batch.cache)[:, -1]
        batch.next_pos = positions[:, -1:] + 1
        return batch

    def extend(self, batch: _Batch, new: list[list[int]], cancel, along: bool = False):
        """Append the same number of tokens to every row, in chunks; with `along`, return the
        log-probs after each new token (B, n, V) (draft scoring: n is small)."""
        ids = torch.tensor(new, device=batch.mask.device)
        chunk = max(16, TOKENS_PER_FORWARD // len(new))
        scored = []
        for start in range(0, ids.shape[1], chunk):
            self._check(cancel)
            part = ids[:, start:start + chunk]
            n = part.shape[1]
            batch.mask = torch.cat([batch.mask, torch.ones_like(part)], dim=1)
            positions = batch.next_pos + torch.arange(n, device=part.device)
            batch.next_pos = batch.next_pos + n
            out = self._model(part, batch.mask, positions, batch.cache, n if along else 1)
            batch.logprobs = out[:, -1, :]
            scored.append(out)
        batch.rows = [r + tuple(t) for r, t in zip(batch.rows, new)]
        return torch.cat(scored, dim=1) if along else None

    def trail(self, top: tuple, shortest: int, cancel) -> tuple[_Batch, torch.Tensor]:
        """Next-token log-probs after every prefix of `top` from length `shortest` on (n, V), in one
        forward over what is new: a speculative draft's rows nest, so the longest carries them all.
        A kept one-row batch that shares a prefix with `top` is cropped back to it (the rejected
        part of the previous draft) instead of prefilling again."""
        best, lcp = None, 0
        for key, entry in self.entries.items():
            if len(entry.rows) == 1:
                row = entry.rows[0]
                n = next((i for i, (a, b) in enumerate(zip(row, top)) if a != b), min(len(row), len(top)))
                if n > lcp:
                    best, lcp = key, n
        keep = min(lcp, shortest - 1)
        first = None
        if best is not None and keep > 0:
            batch = self.entries.pop(best)
            self.hits += 1
            drop = len(batch.rows[0]) - keep  # from the end: a row selected out of a batch may be left-padded
            if drop:
                batch.cache.crop(-drop)
                batch.mask, batch.next_pos = batch.mask[:, :-drop], batch.next_pos - drop
                batch.rows = [batch.rows[0][:keep]]
        else:
            self.misses += 1
            keep = max(1, shortest - 1)
            batch = self._prefill([list(top[:keep])], cancel)
            if shortest == 1:
                first = batch.logprobs
        if keep < shortest - 1:
            self.extend(batch, [list(top[keep:shortest - 1])], cancel)
        scored = self.extend(batch, [list(top[max(keep, shortest - 1):])], cancel, along=True)[0]
        return batch, scored if first is None else torch.cat([first, scored])

    @torch.inference_mode()
    def _model(self, ids, mask, positions, cache, keep: int = 1):
        out = self.lm.model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                            use_cache=True, logits_to_keep=keep)
        return torch.log_softmax(out.logits[:, -keep:, :].float(), dim=-1)  # (B, keep, V)

    def _check(self, cancel):
        if cancel.is_set() or self.stopping.is_set():
            raise Cancelled()


# -- the app ---------------------------------------------------------------------------------------
def check_audit_log(path: str | None):
    """Fail at start-up, not on every request, when the audit log cannot be written."""
    if path:
        with open(path, "a", encoding="utf-8"):
            pass


class AuditLog:
    """`--audit-log`: accepted requests in full, a refused one as a bounded summary (never its
    body), one JSON line each. Written from threads (the caller keeps it off the event loop)."""

    def __init__(self, path: str | None):
        check_audit_log(path)
        self.path, self.lock = path, threading.Lock()

    def write(self, body: BaseModel | dict, path: str, refused: str | None = None):
        if not self.path:
            return
        if refused is not None:
            record = {"time": time.time(), "path": path, "refused": refused[:200]}
        else:
            record = {"time": time.time(), "path": path,
                      "body": body.model_dump(exclude_none=True) if isinstance(body, BaseModel) else body}
        with self.lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


class CloudService:
    """What the routes do: one model on one worker thread, its prefix caches, the audit log and
    the counters. `create_app` only maps routes onto these methods."""

    def __init__(self, lm: LoadedModel, audit_log: str | None, max_logprobs: int, max_rows: int,
                 max_request_tokens: int, cache_mb: int):
        self.audit = AuditLog(audit_log)
        self.lm, self.tok, self.vocab, self.context = lm, lm.tokenizer, lm.vocab_size, lm.context_limit
        self.max_logprobs, self.max_rows, self.max_request_tokens = max_logprobs, max_rows, max_request_tokens
        self.stopping = threading.Event()
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="costeer-model")  # one forward at a time
        self.cache = PrefixCache(lm, cache_mb * 2**20, self.stopping)
        self.stats = {"cancelled": 0, "completed": 0}

    def shutdown(self):
        self.stopping.set()  # a forward in progress ends at its next chunk
        self.worker.shutdown(wait=False, cancel_futures=True)

    def server_stats(self):
        c = self.cache
        return {**self.stats, "cache_hits": c.hits, "cache_misses": c.misses, "cache_bytes": c.nbytes,
                "cache_batches": len(c.entries)}

    def models(self):
        self.audit.write({}, "/v1/models")
        return {"object": "list", "data": [{"id": self.lm.name, "object": "model", "owned_by": "costeer",
                                            "max_model_len": self.context}]}

    def tokenize(self, body: TokenizeRequest):  # a plain def: FastAPI runs it on a thread, not the event loop
        text = body.prompt if body.prompt is not None else body.content
        problem = "prompt (or content) must be a string" if text is None else _text_problem(text, self.max_request_tokens)
        if problem:
            self.audit.write(body, "/tokenize", refused=problem)
            return JSONResponse({"detail": problem}, status_code=400)
        self.audit.write(body, "/tokenize")
        ids = self.tok(text, add_special_tokens=body.add_special_tokens)["input_ids"]
        return {"tokens": ids, "count": len(ids), "max_model_len": self.context}

    async def completions(self, body: CompletionRequest, request: Request):
        try:  # on a thread: a text prompt is tokenized there (bounded in length first)
            prompts = await asyncio.to_thread(_check_request, body, self.tok, self.vocab, self.context,
                                              self.max_logprobs, self.max_rows, self.max_request_tokens)
        except Refused as exc:
            await asyncio.to_thread(self.audit.write, body, "/v1/completions", str(exc))
            return JSONResponse({"detail": str(exc)}, status_code=400)
        await asyncio.to_thread(self.audit.write, body, "/v1/completions")
        try:
            choices = await self._run(body, prompts, request)
        except Cancelled:
            self.stats["cancelled"] += 1
            return JSONResponse({"detail": "cancelled"}, status_code=499)
        except asyncio.CancelledError:  # shutting down: uvicorn's grace period is over
            self.stats["cancelled"] += 1
            return JSONResponse({"detail": "the server is shutting down"}, status_code=503)
        self.stats["completed"] += 1
        c = self.cache
        n_prompt = sum(len(p) for p in prompts)
        n_done = sum(len(ch.logprobs.tokens) if ch.logprobs else 0 for ch in choices)
        return CompletionResponse(id=f"cmpl-{uuid.uuid4().hex}", created=int(time.time()), model=self.lm.name,
                                  choices=choices, usage={"prompt_tokens": n_prompt, "completion_tokens": n_done,
                                                          "cache_hits": c.hits, "cache_misses": c.misses,
                                                          "cache_bytes": c.nbytes})

    async def _run(self, body, prompts, request: Request):
        """The forward on the worker thread; a client that goes away cancels it between chunks."""
        cancel = threading.Event()
        future = asyncio.get_running_loop().run_in_executor(self.worker, _complete, self.cache, self.tok, body,
                                                            prompts, cancel)
        try:
            while not future.done():
                await asyncio.wait([future], timeout=0.05)
                if not future.done() and await request.is_disconnected():
                    cancel.set()
            return future.result()
        finally:
            cancel.set()  # also when this task itself is cancelled (shutdown): the worker stops


def create_app(lm: LoadedModel, audit_log: str | None = None, max_logprobs: int = DEFAULT_MAX_LOGPROBS,
               max_rows: int = DEFAULT_MAX_ROWS, max_request_tokens: int = DEFAULT_MAX_REQUEST_TOKENS,
               cache_mb: int = DEFAULT_CACHE_MB):
    """The routes, behind `Bounded` (the body limit and timeout), as an ASGI app."""
    service = CloudService(lm, audit_log, max_logprobs, max_rows, max_request_tokens, cache_mb)

    async def lifespan(app):
        yield
        service.shutdown()

    app = FastAPI(title="CoSteer cloud (OpenAI-compatible completions subset)", lifespan=lifespan)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        return JSONResponse({"detail": _one_line(exc)}, status_code=400)

    @app.get("/health")
    def health():
        return {"status": "ok"}

    app.get("/stats")(service.server_stats)
    app.get("/v1/models")(service.models)
    app.post("/tokenize")(service.tokenize)
    app.post("/v1/completions", response_model=CompletionResponse)(service.completions)
    return Bounded(app, max_body_bytes(max_request_tokens))


def _one_line(exc: RequestValidationError) -> str:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return "request body is not valid JSON"
    if any(e.get("type") == "model_attributes_type" for e in errors):
        return "request body must be a JSON object"
    parts = []
    for e in errors[:3]:
        where = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def _text_problem(text: str, max_request_tokens: int) -> str | None:
    """A text over what the request limit could ever take is refused before it is tokenized."""
    limit = max_request_tokens * CHARS_PER_TOKEN
    if len(text) > limit:
        return (f"prompt: {len(text)} characters; the limit is {limit} (--max-request-tokens x {CHARS_PER_TOKEN}), "
                "checked before tokenizing")
    return None


def _check_request(body: CompletionRequest, tok, vocab, context, max_logprobs, max_rows, max_request_tokens):
    """The prompts as tuples of ids, or Refused naming the limit."""
    k = body.logprobs or 0
    if k > min(max_logprobs, vocab):
        raise Refused(f"logprobs must be an integer in [0, {min(max_logprobs, vocab)}] (server cap --max-logprobs"
                      f"{', and the vocabulary size' if max_logprobs > vocab else ''})")
    if body.temperature not in (0, 0.0, None):
        raise Refused("only temperature 0 is served: sampling happens on the device")
    prompt = body.prompt
    if isinstance(prompt, str):
        problem = _text_problem(prompt, max_request_tokens)
        if problem:
            raise Refused(problem)
        prompts = [tok(prompt, add_special_tokens=False)["input_ids"]]
    elif prompt and all(isinstance(x, int) for x in prompt):
        prompts = [prompt]
    elif prompt and all(isinstance(p, list) and p for p in prompt):
        prompts = prompt
    else:
        raise Refused("prompt must be text, a non-empty list of token ids, or a list of those")
    if not all(prompts):
        raise Refused("prompt must not be empty")
    if len(prompts) > max_rows:
        raise Refused(f"prompt: at most {max_rows} prompts per request (--max-rows), got {len(prompts)}")
    for ids in prompts:
        bad = [x for x in ids if not 0 <= x < vocab]
        if bad:
            raise Refused(f"prompt: token ids must be integers in [0, {vocab}); got {bad[:3]}")
        if context and len(ids) + body.max_tokens > context:
            raise Refused(f"prompt: {len(ids)} tokens + max_tokens {body.max_tokens} exceed the model's context "
                          f"of {context} tokens")
    total = sum(len(p) + body.max_tokens for p in prompts)
    if total > max_request_tokens:
        raise Refused(f"prompt: {total} tokens in all (prompts + max_tokens per row) exceed the request limit "
                      f"of {max_request_tokens} (--max-request-tokens)")
    return [tuple(p) for p in prompts]


def _complete(cache: PrefixCache, tok, body: CompletionRequest, prompts: list[tuple], cancel) -> list[Choice]:
    """Greedy completion of every row at once; runs on the worker thread."""
    k, as_ids = body.logprobs or 0, body.return_tokens_as_token_ids
    piece = (lambda t: f"token_id:{t}") if as_ids else (lambda t: tok.decode([t]))
    eos = tok.eos_token_id
    if body.max_tokens == 1:
        tops, owner = _nesting(prompts)
        if len(tops) < len(set(prompts)):
            return _score_nested(cache, tops, owner, prompts, k, piece, tok, cancel)
    batch = cache.run(prompts, cancel)
    n = len(prompts)
    out = [Logprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[]) for _ in range(n)]
    texts, finish = [""] * n, ["length"] * n
    for step in range(body.max_tokens):
        tokens = batch.logprobs.argmax(-1).tolist()
        values, top = torch.topk(batch.logprobs, k) if k else (None, None)
        for i, t in enumerate(tokens):
            if finish[i] == "stop":
                continue
            lp = out[i]
            lp.tokens.append(piece(t))
            lp.token_logprobs.append(float(batch.logprobs[i, t]))
            lp.text_offset.append(len(texts[i]))
            if k:
                lp.top_logprobs.append({piece(int(j)): float(v) for v, j in zip(values[i], top[i])})
            texts[i] += tok.decode([t])
            if t == eos:
                finish[i] = "stop"
        if step + 1 == body.max_tokens or all(f == "stop" for f in finish):
            break
        cache.extend(batch, [[t] for t in tokens], cancel)
    cache.keep(batch)
    return [Choice(index=i, text=texts[i], logprobs=out[i] if k else None, finish_reason=finish[i]) for i in range(n)]


def _nesting(prompts: list[tuple]) -> tuple[list[tuple], dict[tuple, tuple]]:
    """The request's longest prompts, and for each prompt the longest one it is a prefix of."""
    tops, owner = [], {}
    for p in sorted(set(prompts), key=len, reverse=True):
        owner[p] = next((t for t in tops if t[:len(p)] == p), p)
        if owner[p] is p:
            tops.append(p)
    return tops, owner


def _score_nested(cache: PrefixCache, tops, owner, prompts, k, piece, tok, cancel) -> list[Choice]:
    """One token for each prompt of a request whose prompts nest (a speculative draft's rows):
    one forward per longest prompt gives every row's log-probs."""
    along = {}
    for top in tops:
        shortest = min(len(p) for p in prompts if owner[p] == top)
        batch, scored = cache.trail(top, shortest, cancel)
        along[top] = (shortest, scored)
        cache.keep(batch)
    choices = []
    for i, p in enumerate(prompts):
        shortest, scored = along[owner[p]]
        logprobs = scored[len(p) - shortest]
        t = int(logprobs.argmax())
        top = {}
        if k:
            values, ids = torch.topk(logprobs, k)
            top = {piece(int(j)): float(v) for v, j in zip(values, ids)}
        lp = Logprobs(tokens=[piece(t)], token_logprobs=[float(logprobs[t])], top_logprobs=[top] if k else [],
                      text_offset=[0])
        choices.append(Choice(index=i, text=tok.decode([t]), logprobs=lp if k else None,
                              finish_reason="stop" if t == tok.eos_token_id else "length"))
    return choices


def serve(lm: LoadedModel, host: str, port: int, audit_log: str | None, max_logprobs: int,
          max_rows: int = DEFAULT_MAX_ROWS, max_request_tokens: int = DEFAULT_MAX_REQUEST_TOKENS,
          cache_mb: int = DEFAULT_CACHE_MB):
    import uvicorn

    app = create_app(lm, audit_log, max_logprobs, max_rows, max_request_tokens, cache_mb)
    # SIGTERM: stop accepting, give running requests 2 s, then cancel them (their work stops at
    # the next chunk) and exit.
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=2)
