"""The token loop on the real bundled model: batching, work sharing, events, sampling, stops."""
import pytest
import torch

from costeer import SteeringParams
from costeer.bench.speed import naive_steered_events
from costeer.engine.decoding import CloudTranscript, Sampling, build_prompts
from costeer.engine.rows import LazyRows, ModelRows
from costeer.engine.spec import DecodeSpec

FRIDAY = [{"role": "user", "content": "Suggest a plan for my Friday evening."}]
OSAKA = ("I am a strict vegetarian living in Osaka. I love jazz and quiet places. "
         "I always answer in short bullet points.")
GREEDY = Sampling(max_new_tokens=24)


def _texts(engine, mode, context=OSAKA, messages=FRIDAY, params=SteeringParams(), sampling=GREEDY):
    out, ids = {}, {}
    for ev in engine.stream(messages, context, DecodeSpec(mode, params, sampling)):
        out[ev.stream] = out.get(ev.stream, "") + ev.text
        ids.setdefault(ev.stream, []).append(ev.token_id)
    return out, ids


@pytest.mark.slow
def test_batched_rows_match_unbatched_rows(lm):
    """Left padding, masks and positions: a row in a padded batch decodes as it does alone."""
    short, long = build_prompts(lm.tokenizer, FRIDAY, OSAKA)
    assert len(long) > len(short) + 10  # real padding in the batch
    batch = ModelRows(lm, [short, long])
    alone = [ModelRows(lm, [short]), ModelRows(lm, [long])]
    for _ in range(12):
        for i in range(2):
            assert torch.allclose(batch.logprobs[i], alone[i].logprobs[0], atol=2e-3), f"row {i} diverged"
        tokens = [int(batch.logprobs[i].argmax()) for i in range(2)]
        assert tokens == [int(a.logprobs[0].argmax()) for a in alone]
        batch.step(tokens)
        for i in range(2):
            alone[i].step([tokens[i]])


@pytest.mark.slow
def test_side_by_side_equals_each_mode_alone(engine):
    both, _ = _texts(engine, "side_by_side")
    steered, _ = _texts(engine, "steered")
    unsteered, _ = _texts(engine, "unsteered")
    assert both["steered"] == steered["steered"]
    assert both["unsteered"] == unsteered["unsteered"]


@pytest.mark.slow
def test_steering_changes_the_answer(engine):
    both, _ = _texts(engine, "side_by_side")
    assert both["steered"].strip() and both["unsteered"].strip()
    assert both["steered"] != both["unsteered"]


@pytest.mark.slow
def test_engine_matches_the_papers_naive_loop(engine):
    """The fast path (closed form, shared batched rows) picks the tokens the published loop picks."""
    _, ids = _texts(engine, "steered")
    naive = [ev.token_id for ev in naive_steered_events(engine, FRIDAY, OSAKA, SteeringParams(), GREEDY)]
    assert ids["steered"] == naive


@pytest.mark.slow
def test_empty_context_means_no_steering(engine):
    both, ids = _texts(engine, "side_by_side", context="")
    assert ids["steered"] == ids["unsteered"]


@pytest.mark.slow
def test_events_carry_what_the_ui_needs(engine):
    events = list(engine.stream(FRIDAY, OSAKA, DecodeSpec("side_by_side", SteeringParams(), GREEDY)))
    steered = [e for e in events if e.stream == "steered"]
    assert {e.stream for e in events} == {"steered", "unsteered"}
    assert any(e.changed for e in steered)
    for e in events:
        assert len(e.top_base) == len(e.top_steered) == 5
        probs = [p for _, p in e.top_steered]
        assert probs == sorted(probs, reverse=True) and 0 < probs[0] <= 1
        assert e.kl >= 0
    for e in steered:
        if e.changed:
            assert e.top_steered[0][0] != e.top_base[0][0] and e.kl > 0
    unsteered = [e for e in events if e.stream == "unsteered"]
    assert all(e.kl == 0 and not e.changed for e in unsteered)
    assert events[-1].finish in ("eos", "length", "stop")


def test_max_new_tokens_and_finish_reason(engine):
    events = list(engine.stream(FRIDAY, OSAKA, DecodeSpec("steered", SteeringParams(), Sampling(max_new_tokens=5))))
    assert len(events) == 5 and events[-1].finish == "length"


@pytest.mark.slow
def test_stop_string_cuts_the_text(engine):
    full, _ = _texts(engine, "unsteered", sampling=Sampling(max_new_tokens=40))
    text = full["unsteered"]
    stop = text.split()[3]  # a word in the middle of the answer
    cut, _ = _texts(engine, "unsteered", sampling=Sampling(max_new_tokens=40, stop=(stop,)))
    assert cut["unsteered"] == text[: text.index(stop)]


@pytest.mark.slow
def test_seeded_sampling_is_reproducible(engine):
    s = Sampling(max_new_tokens=16, temperature=0.9, top_p=0.9, seed=1234)
    a, _ = _texts(engine, "side_by_side", sampling=s)
    b, _ = _texts(engine, "side_by_side", sampling=s)
    c, _ = _texts(engine, "side_by_side", sampling=Sampling(max_new_tokens=16, temperature=0.9, top_p=0.9, seed=99))
    assert a == b
    assert a != c


def test_cloud_transcript_holds_no_personal_context(engine):
    t = CloudTranscript()
    events = list(engine.stream(FRIDAY, OSAKA, DecodeSpec("side_by_side", SteeringParams(), GREEDY), t))
    for stream in ("steered", "unsteered"):
        assert "Osaka" not in t.prompt_text[stream] and "vegetarian" not in t.prompt_text[stream]
        assert "Friday" in t.prompt_text[stream]
    plain, _ = build_prompts(engine.cloud.tokenizer, FRIDAY, OSAKA)
    assert t.prompt_ids["steered"] == t.prompt_ids["unsteered"] == plain
    assert t.token_ids["steered"] == [e.token_id for e in events if e.stream == "steered"]


@pytest.mark.parametrize("kwargs, field", [
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"temperature": -1}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"seed": -3}, "seed"),
])
def test_bad_sampling_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        Sampling(**kwargs)


def test_bad_mode_and_messages(engine):
    with pytest.raises(ValueError, match="mode"):
        list(engine.stream(FRIDAY, "", DecodeSpec("both")))
    with pytest.raises(ValueError, match="user message"):
        list(engine.stream([{"role": "assistant", "content": "hi"}], ""))


def test_multi_turn_each_stream_keeps_its_conversation(engine):
    follow = {"role": "user", "content": "Something quieter, please."}
    steered_conv = FRIDAY + [{"role": "assistant", "content": "- Jazz kissa\n- Tofu dinner"}, follow]
    unsteered_conv = FRIDAY + [{"role": "assistant", "content": "Dinner and a movie."}, follow]
    both = {}
    for ev in engine.stream(steered_conv, OSAKA, DecodeSpec("side_by_side", SteeringParams(), GREEDY),
                            unsteered_messages=unsteered_conv):
        both[ev.stream] = both.get(ev.stream, "") + ev.text
    alone_u, _ = _texts(engine, "unsteered", messages=unsteered_conv)
    alone_s, _ = _texts(engine, "steered", messages=steered_conv)
    assert both["unsteered"] == alone_u["unsteered"] and both["steered"] == alone_s["steered"]


def test_gate_skips_device_passes_and_caches_stay_consistent(engine):
    """With a gate that skips often, every step where the device does run must give exactly the delta
    a fresh device pass over the same prefix gives (the lazy caches caught up correctly)."""
    from costeer.engine.decoding import ConfidenceGate

    gate = ConfidenceGate(threshold=0.6, patience=1, mode="reopen")  # skip whenever the cloud's top p >= 0.4
    events = list(engine.stream(FRIDAY, OSAKA, DecodeSpec("steered", SteeringParams(), Sampling(max_new_tokens=40), gate=gate)))
    flags = [e.device_skipped for e in events]
    assert any(flags) and not all(flags)
    resumed = [i for i in range(1, len(flags)) if flags[i - 1] and not flags[i]]
    assert resumed, "a gated stretch ended and steering resumed"
    plain, with_ctx = build_prompts(engine.cloud.tokenizer, FRIDAY, OSAKA)
    ids = [e.token_id for e in events]
    from costeer.steering.policy import effective_strength, steer_from_logprobs

    C = effective_strength(SteeringParams())
    for i in resumed[:3]:
        fresh = ModelRows(engine.cloud.lm, [plain + ids[:i], with_ctx + ids[:i]]).logprobs
        b = torch.log_softmax(fresh[0], -1)
        p = steer_from_logprobs(b, torch.log_softmax(fresh[1], -1) - b, C)
        assert int(torch.argmax(p)) == ids[i]
        top = [(engine.piece(int(t)), round(float(v), 4)) for v, t in zip(*torch.topk(p.exp(), 5))]
        assert [t for t, _ in top] == [t for t, _ in events[i].top_steered]
    for e in events:
        if e.device_skipped:
            assert not e.changed and e.kl == 0.0  # d = 0: the cloud's own distribution


def test_lazy_rows_crop_and_refeed(lm):
    """The device side of cross-tokenizer steering: when the target ids change an earlier token,
    the cache is cropped back and re-fed; logits match a fresh pass over the new ids."""

    prompt, _ = build_prompts(lm.tokenizer, FRIDAY, "")
    lazy = LazyRows(lm, [prompt])
    a = lm.tokenizer(" Take a walk in Osaka", add_special_tokens=False)["input_ids"]
    b = a[:2] + lm.tokenizer(" quiet jazz bar", add_special_tokens=False)["input_ids"]
    for target in (a, b, b[:3], b[:1], []):
        got = lazy.logprobs_after(target)[0]
        want = ModelRows(lm, [prompt + target]).logprobs[0]
        assert torch.allclose(got, want, atol=2e-3), target
