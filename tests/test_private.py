"""Private mode, a split transcript (costeer/steering/private.py): the user reads the steered
answer, the cloud receives its own choice wherever the answer's token is kept back. Real bundled
model; the cloud in the split tests is the in-process model recording every id it is given."""
import math

import pytest

from costeer.engine.decoding import CloudTranscript, CoSteerEngine, Sampling
from costeer.engine.device import DeviceLM
from costeer.engine.spec import DecodeSpec
from costeer.engine.summary import ReplySummary
from costeer.evaluation.eval import method_defences
from costeer.evaluation.privacy import deny_list
from costeer.steering.defences import Defences
from costeer.steering.private import PRIVATE_MARGIN
from test_engine_v2 import RecordingCloud, _code_context

COOK = [{"role": "user", "content": "What should I cook tonight?"}]
KENJI = ("Strict vegetarian since 2015; I cook Japanese home food, mostly tofu and miso. I live in Osaka "
         "and play jazz piano on Fridays at a small bar in Namba.")
PLAIN = Sampling(max_new_tokens=48)  # plain greedy: the cloud's own answer is its argmax at every step


def _run(engine, spec, messages=COOK, context=KENJI):
    transcript = CloudTranscript()
    events = list(engine.stream(messages, context, spec, transcript))
    return events, transcript


def test_at_margin_zero_the_cloud_receives_its_own_answer_and_the_user_reads_another(engine):
    events, transcript = _run(engine, DecodeSpec("side_by_side", sampling=PLAIN, defences=Defences(private=0)))
    steered = [ev for ev in events if ev.stream == "steered"]
    sent, own = transcript.token_ids["steered"], transcript.token_ids["unsteered"]
    n = min(len(sent), len(own)) - 1  # a stand-in is never an end of text, so compare before the last
    assert n > 20 and sent[:n] == own[:n]  # nothing from the history in what the cloud read
    assert sent == [ev.sent for ev in steered]
    read = [ev.token_id for ev in steered]
    assert read != sent and sum(ev.sent_id is not None for ev in steered) > 0  # the user's answer is steered


def test_kept_back_tokens_and_sensitive_words_never_reach_the_cloud(lm):
    """A split cloud and device, as deployed: the recording cloud got the stand-ins, never the
    kept-back ids, and no word of an entry marked sensitive, at the app's margin."""
    cloud = RecordingCloud(lm)
    engine = CoSteerEngine(cloud, DeviceLM(lm))
    canary, context = _code_context()
    deny = deny_list([{"text": context, "sensitive": True}], lm.tokenizer)
    spec = DecodeSpec("steered", sampling=Sampling(max_new_tokens=48), defences=Defences(deny, private=PRIVATE_MARGIN))
    events, transcript = _run(engine, spec, [{"role": "user", "content": "Who am I, and what is my code name?"}],
                              context)
    steps = cloud.received[1:]  # the prompt, then one token per step
    assert [s[0] for s in steps] == [ev.sent for ev in events][:len(steps)]
    assert transcript.token_ids["steered"] == [ev.sent for ev in events]
    kept = [ev for ev in events if ev.sent_id is not None]
    for ev in kept:
        assert ev.sent_id != ev.token_id and ev.sent_id not in deny
    for ev in events:
        assert ev.sent not in set(deny)
        top = lm.tokenizer(ev.top_base[0][0], add_special_tokens=False)["input_ids"]
        if ev.sent_id is None and top[0] not in deny:  # sent as it is: within the margin of the cloud's top choice
            assert math.exp(ev.base_logprob) >= ev.top_base[0][1] * math.exp(-PRIVATE_MARGIN) - 1e-4, ev  # (rounded)
    assert canary not in lm.tokenizer.decode(transcript.token_ids["steered"])


@pytest.mark.slow
def test_at_the_widest_margin_private_mode_is_plain_costeer(engine):
    """Nothing is kept back at 30 nats, so the split rows (the cloud and the device apart) give
    the one-model batch's answer token for token: the plumbing changes nothing else."""
    plain, _ = _run(engine, DecodeSpec("steered", sampling=PLAIN))
    split, transcript = _run(engine, DecodeSpec("steered", sampling=PLAIN, defences=Defences(private=30)))
    assert [ev.token_id for ev in split] == [ev.token_id for ev in plain] == transcript.token_ids["steered"]


def test_private_mode_refusals_name_the_setting(engine):
    for bad in (-1, 31, float("nan"), "2", True):
        with pytest.raises(ValueError, match=r"private margin must be a number of nats in \[0, 30\]"):
            Defences(private=bad)
    with pytest.raises(ValueError, match="Private mode decodes one token per cloud round trip"):
        DecodeSpec("steered", defences=Defences(private=2), speculate=4)
    with pytest.raises(ValueError, match="cloud_messages is for Private mode"):
        list(engine.stream(COOK, KENJI, DecodeSpec("steered", sampling=PLAIN), cloud_messages=COOK))
    assert DecodeSpec.from_dict(DecodeSpec("steered", defences=Defences(private=1.5)).as_dict()).defences.private == 1.5


def test_eval_reaches_private_mode_by_name():
    assert method_defences("private")["private"] == PRIVATE_MARGIN
    assert method_defences("costeer:private=0.5")["private"] == 0.5
    with pytest.raises(ValueError, match="private must be a number"):
        method_defences("costeer:private=wide")
    with pytest.raises(ValueError, match="private margin"):
        method_defences("costeer:private=99")


@pytest.mark.slow
def test_later_turns_send_the_public_text(engine):
    """The cloud's prompt for a second turn holds the public text of the first reply, the device's
    the private one."""
    spec = DecodeSpec("steered", sampling=PLAIN, defences=Defences(private=0))
    first, transcript = _run(engine, spec)
    tok = engine.cloud.tokenizer
    read, sent = (tok.decode([getattr(ev, k) for ev in first], skip_special_tokens=True) for k in ("token_id", "sent"))
    assert read != sent
    turn = {"role": "user", "content": "And for dessert?"}
    second = CloudTranscript()
    summary = ReplySummary.of(engine.stream(COOK + [{"role": "assistant", "content": read}, turn], KENJI, spec, second,
                                            cloud_messages=COOK + [{"role": "assistant", "content": sent}, turn]))
    assert summary["steered"].tokens > 0
    assert sent.strip()[:40] in second.prompt_text["steered"] and read.strip()[:40] not in second.prompt_text["steered"]
