"""The token loop on the real bundled model: batching, work sharing, events, sampling, stops."""
import pytest
import torch

from costeer import SteeringParams
from costeer.bench import naive_steered_events
from costeer.decoding import CloudTranscript, Sampling, _Rows, build_prompts

FRIDAY = [{"role": "user", "content": "Suggest a plan for my Friday evening."}]
OSAKA = ("I am a strict vegetarian living in Osaka. I love jazz and quiet places. "
         "I always answer in short bullet points.")
GREEDY = Sampling(max_new_tokens=24)


def _texts(engine, mode, context=OSAKA, messages=FRIDAY, params=SteeringParams(), sampling=GREEDY):
    out, ids = {}, {}
    for ev in engine.stream(messages, context, mode, params, sampling):
        out[ev.stream] = out.get(ev.stream, "") + ev.text
        ids.setdefault(ev.stream, []).append(ev.token_id)
    return out, ids


def test_batched_rows_match_unbatched_rows(lm):
    """Left padding, masks and positions: a row in a padded batch decodes as it does alone."""
    short, long = build_prompts(lm.tokenizer, FRIDAY, OSAKA)
    assert len(long) > len(short) + 10  # real padding in the batch
    batch = _Rows(lm, [short, long])
    alone = [_Rows(lm, [short]), _Rows(lm, [long])]
    for _ in range(12):
        for i in range(2):
            assert torch.allclose(batch.logits[i], alone[i].logits[0], atol=2e-3), f"row {i} diverged"
        tokens = [int(batch.logits[i].argmax()) for i in range(2)]
        assert tokens == [int(a.logits[0].argmax()) for a in alone]
        batch.step(tokens)
        for i in range(2):
            alone[i].step([tokens[i]])


def test_side_by_side_equals_each_mode_alone(engine):
    both, _ = _texts(engine, "side_by_side")
    steered, _ = _texts(engine, "steered")
    unsteered, _ = _texts(engine, "unsteered")
    assert both["steered"] == steered["steered"]
    assert both["unsteered"] == unsteered["unsteered"]


def test_steering_changes_the_answer(engine):
    both, _ = _texts(engine, "side_by_side")
    assert both["steered"].strip() and both["unsteered"].strip()
    assert both["steered"] != both["unsteered"]


def test_engine_matches_the_papers_naive_loop(engine):
    """The fast path (closed form, shared batched rows) picks the tokens the published loop picks."""
    _, ids = _texts(engine, "steered")
    naive = [ev.token_id for ev in naive_steered_events(engine, FRIDAY, OSAKA, SteeringParams(), GREEDY)]
    assert ids["steered"] == naive


def test_empty_context_means_no_steering(engine):
    both, ids = _texts(engine, "side_by_side", context="")
    assert ids["steered"] == ids["unsteered"]


def test_events_carry_what_the_ui_needs(engine):
    events = list(engine.stream(FRIDAY, OSAKA, "side_by_side", SteeringParams(), GREEDY))
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
    events = list(engine.stream(FRIDAY, OSAKA, "steered", SteeringParams(), Sampling(max_new_tokens=5)))
    assert len(events) == 5 and events[-1].finish == "length"


def test_stop_string_cuts_the_text(engine):
    full, _ = _texts(engine, "unsteered", sampling=Sampling(max_new_tokens=40))
    text = full["unsteered"]
    stop = text.split()[3]  # a word in the middle of the answer
    cut, _ = _texts(engine, "unsteered", sampling=Sampling(max_new_tokens=40, stop=(stop,)))
    assert cut["unsteered"] == text[: text.index(stop)]


def test_seeded_sampling_is_reproducible(engine):
    s = Sampling(max_new_tokens=16, temperature=0.9, top_p=0.9, seed=1234)
    a, _ = _texts(engine, "side_by_side", sampling=s)
    b, _ = _texts(engine, "side_by_side", sampling=s)
    c, _ = _texts(engine, "side_by_side", sampling=Sampling(max_new_tokens=16, temperature=0.9, top_p=0.9, seed=99))
    assert a == b
    assert a != c


def test_cloud_transcript_holds_no_personal_context(engine):
    t = CloudTranscript()
    events = list(engine.stream(FRIDAY, OSAKA, "side_by_side", SteeringParams(), GREEDY, transcript=t))
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
        list(engine.stream(FRIDAY, "", "both"))
    with pytest.raises(ValueError, match="user message"):
        list(engine.stream([{"role": "assistant", "content": "hi"}], ""))


def test_multi_turn_each_stream_keeps_its_conversation(engine):
    follow = {"role": "user", "content": "Something quieter, please."}
    steered_conv = FRIDAY + [{"role": "assistant", "content": "- Jazz kissa\n- Tofu dinner"}, follow]
    unsteered_conv = FRIDAY + [{"role": "assistant", "content": "Dinner and a movie."}, follow]
    both = {}
    for ev in engine.stream(steered_conv, OSAKA, "side_by_side", SteeringParams(), GREEDY, unsteered_messages=unsteered_conv):
        both[ev.stream] = both.get(ev.stream, "") + ev.text
    alone_u, _ = _texts(engine, "unsteered", messages=unsteered_conv)
    alone_s, _ = _texts(engine, "steered", messages=steered_conv)
    assert both["unsteered"] == alone_u["unsteered"] and both["steered"] == alone_s["steered"]
