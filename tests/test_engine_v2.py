"""Engine v2: the privacy boundary in process, the steering processors, and the review's bugs,
each with a test that failed before its fix. Real bundled model throughout."""
import inspect
import math
import re
import uuid

import pytest
import torch

from costeer import SteeringParams
from costeer.engine.cloud import CloudLM, InProcessCloud, RemoteCloud
from costeer.engine.decoding import CoSteerEngine, Sampling
from costeer.engine.device import DeviceLM
from costeer.engine.prompts import build_prompts
from costeer.engine.rows import LazyRows, ModelRows
from costeer.engine.sampling import Chooser
from costeer.steering.processors import ConfidenceGate, Gate, processor
from costeer.engine.text import TextStream
from costeer.engine.spec import DecodeSpec
from costeer.evaluation.privacy import deny_list
from costeer.steering.defences import Defences

FRIDAY = [{"role": "user", "content": "Suggest a plan for my Friday evening."}]


class RecordingCloud:
    """A real CloudLM: the in-process model, recording every token id it is given."""

    def __init__(self, lm):
        self.inner = InProcessCloud(lm)
        self.name, self.tokenizer, self.where = "recorder", lm.tokenizer, "in this process (recorded)"
        self.eos_ids, self.context_limit = self.inner.eos_ids, self.inner.context_limit
        self.received: list[list[int]] = []  # every prompt, then every step's tokens

    def open(self, prompts):
        self.received.extend(list(p) for p in prompts)
        rows = self.inner.open(prompts)
        outer = self

        class Recorded:
            logprobs = rows.logprobs

            def step(self, tokens):
                outer.received.append(list(tokens))
                self.logprobs = rows.step(tokens)
                return self.logprobs

            def keep(self, idx):
                rows.keep(idx)
                self.logprobs = rows.logprobs

        return Recorded()


def _code_context():
    canary = f"CANARY-{uuid.uuid4().hex[:10]}"  # letters and digits, new every run
    return canary, (f"My code name is {canary}. I am a strict vegetarian living in Osaka, I love jazz and "
                    "quiet places, and my cat is called Mochi.")


def test_the_cloud_receives_the_question_and_chosen_tokens_only(lm):
    """The boundary itself: the cloud's prompts are the conversation without the context, and
    after them it receives, per step, exactly the tokens the streams chose. What a steered
    answer *says* is another matter (the next test): chosen tokens may repeat the context."""
    _, context = _code_context()
    cloud = RecordingCloud(lm)
    engine = CoSteerEngine(cloud, DeviceLM(lm))
    without, _ = build_prompts(lm.tokenizer, FRIDAY, context)
    for mode, streams in (("steered", ["steered"]), ("side_by_side", ["unsteered", "steered"])):
        cloud.received.clear()
        chosen = {s: [] for s in streams}
        for ev in engine.stream(FRIDAY, context, DecodeSpec(mode, sampling=Sampling(max_new_tokens=24))):
            chosen[ev.stream].append(ev.token_id)
        prompts, steps = cloud.received[:len(streams)], cloud.received[len(streams):]
        assert prompts == [without] * len(streams), mode
        sent = {s: [step[i] for step in steps if i < len(step)] for i, s in enumerate(streams)}
        for s in streams:  # the last chosen token is never sent: nothing is asked after it
            assert sent[s] == chosen[s][:len(sent[s])] and len(chosen[s]) - len(sent[s]) <= 1, (mode, s)


def test_a_code_marked_sensitive_never_reaches_the_cloud(lm):
    """Unmarked, the bundled model copies a code name from the context into its steered answer,
    which goes to the cloud token by token (python -m costeer canary measures how often). Marked
    sensitive, its pieces (the digits too) are capped at the cloud's own probability."""
    canary, context = _code_context()
    deny = deny_list([{"text": context, "sensitive": True}], lm.tokenizer)
    cloud = RecordingCloud(lm)
    engine = CoSteerEngine(cloud, DeviceLM(lm))
    answer = "".join(ev.text for ev in engine.stream(
        FRIDAY, context, DecodeSpec("steered", sampling=Sampling(max_new_tokens=24), defences=Defences(deny))))
    sent = lm.tokenizer.decode([t for chunk in cloud.received for t in chunk])
    hex_part = canary.split("-")[1]
    assert answer.strip() and canary not in sent and hex_part[:4] not in sent.lower()


def test_no_cloud_type_can_take_a_context():
    for cls in (CloudLM, InProcessCloud, RemoteCloud):
        for name, fn in inspect.getmembers(cls, inspect.isfunction):
            assert not {"context", "messages"} & set(inspect.signature(fn).parameters), (cls, name)
    assert "context" in inspect.signature(DeviceLM.open).parameters  # the one place it enters


def test_split_and_one_model_give_the_same_answers(lm, engine):
    """The single-process demo is an arrangement, not another algorithm."""
    split = CoSteerEngine(InProcessCloud(lm), DeviceLM(lm))
    context = "I am a strict vegetarian living in Osaka. I love jazz."
    a = [ev.token_id for ev in split.stream(FRIDAY, context, DecodeSpec("side_by_side", sampling=Sampling(max_new_tokens=20)))]
    b = [ev.token_id for ev in engine.stream(FRIDAY, context, DecodeSpec("side_by_side", sampling=Sampling(max_new_tokens=20)))]
    assert engine.same_model and not split.same_model and a == b


def test_reference_processor_equals_closed_form(lm):
    b = torch.log_softmax(torch.randn(lm.vocab_size, generator=torch.Generator().manual_seed(0)), -1)
    d = torch.randn(lm.vocab_size, generator=torch.Generator().manual_seed(1))
    for params in (SteeringParams(), SteeringParams(T=3, lam=1.0), SteeringParams(T=50, eta=0.5, lam=4.0)):
        fast, ref = processor(params), processor(params, reference=True)
        assert torch.allclose(fast(b, d), ref(b, d), atol=1e-4)
        assert torch.equal(fast(b, None), b)  # no delta: the cloud's own distribution


# -- the review's bugs ------------------------------------------------------------------------------
def test_kl_is_finite_with_a_top_k_cloud(lm):
    """A top-k cloud leaves -inf outside its top-k; KL must not be NaN there."""
    engine = CoSteerEngine(InProcessCloud(lm, top_k=20), DeviceLM(lm))
    events = list(engine.stream(FRIDAY, "I live in Osaka and love jazz.", DecodeSpec("steered", sampling=Sampling(max_new_tokens=12))))
    assert events and all(math.isfinite(ev.kl) and ev.kl >= 0 for ev in events)
    assert any(ev.kl > 0 for ev in events)


def test_sampling_generator_lives_on_the_distributions_device():
    chooser = Chooser(Sampling(temperature=0.8, seed=3), seed=3)
    probs = torch.log_softmax(torch.randn(50), -1)
    chooser(probs)
    assert chooser.generator.device == probs.device
    if torch.cuda.is_available():  # not on this machine; on a GPU machine this is the case that failed
        chooser(probs.cuda())
        assert chooser.generator.device.type == "cuda"


def test_a_multi_token_stop_string_never_leaks(lm):
    stop = "</answer>"
    text = "The plan: dinner at eight, then jazz.</answer> and this must never show"
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(lm.tokenizer(stop, add_special_tokens=False)["input_ids"]) > 1
    stream = TextStream(lm.tokenizer, (stop,))
    shown = ""
    for t in ids:
        new, hit = stream.add(t)
        shown += new
        assert "<" not in shown  # no first part of the stop string is ever streamed
        if hit:
            break
    assert hit and shown == "The plan: dinner at eight, then jazz."


def test_incremental_text_is_linear_and_exact(lm):
    text = "Grüße aus 東京 🎷 — naïve café. " * 40
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    widths = []

    class Counting:
        def decode(self, part, skip_special_tokens=True):
            widths.append(len(part))
            return lm.tokenizer.decode(part, skip_special_tokens=skip_special_tokens)

    stream = TextStream(Counting())
    shown = "".join(stream.add(t)[0] for t in ids) + stream.flush()
    assert shown == lm.tokenizer.decode(ids)
    assert len(ids) > 300 and max(widths) <= 8  # a short window each step, not the whole answer


@pytest.mark.slow
def test_lazy_rows_past_a_sliding_window(gemma):
    """Gemma 3's sliding-window layers cannot be cropped once full: the rows start over instead."""
    window = gemma.model.config.sliding_window
    prompt, _ = build_prompts(gemma.tokenizer, FRIDAY, "")
    long = gemma.tokenizer(" jazz and quiet places in Osaka," * 80, add_special_tokens=False)["input_ids"][:window + 40]
    lazy = LazyRows(gemma, [prompt])
    lazy.logprobs_after(long)
    changed = long[:-5] + gemma.tokenizer(" ramen", add_special_tokens=False)["input_ids"]
    got = lazy.logprobs_after(changed)[0]
    want = ModelRows(gemma, [prompt + changed]).logprobs[0]
    assert torch.allclose(got, want, atol=2e-3)


@pytest.fixture(scope="module")
def gemma():
    from costeer.models.load import GEMMA_SPEC, load_model

    return load_model(GEMMA_SPEC)


def test_gate_paper_mode_never_reopens_and_reopen_mode_does(engine):
    context = "I am a strict vegetarian living in Osaka. I love jazz and quiet places."
    sampling = Sampling(max_new_tokens=40)
    paper = [ev.device_skipped for ev in engine.stream(FRIDAY, context, DecodeSpec("steered", sampling=sampling,
                                                                                   gate=ConfidenceGate(0.6, 1,
                                                                                                       "paper")))]
    reopen = [ev.device_skipped for ev in engine.stream(FRIDAY, context, DecodeSpec("steered", sampling=sampling,
                                                                                    gate=ConfidenceGate(0.6, 1,
                                                                                                        "reopen")))]
    first = paper.index(True)
    assert all(paper[first:])  # closed for good
    assert any(a and not b for a, b in zip(reopen, reopen[1:]))  # closes and opens again


def test_gate_reads_the_clouds_own_top_probability():
    """Over HTTP the cloud tells its top-k; renormalizing them would overstate its confidence."""
    b_cloud = torch.full((100,), float("-inf"))
    b_cloud[:2] = torch.log(torch.tensor([0.45, 0.05]))  # top-2 mass 0.5: renormalized, p_max = 0.9
    gate = Gate(processor(SteeringParams()), ConfidenceGate(threshold=0.2, patience=1))
    assert gate.wants_delta(b_cloud)  # 0.45 < 0.8: not confident


def test_bad_gate_settings_name_the_field():
    with pytest.raises(ValueError, match=re.escape("gate mode must be one of paper, reopen")):
        ConfidenceGate(0.1, 3, "sometimes")
    with pytest.raises(ValueError, match=re.escape("gate patience must be an integer in [1, 100]")):
        ConfidenceGate(0.1, 0)


def test_an_answer_cut_by_the_limit_ends_on_its_last_sentence_marked():
    from costeer.engine.text import end_on_sentence

    assert end_on_sentence("Go early. Then walk along the ri", "length", 12) == "Go early. (cut at 12 tokens)"
    assert end_on_sentence("- Vegetable ramen\n- Quiet walk along", "length", 9) == "- Vegetable ramen (cut at 9 tokens)"
    assert end_on_sentence("Three picks:\n1. Kind of", "length", 9) == "Three picks: (cut at 9 tokens)"  # "1." ends nothing
    assert end_on_sentence('He said "go." Then', "length", 9) == 'He said "go." (cut at 9 tokens)'
    assert end_on_sentence("週末はジャズ喫茶へ。それから", "length", 9) == "週末はジャズ喫茶へ。 (cut at 9 tokens)"
    assert end_on_sentence("no boundary at all", "length", 4) == "no boundary at all (cut at 4 tokens)"
    assert end_on_sentence("Done. Half", "eos", 4) == "Done. Half"  # only the token limit cuts
