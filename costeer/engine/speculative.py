"""Speculative CoSteer: the device drafts, the cloud scores a whole draft in one round trip, and
the device keeps exactly what CoSteer would have chosen.

`speculate = K` means at most K tokens per cloud round trip. Each round, for each stream:

    draft    the device proposes k <= K-1 tokens with its own stand-in for the cloud's b:
                 steered    x_i from steer(slm_i, d_i) = log_softmax(slm_i + C * d_i)  (slm: its
                            without-context row; d_i: the delta it computes anyway; steer: the
                            answer's processor with the same defences, deny-listed ids removed)
                 unsteered  x_i from slm_i
    score    one cloud request returns b_i after prompt + answer + x_<i, for i = 0..k
    verify   position by position, CoSteer's own choice from p_i = steer(b_i, d_i):
                 greedy     keep x_i iff argmax p_i == x_i
                 sampled    keep x_i with probability min(1, p_i(x)/q_i(x)), else draw from
                            max(0, p_i - q_i) normalized (sampling.Chooser.verify)
             the first rejected x_i is replaced by CoSteer's choice; when all k are kept,
             position k gives one more token. A round emits 1..K tokens.

Every emitted token is chosen from the same p_i as the per-token loop (decoding.py) computes, in
the same order, so greedy output is token-identical to it and sampled output has the same
distribution. While the request is in flight the device computes d_k, the last position's delta
(for a remote cloud, on a worker thread): with K = 1 that is all there is, per-token decoding
with the device's passes hidden behind the network ("overlap").

Privacy. A draft token the cloud saw but the answer did not keep is a token plain CoSteer never
sends, drawn from a distribution the personal context shaped. Each is recorded in
`CloudTranscript.drafts` (one list per round) and counted on the events (`TokenEvent.draft.rejected`).
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from costeer.engine.cloud import top_k_cut
from costeer.engine.sampling import Chooser, final_probs
from costeer.steering.defences import without
from costeer.steering.processors import processor

@dataclass
class DraftRound:
    """What speculation adds to a token's event (speculative.py)."""

    round: int  # the cloud round trip that scored this token
    kept: bool = False  # this token is the device's draft, kept by the verification
    sent: int = 0  # on a stream's first event of a round: how many drafts it sent
    rejected: int = 0  # drafted tokens the cloud saw this round and were not kept
    outside_top_k: bool = False  # the rejected draft token was outside the cloud's top-k


@dataclass
class Speculation:
    """One answer's drafting, for the readouts: round trips, drafted, kept and rejected tokens."""

    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    rejected: int = 0
    outside_top_k: int = 0
    tokens: int = 0
    _last: int = -1

    @property
    def acceptance(self) -> float | None:
        return self.accepted / self.drafted if self.drafted else None

    def add(self, ev):
        d = ev.draft
        if d is None:
            return
        if d.round != self._last:
            self.rounds, self._last = self.rounds + 1, d.round
        self.drafted += d.sent
        self.tokens += 1
        self.accepted += int(d.kept)
        self.rejected += d.rejected
        self.outside_top_k += int(d.outside_top_k)

    def as_dict(self) -> dict:
        return {"round_trips": self.rounds, "drafted": self.drafted, "accepted": self.accepted,
                "rejected": self.rejected, "outside_top_k": self.outside_top_k, "tokens": self.tokens,
                "acceptance": None if self.acceptance is None else round(self.acceptance, 4),
                "round_trips_per_token": round(self.rounds / self.tokens, 4) if self.tokens else None}


class Drafter:
    """The device's side of one stream: its rows follow the stream's answer plus the draft."""

    def __init__(self, stream: str, rows, steer, deny: torch.Tensor | None, sampling, generator: torch.Generator,
                 top_k: int | None, guard=None):
        self.stream, self.rows, self.steer, self.deny, self.guard = stream, rows, steer, deny, guard
        self.sampling, self.generator, self.top_k = sampling, generator, top_k

    def at(self, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(the draft's log-probs, d) after `ids`; d is None for the unsteered stream. A cloud that
        tells only its top-k steers among those, so the stand-in is cut the same way. A steered draft
        is steered as the answer is (`steer`, the defences included) and never proposes a
        deny-listed id: the cloud sees drafts too."""
        if self.stream == "steered":
            slm, d = self.rows.pair(ids)
        else:
            slm, d = self.rows.logprobs_after(ids)[0], None
        if self.top_k:
            slm = top_k_cut(slm, self.top_k)
        if d is None:
            return slm, None
        q = self.steer(slm, d)
        if self.guard is not None:  # a draft never completes a run of the context either (copyguard.py)
            q = self.guard(q, ids)
        return (without(q, self.deny) if self.deny is not None else q), d

    def propose(self, logprobs: torch.Tensor, control: Chooser) -> tuple[int, torch.Tensor | None]:
        """A draft token, under the stream's own repetition control (`control` is a fork of its
        Chooser that remembers the draft so far)."""
        scores = control.controlled(logprobs)
        if self.sampling.greedy:
            x, q = int(torch.argmax(scores)), None
        else:
            q = final_probs(scores, self.sampling)
            x = int(torch.multinomial(q, 1, generator=self.generator))
        control.remember(x)
        return x, q


class Lane:
    """One stream's draft: `toks` continue the answer so far, `ds[i]` and `qs[i]` are the delta and
    the draft distribution at position i (before toks[i]). The lane drafts ahead while a request is
    in flight; what the verification keeps is the next round's draft already made."""

    def __init__(self, drafter: Drafter, chooser: Chooser, eos_ids):
        self.drafter, self.chooser, self.eos_ids = drafter, chooser, eos_ids
        self.answer: list[int] = []
        self.reset()

    def reset(self):
        self.toks, self.qs, self.ds = [], [], []
        self.control = self.chooser.fork()  # the stream's repetition control, remembering the draft

    def step(self):
        """Draft one more token (one device pass)."""
        logprobs, d = self.drafter.at(self.answer + self.toks)
        x, q = self.drafter.propose(logprobs, self.control)
        self.toks.append(x)
        self.qs.append(q)
        self.ds.append(d)

    def can_step(self, limit: int) -> bool:
        return len(self.toks) < limit and not (self.toks and self.toks[-1] in self.eos_ids)

    def advance(self, emitted: list[int]):
        """The verification emitted these tokens: keep the rest of the draft if it agreed."""
        self.answer += emitted
        if self.toks[:len(emitted)] == emitted:
            del self.toks[:len(emitted)], self.qs[:len(emitted)], self.ds[:len(emitted)]
        else:
            self.reset()


def rounds(reply, messages, unsteered_messages, context):
    """Yield TokenEvents, as the per-token loop does, `reply.spec.speculate` tokens at most per
    round trip. Every token is decided by `reply.decide` (decoding.Reply), the per-token loop's own step."""
    K = reply.spec.speculate
    engine, prompts, max_new, spec = reply.engine, reply.prompts, reply.max_new, reply.spec
    cloud, device = engine.cloud, engine.device
    if device.vocab_map is not None:
        raise ValueError("speculate: drafting needs the cloud's tokenizer on the device, and this pair has two "
                         "(use speculate 1)")
    lanes = {}
    for s in prompts:
        rows = device.open(messages, context, max_new) if s == "steered" else device.open_base(unsteered_messages, max_new)
        # the drafts' own processor: the same steering and defences, its noise drawn apart from the
        # answer's so that verification sees the per-token loop's noise
        drafter = Drafter(s, rows, processor(spec.params, None, False, spec.defences, reply.seed, salt=0xD4AF7),
                          reply.deny, spec.sampling, torch.Generator().manual_seed(reply.seed ^ 0x5EED),
                          getattr(cloud, "top_k", None), reply.guard if s == "steered" else None)
        lanes[s] = Lane(drafter, reply.choose[s], engine.eos_ids)
    scorer = cloud.scorer(list(prompts.values()))
    live = list(prompts)
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="costeer-cloud") if getattr(cloud, "remote", False) else None
    round_trip = -1
    try:
        while live:
            round_trip += 1
            drafts, device_ms = _draft(lanes, live, K, max_new)
            # score every position in one request; meanwhile the device drafts on (the steered lane
            # first: its last position's delta is needed to verify)
            request = lambda: _timed(scorer.score, [lanes[s].answer if s in live else None for s in prompts],  # noqa: E731
                                     [drafts.get(s) for s in prompts])
            future = pool.submit(request) if pool else None
            _draft_ahead(lanes, live, drafts, K, max_new, future, device_ms)
            scored, cloud_ms = future.result() if future else request()
            for s, b_rows in zip(list(prompts), scored):
                if b_rows is not None:
                    yield from _verify(reply, s, lanes[s], drafts[s], b_rows, round_trip, cloud_ms, device_ms[s], live)
    finally:
        if pool:
            pool.shutdown(wait=False, cancel_futures=True)


def _draft(lanes, live, K: int, max_new: int) -> tuple[dict, dict]:
    """Each live lane's draft for this round: what it has, completed position by position."""
    drafts, device_ms = {}, {s: 0.0 for s in live}
    for s in live:
        lane, start = lanes[s], time.perf_counter()
        k = min(K - 1, max_new - len(lane.answer) - 1)
        while lane.can_step(k):
            lane.step()
        drafts[s] = lane.toks[:k]
        device_ms[s] += (time.perf_counter() - start) * 1000
    return drafts, device_ms


def _draft_ahead(lanes, live, drafts, K: int, max_new: int, future, device_ms):
    """While the request is in flight: the steered lane's last delta first (verification needs
    it), then the next round's drafts, until the answer arrives."""
    while True:
        ahead = [s for s in live if lanes[s].can_step(min(len(drafts[s]) + K, max_new - len(lanes[s].answer)))]
        needed = [s for s in ahead if s == "steered" and len(lanes[s].ds) <= len(drafts[s])]
        if not needed and (future is None or future.done() or not ahead):
            return
        s = (needed or ahead)[0]
        start = time.perf_counter()
        lanes[s].step()
        device_ms[s] += (time.perf_counter() - start) * 1000


def _verify(reply, s: str, lane: "Lane", draft: list[int], b_rows, round_trip: int, cloud_ms: float,
            device_ms: float, live: list[str]):
    """CoSteer's own choice at each scored position, up to the first rejected draft; the drafts the
    cloud saw that the answer will not hold are recorded as sent."""
    emitted = []
    for i in range(len(draft) + 1):
        x = draft[i] if i < len(draft) else None
        ev, kept = reply.decide(s, len(lane.answer) + i, b_rows[i], lambda: lane.ds[i],
                                cloud_ms if i == 0 else 0.0, device_ms if i == 0 else 0.0,
                                None if x is None else (x, lane.qs[i]))
        ev.draft = DraftRound(round_trip, kept, len(draft) if i == 0 else 0)
        emitted.append(ev.token_id)
        done = ev.finish is not None
        if x is not None and (not kept or done):
            unused = draft[i + (1 if kept else 0):]
            ev.draft.rejected = len(unused)
            ev.draft.outside_top_k = not kept and not bool(torch.isfinite(b_rows[i][x]))
            reply.rejected(s, unused)
        yield ev
        if done:
            live.remove(s)
            break
        if x is not None and not kept:
            break
    lane.advance(emitted)


def _timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, (time.perf_counter() - start) * 1000


def expected_tokens(acceptance: float, K: int) -> float:
    """Tokens one round emits on average when each draft is kept with probability a, independently
    (Leviathan et al. 2023): 1 + a + ... + a^(K-1) = (1 - a^K) / (1 - a)."""
    return float(K) if acceptance >= 1 else (1 - acceptance ** K) / (1 - acceptance)


def expected_speedup(acceptance: float, K: int, rtt_ms: float, cloud_ms: float, device_ms: float) -> float:
    """Per-token remote decoding costs rtt + cloud + device per token. A speculative round costs
    (K - 1) drafting passes, then one round trip, and emits expected_tokens(a, K): the speed-up
    without drafting ahead (a lower bound: drafting ahead hides the round trip when drafts agree).
    `cloud_ms` is the cloud's time for one request (taken as the same for K positions, as on a GPU
    that is not saturated), `device_ms` the device's two passes for one token."""
    per_token = rtt_ms + cloud_ms + device_ms
    speculative = ((K - 1) * device_ms + rtt_ms + cloud_ms + device_ms) / expected_tokens(acceptance, K)
    return per_token / speculative
