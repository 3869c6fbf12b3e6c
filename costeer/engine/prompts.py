"""Conversations as token ids, for each side of the boundary.

The cloud side sees `conversation_ids(tokenizer, messages)`: the conversation and nothing else
(it has no parameter a context could be passed through). Only the device builds the
with-context prompt (`with_context_ids`): the personal context goes into the system message of
that one row, and both device rows otherwise carry the same system prompt, so the delta
isolates what the context adds.
"""
from __future__ import annotations

SYSTEM_PROMPT = "You are a helpful assistant."
# Measured against `[kind] title: text` lines under "What you know about the user" (docs/evaluation.md):
# with the copy guard, these plain lines under this header gave the higher ROUGE-L and no copied tags.
CONTEXT_HEADER = "About the user (private; let it shape your answer, do not quote it):"


def system_with_context(context: str, system: str = SYSTEM_PROMPT) -> str:
    """The system message a model sees when it is given the personal context directly."""
    return system + (f"\n\n{CONTEXT_HEADER}\n{context.strip()}" if context.strip() else "")


def _split_system(messages: list[dict]) -> tuple[str, list[dict]]:
    system, rest = SYSTEM_PROMPT, []
    for m in messages:
        if m["role"] == "system":
            system = m["content"]
        else:
            rest.append({"role": m["role"], "content": m["content"]})
    return system, rest


def _encode(tokenizer, system: str, rest: list[dict]) -> list[int]:
    turns = [{"role": "system", "content": system}] + rest
    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    # a base model without a chat template: a plain transcript it can continue
    text = "".join(f"{t['role'].capitalize()}: {t['content']}\n\n" for t in turns) + "Assistant:"
    return tokenizer(text)["input_ids"]


def conversation_ids(tokenizer, messages: list[dict]) -> list[int]:
    """The conversation as the cloud (and the device's without-context row) sees it."""
    system, rest = _split_system(messages)
    return _encode(tokenizer, system, rest)


def with_context_ids(tokenizer, messages: list[dict], context: str) -> list[int]:
    """The device's with-context prompt: the context inside the system message."""
    system, rest = _split_system(messages)
    return _encode(tokenizer, system_with_context(context, system), rest)


def check_fits(who: str, length: int, limit: int | None, max_new_tokens: int):
    """A request must fit each model's context window: refuse it in words before any work."""
    if limit and length + max_new_tokens > limit:
        raise ValueError(f"conversation too long: {length} prompt tokens + max_new_tokens {max_new_tokens} exceed "
                         f"{who} context of {limit} tokens; start a new conversation or shorten the personal context")


def build_prompts(tokenizer, messages: list[dict], context: str) -> tuple[list[int], list[int]]:
    """(without, with) context: the device's two prompts."""
    return conversation_ids(tokenizer, messages), with_context_ids(tokenizer, messages, context)
