"""How far a lower-precision model's choices move from fp32's: top-1 agreement, teacher-forced.

The fp32 model answers each prompt greedily; both models then read the same prompt and answer in
one pass, and a step agrees when both put their highest log-probability on the same next token.
Where they differ, `margins` keeps fp32's gap between its top two tokens: a miss on a near-tie is
rounding, a miss on a wide gap would be a broken kernel.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from costeer.engine.prompts import conversation_ids

SAMPLE = Path(__file__).resolve().parents[2] / "assets" / "eval" / "sample.jsonl"


def sample_prompts(n: int = 4) -> list[str]:
    """The first `n` questions of the sample set (the eval's own rows)."""
    with SAMPLE.open(encoding="utf-8") as f:
        return [json.loads(line)["query"] for line in f][:n]


@torch.inference_mode()
def _greedy(model, ids: list[int], steps: int) -> list[int]:
    out = model(torch.tensor([ids]), use_cache=True)
    answer = []
    for _ in range(steps):
        token = int(out.logits[0, -1].argmax())
        answer.append(token)
        out = model(torch.tensor([[token]]), past_key_values=out.past_key_values, use_cache=True)
    return answer


@torch.inference_mode()
def top1_agreement(reference, other, prompts: list[str] | None = None, steps: int = 100) -> dict:
    """Share of `steps` teacher-forced steps (split over the prompts) where `other` picks fp32's token."""
    prompts = prompts or sample_prompts()
    per_prompt = max(1, steps // len(prompts))
    same, total, margins = 0, 0, []
    for prompt in prompts:
        ids = conversation_ids(reference.tokenizer, [{"role": "user", "content": prompt}])
        answer = _greedy(reference.model, ids, per_prompt)
        full = torch.tensor([ids + answer])
        span = slice(len(ids) - 1, len(ids) - 1 + per_prompt)  # the positions that predict the answer
        ref = reference.model(full).logits[0, span].float()
        alt = other.model(full).logits[0, span].float()
        for r, a in zip(ref, alt):
            total += 1
            if int(r.argmax()) == int(a.argmax()):
                same += 1
            else:
                top2 = torch.log_softmax(r, -1).topk(2).values
                margins.append(round(float(top2[0] - top2[1]), 3))
    return {"top1_agreement": round(same / total, 4), "agreement_steps": total, "miss_margins_nats": margins}
