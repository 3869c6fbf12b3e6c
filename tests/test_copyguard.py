"""The copy guard over real generations: no run of n context tokens in any chosen (or drafted)
sequence, on the prompts that made the bundled model dump its context."""
import pytest

from conftest import ROOT
from costeer.engine.decoding import CloudTranscript, Sampling
from costeer.engine.spec import DecodeSpec
from costeer.evaluation.content import longest_copied_run
from costeer.steering.copyguard import CopyGuard
from costeer.steering.defences import Defences
from user_store import UserStore

PROMPTS = ["Remind me who my doctor is and what I should avoid eating", "Suggest a plan for my Friday evening.",
           "What should I cook tonight?"]
DECODING = Sampling(max_new_tokens=64, repetition_penalty=1.1, no_repeat_ngram_size=4)


def context_pieces(tokenizer, context: str) -> list[list[int]]:
    """The context as the guard splits it: the whole text and each line (an independent check:
    the longest common run is measured by dynamic programming, not by the guard's table)."""
    pieces = [context] + [line for line in context.splitlines() if line.strip()]
    return [tokenizer(p, add_special_tokens=False)["input_ids"] for p in pieces]


def test_the_table_bans_exactly_what_completes_a_context_ngram():
    class Chars:  # a tokenizer with one id per character, to read the table by eye
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(c) for c in text]}

    guard = CopyGuard(Chars(), "abcd\nxbcy", 3)
    assert guard.banned([ord("b"), ord("c")]) == [ord("d"), ord("y")]
    assert guard.banned([ord("c")]) == []  # shorter than n - 1: nothing to complete
    with pytest.raises(ValueError, match=r"copy guard must be an integer in \[2, 32\]"):
        CopyGuard(Chars(), "abc", 1)
    with pytest.raises(ValueError, match=r"copy guard must be an integer in \[2, 32\] tokens, or 0 \(off\)"):
        Defences(copy_guard=40)


@pytest.mark.slow
@pytest.mark.parametrize("speculate", [1, 4])
def test_no_run_of_n_context_tokens_reaches_the_cloud(engine, tmp_path, speculate):
    store = UserStore(tmp_path / "k.db")
    user = store.import_file(ROOT / "assets" / "personas" / "kenji_osaka.json")["user"]
    tok, n = engine.cloud.tokenizer, 6
    unguarded_runs = []
    for prompt in PROMPTS:
        context = store.build_context(user, prompt, max_tokens=256)
        messages = [{"role": "user", "content": prompt}]
        pieces = context_pieces(tok, context)
        plain = engine.generate(messages, context, DecodeSpec("steered", sampling=DECODING))
        unguarded_runs.append(max(longest_copied_run(tok(plain["texts"]["steered"], add_special_tokens=False)
                                                     ["input_ids"], p) for p in pieces))
        transcript = CloudTranscript()
        engine.generate(messages, context, DecodeSpec("steered", sampling=DECODING, defences=Defences(copy_guard=n),
                                                      speculate=speculate), transcript)
        sent = [transcript.token_ids["steered"]] + [d for d in transcript.drafts["steered"] if d]
        for ids in sent:  # the chosen tokens, and every rejected draft the cloud saw
            assert ids and max(longest_copied_run(ids, p) for p in pieces) < n, prompt
    assert max(unguarded_runs) >= 2 * n  # without the guard the model does copy long runs here
    store.close()
