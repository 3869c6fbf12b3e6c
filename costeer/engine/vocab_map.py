"""Steering across two tokenizers: the intersection of their vocabularies, matched by the bytes
each token stands for.

Normalization: byte-level BPE vocabularies (GPT-2 style: "Ġ" for a space, "Ċ" for a newline, one
printable character per byte) are mapped back to bytes; SentencePiece vocabularies use "▁" for a
space and "<0xNN>" byte-fallback tokens for single bytes. Two tokens match when their bytes are
equal. Special and added tokens never match.

Steering: the device's delta lives in device ids; `to_cloud` moves it onto the matching cloud
ids and leaves 0 elsewhere, so tokens outside the intersection keep the cloud's own probability.
"""
from __future__ import annotations

import re

import torch

_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


_UNICODE_TO_BYTE = {c: b for b, c in _bytes_to_unicode().items()}


def is_byte_level(vocab: dict[str, int]) -> bool:
    spaced = sum(1 for t in vocab if t.startswith("Ġ"))
    sp = sum(1 for t in vocab if t.startswith("▁"))
    return spaced > sp


def token_bytes(token: str, byte_level: bool) -> bytes | None:
    """The bytes a vocabulary entry stands for; None when it cannot be normalized."""
    if byte_level:
        try:
            return bytes(_UNICODE_TO_BYTE[c] for c in token)
        except KeyError:
            return None
    m = _BYTE_FALLBACK.match(token)
    if m:
        return bytes([int(m.group(1), 16)])
    return token.replace("▁", " ").encode("utf-8")


def _normalized(tokenizer) -> dict[bytes, int]:
    vocab = tokenizer.get_vocab()
    added = getattr(tokenizer, "added_tokens_decoder", {})
    special = set(tokenizer.all_special_ids) | {i for i, t in added.items() if getattr(t, "special", False)}
    byte_level = is_byte_level(vocab)
    out: dict[bytes, int] = {}
    # byte-fallback entries last: a real token for the same bytes ("\n") wins over "<0x0A>"
    for token, idx in sorted(vocab.items(), key=lambda kv: (bool(_BYTE_FALLBACK.match(kv[0])), kv[1])):
        if idx in special:
            continue
        key = token_bytes(token, byte_level)
        if key and key not in out:
            out[key] = idx
    return out


class VocabMap:
    """Matching cloud and device token ids; built once when the models load."""

    def __init__(self, cloud_tokenizer, device_tokenizer, cloud_vocab: int, device_vocab: int):
        cloud, device = _normalized(cloud_tokenizer), _normalized(device_tokenizer)
        common = sorted(k for k in cloud.keys() & device.keys() if cloud[k] < cloud_vocab and device[k] < device_vocab)
        self.cloud_ids = torch.tensor([cloud[k] for k in common], dtype=torch.long)
        self.device_ids = torch.tensor([device[k] for k in common], dtype=torch.long)
        self.cloud_vocab = cloud_vocab
        self.cloud_size, self.device_size = len(cloud), len(device)

    @property
    def size(self) -> int:
        return len(self.cloud_ids)

    def to_cloud(self, delta_device: torch.Tensor) -> torch.Tensor:
        """A device-vocabulary delta on cloud ids; 0 outside the intersection."""
        out = torch.zeros(self.cloud_vocab, dtype=delta_device.dtype, device=delta_device.device)
        out[self.cloud_ids.to(out.device)] = delta_device[self.device_ids.to(out.device)]
        return out

    def mass_covered(self, cloud_logprobs: torch.Tensor) -> float:
        """Share of a cloud next-token distribution that falls on intersection tokens."""
        return float(cloud_logprobs.exp()[self.cloud_ids.to(cloud_logprobs.device)].sum())

    def describe(self) -> str:
        return (f"{self.size} shared tokens ({100 * self.size / self.cloud_size:.1f}% of the cloud's "
                f"{self.cloud_size}, {100 * self.size / self.device_size:.1f}% of the device's {self.device_size})")
