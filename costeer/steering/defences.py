"""Device-side defences on the delta d, before it steers: a deny-list and noise (and, after it
steers, the copy guard: copyguard.py).

    deny-list   token ids of the words of history entries marked *sensitive*. d is clamped to
                <= 0 on them, and after steering p is capped at b on them, so for every step
                p(token) <= b(token): steering never makes them likelier than the cloud alone.
                The cap is needed as well as the clamp: log_softmax renormalizes, and when other
                tokens lose mass a token with d = 0 can still gain some. The cap moves the excess
                onto the other tokens in proportion, which leaves the deny-listed ones where
                they are. Sensitive entries still shape tone and every other token.
    noise       d clipped to [-tau, tau], then Gaussian noise of scale sigma added per step,
                from a seeded generator (the same seed gives the same answer). This is *noise*,
                not differential privacy: no (epsilon, delta) is computed for the chosen
                tokens, so the measured privacy-utility curve (`eval --privacy`) is the claim.

Speculative drafts (speculative.py) go through the same processor and defences, and a draft never
proposes a deny-listed id at all (`without`): the deny-list covers every token the cloud sees.

Everything here runs on the device, next to the steering processor; the cloud never sees the
deny-list, the noise or d.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from costeer.steering.copyguard import MAX_RUN, MIN_RUN

SIGMA_MAX = 10.0
TAU_MAX = 100.0


@dataclass(frozen=True)
class Defences:
    deny_ids: tuple[int, ...] = ()
    tau: float | None = None  # None: no clipping
    sigma: float = 0.0  # 0: no noise
    seed: int | None = None  # None: the answer's sampling seed
    copy_guard: int = 0  # n: no chosen token completes a run of n context tokens (copyguard.py); 0: off
    private: float | None = None  # Private mode's margin in nats (private.py): a split transcript; None: off

    def __post_init__(self):
        object.__setattr__(self, "deny_ids", tuple(sorted(set(int(i) for i in self.deny_ids))))
        if self.tau is not None and (isinstance(self.tau, bool) or not isinstance(self.tau, (int, float))
                                     or not math.isfinite(self.tau) or not 0 < self.tau <= TAU_MAX):
            raise ValueError(f"tau must be a number in (0, {TAU_MAX:g}] (or off), got {self.tau!r}")
        if isinstance(self.sigma, bool) or not isinstance(self.sigma, (int, float)) or \
                not math.isfinite(self.sigma) or not 0 <= self.sigma <= SIGMA_MAX:
            raise ValueError(f"sigma must be a number in [0, {SIGMA_MAX:g}], got {self.sigma!r}")
        n = self.copy_guard
        if isinstance(n, bool) or not isinstance(n, int) or not (n == 0 or MIN_RUN <= n <= MAX_RUN):
            raise ValueError(f"copy guard must be an integer in [{MIN_RUN}, {MAX_RUN}] tokens, or 0 (off), got {n!r}")
        if self.private is not None:
            from costeer.steering.private import check_margin

            object.__setattr__(self, "private", check_margin(self.private))

    @property
    def active(self) -> bool:
        return bool(self.deny_ids) or self.tau is not None or self.sigma > 0 or self.copy_guard > 0 \
            or self.private is not None


def cap_at_base(p: torch.Tensor, b: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """p with p[ids] <= b[ids]: capped tokens give their excess to the tokens outside `ids`, in
    proportion to p (so those only gain, and no token in `ids` moves up)."""
    capped = torch.minimum(p[ids], b[ids])
    if torch.equal(capped, p[ids]):
        return p
    outside = torch.ones_like(p, dtype=torch.bool)
    outside[ids] = False
    rest = torch.logsumexp(p[outside], 0)  # log of the mass outside ids
    kept = torch.logsumexp(capped, 0)  # log of the mass left on ids
    q = p + (torch.log1p(-kept.exp()) - rest)  # the outside tokens scaled to fill 1 - kept
    q[ids] = capped
    return q


def without(logprobs: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """`logprobs` renormalized with `ids` removed. What a speculative draft may propose: a draft the
    answer rejects is a token plain CoSteer never sends, so for a draft the deny-list is a ban,
    not a cap. The verification stays exact whatever the draft distribution is."""
    if not len(ids):
        return logprobs
    q = logprobs.clone()
    q[ids] = -math.inf
    return torch.log_softmax(q, dim=-1)


def sent_deny_ids(transcript, stream: str, ids) -> dict[str, int]:
    """How many deny-listed ids are in what the cloud received on `stream`: the chosen tokens
    (each made no likelier than the cloud alone found it) and the rejected drafts (never, by
    `without`). Counted from the transcript, so the report is about what was sent."""
    ids = set(int(i) for i in ids)
    drafts = [t for r in transcript.drafts.get(stream, []) for t in r]
    return {"chosen": sum(t in ids for t in transcript.token_ids.get(stream, [])),
            "drafts": sum(t in ids for t in drafts), "rejected_drafts": len(drafts)}


def deny_margin(p: torch.Tensor, b: torch.Tensor, ids: torch.Tensor) -> float:
    """max over the deny-listed ids of log p - log b (<= 0 when the guarantee holds); tokens the
    cloud gave no probability are left out (both are -inf there)."""
    live = torch.isfinite(b[ids])
    if not bool(live.any()):
        return 0.0
    return float((p[ids][live] - b[ids][live]).max())


class Defended:
    """A steering processor with the defences around it (same contract as steering.py's)."""

    def __init__(self, inner, defences: Defences, seed: int, salt: int = 0):
        """`salt` gives a second processor of the same answer (the speculative drafts') noise of
        its own, so the answer's noise is the per-token loop's."""
        self.inner, self.defences = inner, defences
        self.ids = torch.tensor(defences.deny_ids, dtype=torch.long)
        self.noise = torch.Generator().manual_seed((defences.seed if defences.seed is not None else seed) ^ salt)

    def wants_delta(self, b_cloud: torch.Tensor) -> bool:
        return self.inner.wants_delta(b_cloud)

    def delta(self, d: torch.Tensor) -> torch.Tensor:
        """d as the defences let it steer."""
        D = self.defences
        if D.tau is not None:
            d = d.clamp(-D.tau, D.tau)
        if D.sigma > 0:
            d = d + D.sigma * torch.randn(d.shape, generator=self.noise, dtype=d.dtype)
        if len(self.ids):
            d = d.clone()
            d[self.ids] = d[self.ids].clamp(max=0.0)
        return d

    def __call__(self, b: torch.Tensor, d: torch.Tensor | None) -> torch.Tensor:
        if d is None:
            return self.inner(b, None)
        p = self.inner(b, self.delta(d))
        return cap_at_base(p, b, self.ids) if len(self.ids) else p
