"""`python -m costeer serve-cloud`: the cloud side as its own process, speaking the subset of the
OpenAI completions API that vLLM serves (token-id prompts, top-k `logprobs`).

It never receives personal data from CoSteer clients: the device sends the conversation's token
ids and the chosen tokens only. `--audit-log FILE` appends every request body to a JSONL file so
that claim can be checked (tests/test_cloud_privacy.py does).

KV caches: each request's prompt usually extends a prompt seen one step earlier, so the server
keeps the caches of the last `MAX_CONVERSATIONS` prompts (LRU) and runs only the new tokens.
"""
from __future__ import annotations

import json
import threading
import time
import uuid
from collections import OrderedDict

import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

from .models import LoadedModel

MAX_CONVERSATIONS = 32  # cached prompts (KV caches) kept, least recently used dropped first
DEFAULT_MAX_LOGPROBS = 20  # vLLM's default cap


class _PrefixCache:
    """Token-id prompt -> (DynamicCache, next-token logits); finds the longest cached prefix."""

    def __init__(self, lm: LoadedModel, capacity: int = MAX_CONVERSATIONS):
        self.lm, self.capacity = lm, capacity
        self.entries: OrderedDict[tuple, tuple] = OrderedDict()
        self.hits = self.misses = 0

    @torch.inference_mode()
    def next_logits(self, ids: list[int]) -> torch.Tensor:
        from transformers import DynamicCache

        key = tuple(ids)
        if key in self.entries:  # the same prompt again (e.g. two streams sharing a prefix)
            self.entries.move_to_end(key)
            self.hits += 1
            return self.entries[key][1]
        best = max((k for k in self.entries if len(k) < len(key) and key[:len(k)] == k), key=len, default=None)
        if best is not None:
            cache, _ = self.entries.pop(best)  # extended in place: the shorter key is no longer valid
            new = ids[len(best):]
            self.hits += 1
        else:
            cache, new = DynamicCache(config=self.lm.model.config), ids
            self.misses += 1
        start = len(ids) - len(new)
        inp = torch.tensor([new], device=self.lm.device)
        pos = torch.arange(start, len(ids), device=self.lm.device)[None]
        out = self.lm.model(input_ids=inp, position_ids=pos, past_key_values=cache, use_cache=True, logits_to_keep=1)
        logits = out.logits[0, -1].float()
        self.entries[key] = (cache, logits)
        while len(self.entries) > self.capacity:
            self.entries.popitem(last=False)
        return logits


def create_app(lm: LoadedModel, audit_log: str | None = None, max_logprobs: int = DEFAULT_MAX_LOGPROBS):
    app = FastAPI(title="CoSteer cloud (OpenAI-compatible completions subset)")
    cache = _PrefixCache(lm)
    model_lock = threading.Lock()  # one forward at a time: caches are shared state
    audit_lock = threading.Lock()
    vocab = lm.vocab_size
    tok = lm.tokenizer

    def audit(body: dict, path: str):
        if audit_log:
            with audit_lock, open(audit_log, "a", encoding="utf-8") as f:
                f.write(json.dumps({"time": time.time(), "path": path, "body": body}, ensure_ascii=False) + "\n")

    def piece(token_id: int, as_ids: bool) -> str:
        return f"token_id:{token_id}" if as_ids else tok.decode([token_id])

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    def models():
        audit({}, "/v1/models")
        return {"object": "list", "data": [{"id": lm.name, "object": "model", "owned_by": "costeer",
                                            "max_model_len": getattr(lm.model.config, "max_position_embeddings", None)}]}

    @app.post("/tokenize")
    async def tokenize(request: Request):
        body = await _json_body(request)
        audit(body, "/tokenize")
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise HTTPException(400, "prompt must be a string")
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
        return {"tokens": ids, "count": len(ids), "max_model_len": getattr(lm.model.config, "max_position_embeddings", None)}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await _json_body(request)
        audit(body, "/v1/completions")
        prompts = _prompts(body.get("prompt"), vocab, tok)
        max_tokens = body.get("max_tokens", 16)
        k = body.get("logprobs") or 0
        if not isinstance(max_tokens, int) or not 1 <= max_tokens <= 512:
            raise HTTPException(400, "max_tokens must be an integer in [1, 512]")
        if not isinstance(k, int) or not 0 <= k <= max_logprobs:
            raise HTTPException(400, f"logprobs must be an integer in [0, {max_logprobs}] (server cap --max-logprobs)")
        if body.get("temperature", 0) not in (0, 0.0, None):
            raise HTTPException(400, "only temperature 0 is served: sampling happens on the device")
        as_ids = bool(body.get("return_tokens_as_token_ids"))
        choices = []
        with model_lock:
            for index, ids in enumerate(prompts):
                ids = list(ids)
                lp = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
                text = ""
                finish = "length"
                for _ in range(max_tokens):
                    logprobs = torch.log_softmax(cache.next_logits(ids), dim=-1)
                    token = int(torch.argmax(logprobs))
                    lp["tokens"].append(piece(token, as_ids))
                    lp["token_logprobs"].append(float(logprobs[token]))
                    lp["text_offset"].append(len(text))
                    if k:
                        values, top = torch.topk(logprobs, k)
                        lp["top_logprobs"].append({piece(int(i), as_ids): float(v) for v, i in zip(values, top)})
                    text += tok.decode([token])
                    ids.append(token)
                    if token == tok.eos_token_id:
                        finish = "stop"
                        break
                choices.append({"index": index, "text": text, "logprobs": lp if k else None, "finish_reason": finish})
        n_prompt = sum(len(p) for p in prompts)
        return JSONResponse({"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                             "model": lm.name, "choices": choices,
                             "usage": {"prompt_tokens": n_prompt, "completion_tokens": sum(len(c["logprobs"]["tokens"]) if c["logprobs"] else 0 for c in choices),
                                       "cache_hits": cache.hits, "cache_misses": cache.misses}})

    return app


async def _json_body(request: Request) -> dict:
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise HTTPException(400, "request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise HTTPException(400, "request body must be a JSON object")
    return body


def _prompts(prompt, vocab: int, tok) -> list[list[int]]:
    """OpenAI's prompt forms: text, a list of ids, or a list of those."""
    if isinstance(prompt, str):
        return [tok(prompt, add_special_tokens=False)["input_ids"]]
    if isinstance(prompt, list) and prompt and all(isinstance(x, int) and not isinstance(x, bool) for x in prompt):
        batch = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, list) and p for p in prompt):
        batch = prompt
    else:
        raise HTTPException(400, "prompt must be text, a non-empty list of token ids, or a list of those")
    for ids in batch:
        bad = [x for x in ids if not isinstance(x, int) or isinstance(x, bool) or not 0 <= x < vocab]
        if bad:
            raise HTTPException(400, f"token ids must be integers in [0, {vocab}); got {bad[:3]}")
    return batch


def serve(lm: LoadedModel, host: str, port: int, audit_log: str | None, max_logprobs: int):
    import uvicorn

    uvicorn.run(create_app(lm, audit_log, max_logprobs), host=host, port=port, log_level="warning")
