"""Repetition control is transformers' own definition, applied to both streams alike."""
import pytest
import torch
from transformers.generation.logits_process import NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor

from costeer.engine.decoding import Sampling
from costeer.engine.latency import Latency
from costeer.steering.policy import SteeringParams
from costeer.engine.sampling import Chooser
from costeer.evaluation.stats import repeated_ngram_share
from costeer.engine.spec import DecodeSpec


@pytest.mark.parametrize("penalty, n", [(1.3, 0), (1.0, 3), (1.2, 2), (1.0, 1)])
def test_repetition_control_matches_transformers_processors(penalty, n):
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 40, (30,), generator=g).tolist()
    chooser = Chooser(Sampling(repetition_penalty=penalty, no_repeat_ngram_size=n), seed=0, prompt_ids=prompt)
    for _ in range(25):
        scores = torch.log_softmax(torch.randn(50, generator=g), -1)
        ids = torch.tensor([chooser.ids])
        expected = scores[None].clone()
        if penalty != 1:
            expected = RepetitionPenaltyLogitsProcessor(penalty)(ids, expected)
        if n:
            expected = NoRepeatNGramLogitsProcessor(n)(ids, expected)
        if torch.isinf(expected).all():  # transformers would ban every token; we keep the scores then
            expected = scores[None]
        assert torch.equal(chooser.controlled(scores), expected[0])
        chooser(scores)


def test_no_repeat_ngrams_holds_in_a_real_answer(engine):
    out = engine.generate([{"role": "user", "content": "Repeat the word 'jazz' again and again."}], "",
                          DecodeSpec("unsteered", sampling=Sampling(max_new_tokens=48, no_repeat_ngram_size=3)))
    ids = engine.cloud.tokenizer(out["texts"]["unsteered"], add_special_tokens=False)["input_ids"]
    assert repeated_ngram_share(ids, 3) == 0.0 or len(ids) < 3


def test_both_streams_get_the_same_rules(engine):
    """With beta = 0 steering is off (C = 0): the two streams must then be the same text."""
    params = SteeringParams(beta=0.0)
    for rp, n in ((1.3, 0), (1.0, 3)):
        out = engine.generate([{"role": "user", "content": "Suggest a plan for my Friday evening."}],
                              "Strict vegetarian in Osaka.", DecodeSpec("side_by_side", params, Sampling(
                                  max_new_tokens=24, repetition_penalty=rp, no_repeat_ngram_size=n)))
        assert out["texts"]["steered"] == out["texts"]["unsteered"]


def test_repeated_ngram_share():
    assert repeated_ngram_share("a b c d a b c d") == pytest.approx(1 / 5)
    assert repeated_ngram_share("one two three") == 0.0
    assert repeated_ngram_share([1, 2, 1, 2, 1, 2], 2) == pytest.approx(3 / 5)


def test_latency_summary_counts_each_step_once(engine):
    latency = Latency()
    for ev in engine.stream([{"role": "user", "content": "Hi"}], "ctx",
                            DecodeSpec("side_by_side", sampling=Sampling(max_new_tokens=6))):
        latency.add(ev)
    latency.done()
    s = latency.summary()
    assert s["steps"] == 6 and s["tokens"] == {"unsteered": 6, "steered": 6} or s["steps"] < 6
    assert s["per_step_ms"]["cloud"] > 0 and s["time_to_first_token_ms"] <= s["total_ms"]
