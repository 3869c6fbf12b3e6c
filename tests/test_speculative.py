"""Speculative CoSteer (issue 15): greedy output token-identical to the per-token loop, in process
and through serve-cloud; the sampling acceptance rule keeps the distribution; rejected drafts are
counted and are exactly the extra tokens the cloud saw."""
import json
import time

import httpx
import pytest
import torch
from scipy.stats import chisquare

from cloudrunner import remote_engine, running_cloud
from costeer.engine.cloud import InProcessCloud
from costeer.engine.decoding import CloudTranscript, CoSteerEngine, Sampling
from costeer.steering.defences import Defences
from costeer.engine.device import DeviceLM
from costeer.models.load import load_model
from costeer.bench.netdelay import DelayProxy
from costeer.evaluation.privacy import cloud_view
from costeer.engine.rows import ModelRows, TrailRow
from costeer.engine.sampling import Chooser, final_probs
from costeer.engine.spec import check_speculate
from costeer.engine.speculative import Speculation, expected_speedup, expected_tokens
from costeer.engine.spec import DecodeSpec

PERSONAS = [
    ("Suggest a plan for my Friday evening.",
     "I am a strict vegetarian living in Osaka. I love jazz and quiet places. I answer in short bullet points."),
    ("Write a short note to my family about my week.",
     "I am a retired sailor from Lisbon. I love the sea, old maps and fado music. My granddaughter is Inês."),
    ("What should I cook tonight?",
     "I am a teenage gamer. I play Minecraft and Rocket League and I write casually, with slang."),
]


def run(engine, prompt, context, mode="steered", tokens=40, **kw):
    ids, spec, transcript = {}, {}, CloudTranscript()
    spec_ = DecodeSpec(mode, sampling=kw.pop("sampling", Sampling(max_new_tokens=tokens)), **kw)
    for ev in engine.stream([{"role": "user", "content": prompt}], context, spec_, transcript):
        ids.setdefault(ev.stream, []).append(ev.token_id)
        spec.setdefault(ev.stream, Speculation()).add(ev)
    return ids, spec, transcript


@pytest.fixture(scope="module")
def split(lm):
    """The bundled model in both roles, split as in deployment, the cloud telling its top-20."""
    return CoSteerEngine(InProcessCloud(lm, top_k=20), DeviceLM(lm))


def test_trail_row_scores_every_prefix_like_fresh_rows(lm):
    prompt = lm.tokenizer("The lighthouse keeper opened the bottle and", add_special_tokens=False)["input_ids"]
    ids = lm.tokenizer(" found a letter from his sister in Lisbon", add_special_tokens=False)["input_ids"]
    trail = TrailRow(lm, prompt)
    for target, n in [(ids[:3], 4), (ids[:6], 3), (ids[:4] + [11], 2), (ids, 5), ([], 1)]:
        got = trail.along(target, n)
        want = torch.stack([ModelRows(lm, [prompt + target[:j]]).logprobs[0] for j in range(len(target) - n + 1,
                                                                                          len(target) + 1)])
        assert got.shape == want.shape
        assert torch.allclose(got, want, atol=2e-4), (target, n)
    with pytest.raises(ValueError, match="n must be in"):
        trail.along(ids[:2], 4)


@pytest.mark.parametrize("mode", ["steered", "side_by_side"])
@pytest.mark.slow
def test_greedy_speculation_is_token_identical_in_process(split, mode):
    """Each persona with another K (2, 4, 8), and the overlapped K = 1 once."""
    for (prompt, persona), k in zip(PERSONAS, (2, 4, 8)):
        want, _, _ = run(split, prompt, persona, mode, tokens=32)
        got, spec, transcript = run(split, prompt, persona, mode, tokens=32, speculate=k)
        assert got == want, (prompt, mode, k)
        steered = spec["steered"]
        assert steered.rounds < steered.tokens  # it did speculate: fewer round trips than tokens
        assert steered.drafted > 0 and steered.accepted + steered.rejected <= steered.drafted
    got, spec, _ = run(split, prompt, persona, mode, tokens=32, overlap=True)
    assert got == want and spec["steered"].rounds == spec["steered"].tokens


@pytest.mark.slow
def test_rejected_drafts_are_counted_and_recorded(lm, split):
    """Noise on d makes the true steered choice differ from the device's draft (the draft draws noise
    of its own): rejections happen, the output stays identical, and every rejected token is in the
    transcript."""
    prompt, persona = PERSONAS[0]
    noise = Defences(sigma=2.0, seed=3)
    want, _, _ = run(split, prompt, persona, tokens=24, defences=noise)
    got, spec, transcript = run(split, prompt, persona, tokens=24, defences=noise, speculate=4)
    assert got == want
    s = spec["steered"]
    assert s.rejected > 0 and s.accepted < s.drafted
    assert sum(map(len, transcript.drafts["steered"])) == s.rejected
    prompt_text, reply, drafts = cloud_view(transcript, "steered", lm.tokenizer)
    assert drafts.strip() and reply == lm.tokenizer.decode(got["steered"], skip_special_tokens=True)
    # a device with other numerics (bf16 weights): a real, if close, pair
    bf16 = CoSteerEngine(InProcessCloud(lm, top_k=20), DeviceLM(load_model(dtype="bfloat16")))
    want, _, _ = run(bf16, prompt, persona, tokens=32)
    got, spec, _ = run(bf16, prompt, persona, tokens=32, speculate=4)
    assert got == want
    assert spec["steered"].acceptance is not None and 0.5 < spec["steered"].acceptance <= 1


def test_speculation_stops_at_eos_and_the_length_limit(split):
    ids, spec, _ = run(split, "Say OK.", "", "side_by_side", tokens=7, speculate=8)
    want, _, _ = run(split, "Say OK.", "", "side_by_side", tokens=7)
    assert ids == want and all(len(v) <= 7 for v in ids.values())


def test_speculative_acceptance_rule_keeps_the_distribution():
    """Chooser.verify on a 6-token vocabulary: draws x ~ q, verifies against p, 20,000 seeded runs;
    the kept-or-replaced tokens follow p (chi-square), not q, also under temperature and top-p."""
    p_logits = torch.log(torch.tensor([0.40, 0.25, 0.15, 0.10, 0.07, 0.03]))
    q_logits = torch.log(torch.tensor([0.05, 0.10, 0.15, 0.20, 0.20, 0.30]))
    for sampling in (Sampling(temperature=1.0), Sampling(temperature=0.7, top_p=0.9)):
        target = final_probs(p_logits, sampling)
        q = final_probs(q_logits, sampling)
        draws = torch.Generator().manual_seed(1)
        counts, kept = torch.zeros(6), 0
        n = 20000
        for seed in range(n):
            chooser = Chooser(sampling, seed)
            x = int(torch.multinomial(q, 1, generator=draws))
            token, ok = chooser.verify(p_logits, x, q)
            counts[token] += 1
            kept += ok
        live = target > 0
        expected = target[live] * n
        stat, pvalue = chisquare(counts[live].numpy(), expected.numpy())
        assert pvalue > 1e-3, (sampling, counts, expected)
        assert counts[~live].sum() == 0  # top-p's cut tokens never appear
        accept = float(torch.minimum(target, q).sum())  # the rule's acceptance rate: sum min(p, q)
        assert abs(kept / n - accept) < 0.02
        # and the greedy rule keeps a draft iff it is the argmax
        greedy = Chooser(Sampling(), 0)
        assert greedy.verify(p_logits, 0, None) == (0, True)
        assert greedy.verify(p_logits, 3, None) == (0, False)


def test_speculative_sampling_is_seeded_and_runs_end_to_end(split):
    prompt, persona = PERSONAS[1]
    sampling = Sampling(max_new_tokens=32, temperature=0.8, top_p=0.95, seed=11)
    a, spec, _ = run(split, prompt, persona, sampling=sampling, speculate=4)
    b, _, _ = run(split, prompt, persona, sampling=sampling, speculate=4)
    assert a == b and len(a["steered"]) == 32
    assert spec["steered"].rounds < 32


def test_speculate_is_checked_by_name(split):
    for bad in (0, 9, 2.5, True, "4"):
        with pytest.raises(ValueError, match=r"speculate must be an integer in \[1, 8\]"):
            check_speculate(bad)
        with pytest.raises(ValueError, match="speculate must be"):
            run(split, "Hi", "", speculate=bad)


def test_expected_speedup_formula():
    assert expected_tokens(1.0, 4) == 4 and abs(expected_tokens(0.5, 4) - 1.875) < 1e-9  # (1 - 0.5^4) / (1 - 0.5)
    assert expected_speedup(0.7, 1, 50, 20, 10) == 1.0  # K = 1: one token per round trip, nothing drafted
    assert abs(expected_speedup(1.0, 4, 50, 20, 0) - 4.0) < 1e-9  # free drafts, all kept: K tokens per round trip
    assert expected_speedup(0.7, 4, 50, 20, 10) > expected_speedup(0.7, 4, 0, 20, 10)  # the further, the more it pays
    assert expected_speedup(0.0, 4, 50, 20, 10) < 1  # drafts that are never kept only cost


@pytest.mark.slow
def test_through_serve_cloud_greedy_is_identical_and_drafts_are_what_it_saw(lm, tmp_path):
    """Over HTTP: one request per round with nested rows, scored by serve-cloud in one forward;
    output identical to the per-token loop for steered and side by side; every rejected draft
    token the transcript lists is in a row the server received; the delay proxy adds its RTT."""
    log = tmp_path / "audit.jsonl"
    with running_cloud(log) as url:
        engine = remote_engine(url, lm)
        for (prompt, persona), mode in zip(PERSONAS, ("steered", "side_by_side")):
            for k in (4, 8):
                want, _, _ = run(engine, prompt, persona, mode, tokens=24)
                got, spec, _ = run(engine, prompt, persona, mode, tokens=24, speculate=k)
                assert got == want, (prompt, mode, k)
                assert spec["steered"].rounds <= 24 // 2
        noise = Defences(sigma=0.5, seed=3)
        before = len(log.read_text().splitlines())
        want, _, _ = run(engine, *PERSONAS[0], tokens=24, defences=noise)
        got, spec, transcript = run(engine, *PERSONAS[0], tokens=24, defences=noise, speculate=4)
        assert got == want and spec["steered"].rejected > 0
        rows = [row for line in log.read_text().splitlines()[before:]
                for body in [json.loads(line)["body"]] if "prompt" in body and isinstance(body["prompt"], list)
                for row in body["prompt"]]
        prompt_ids = transcript.prompt_ids["steered"]
        answer = got["steered"]
        for rejected in transcript.drafts["steered"]:
            seen = [r for r in rows if r[-len(rejected):] == rejected and r[:len(prompt_ids)] == prompt_ids]
            assert seen, rejected
        # nested rows are scored as separate requests would be
        ctx = prompt_ids + answer[:10]
        nested = httpx.post(url + "/v1/completions", json={"prompt": [ctx[:-2], ctx[:-1], ctx], "max_tokens": 1,
                                                          "logprobs": 5}, timeout=60).json()
        for i, row in enumerate([ctx[:-2], ctx[:-1], ctx]):
            alone = httpx.post(url + "/v1/completions", json={"prompt": row, "max_tokens": 1, "logprobs": 5},
                               timeout=60).json()
            a, b = nested["choices"][i]["logprobs"]["top_logprobs"][0], alone["choices"][0]["logprobs"]["top_logprobs"][0]
            assert a.keys() == b.keys() and all(abs(a[t] - b[t]) < 1e-3 for t in a)
        with DelayProxy(url, rtt_ms=150) as proxy:
            start = time.perf_counter()
            assert httpx.get(proxy.url + "/health", timeout=10).json() == {"status": "ok"}
            assert time.perf_counter() - start >= 0.15


HEALTH = {"title": "Health", "text": "My HIV diagnosis came in 2021. I take Biktarvy every morning.", "sensitive": 1}


@pytest.mark.slow
def test_drafts_and_chosen_tokens_respect_the_deny_list(lm, split):
    """Issue 23: with speculate 4 the drafts were steered with the raw delta, and the cloud saw
    `Bikt` and ` HIV Bik` while the margin said "held". Drafts now go through the same defences and
    never propose a deny-listed id; the chosen tokens keep p <= b; the output is unchanged."""
    from costeer.steering.defences import sent_deny_ids
    from costeer.evaluation.privacy import deny_list

    deny = deny_list([HEALTH], lm.tokenizer)
    context = f"Health: {HEALTH['text']}\nI live in Lisbon and love fado."
    prompts = ("Remind me what I take every morning.", "Write a note to my doctor about my week.",
               "What should I mention at my next check-up?")
    unprotected = 0
    for prompt in prompts:
        _, _, plain = run(split, prompt, context, tokens=32, speculate=4, defences=Defences(sigma=0.3, seed=1))
        unprotected += sum(sent_deny_ids(plain, "steered", deny)[k] for k in ("chosen", "drafts"))
        want, _, _ = run(split, prompt, context, tokens=32, defences=Defences(deny_ids=deny, sigma=0.3, seed=1))
        margins = []
        ids, spec, transcript = [], Speculation(), CloudTranscript()
        decode = DecodeSpec("steered", sampling=Sampling(max_new_tokens=32),
                            defences=Defences(deny_ids=deny, sigma=0.3, seed=1), speculate=4)
        for ev in split.stream([{"role": "user", "content": prompt}], context, decode, transcript):
            ids.append(ev.token_id)
            spec.add(ev)
            margins.append(ev.deny_margin)
        assert ids == want["steered"], prompt  # the ban on drafts changes which drafts, not the answer
        sent = sent_deny_ids(transcript, "steered", deny)
        assert spec.drafted > 0 and sent["drafts"] == 0, (prompt, sent)
        assert max(margins) <= 1e-6
    assert unprotected > 0  # not vacuous: without the deny-list the cloud receives these ids
