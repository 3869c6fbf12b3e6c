"""CoSteer against real cloud servers: vLLM (the bundled model's converted fp32 folder) and
llama.cpp's llama-server (the bundled Q4_1 GGUF itself), each behind a recording proxy."""
import statistics
import time
import uuid

import pytest
import torch

from conftest import RecordingProxy, llama_server, record_figure, vllm
from costeer.engine.cloud import CloudError, InProcessCloud, RemoteCloud
from costeer.engine.decoding import CoSteerEngine, Sampling
from costeer.engine.device import DeviceLM
from costeer.models.load import GEMMA_SPEC, _converted_gguf, bundled_gguf_path, load_model
from costeer.engine.prompts import build_prompts
from costeer.engine.rows import ModelRows
from costeer.engine.spec import DecodeSpec

PERSONAS = [
    ("Suggest a plan for my Friday evening.",
     "I am a strict vegetarian living in Osaka. I love jazz and quiet places. I answer in short bullet points."),
    ("Write a short note to my family about my week.",
     "I am a retired sailor from Lisbon. I love the sea, old maps and fado music. My granddaughter is Inês."),
]


def remote(url, lm, top_k=20):
    cloud = RemoteCloud(url, lm.tokenizer, lm.vocab_size, lm.eos_ids, top_k=top_k).connect()
    return CoSteerEngine(cloud, DeviceLM(lm))


def ids_by_stream(engine, prompt, context, mode, tokens=32):
    out, ms = {}, []
    for ev in engine.stream([{"role": "user", "content": prompt}], context,
                            DecodeSpec(mode, sampling=Sampling(max_new_tokens=tokens))):
        out.setdefault(ev.stream, []).append(ev.token_id)
        ms.append(ev.cloud_ms)
    return out, ms


def assert_no_personal_data(proxy, lm, contexts, canaries):
    raw = repr(proxy.records)
    for canary in canaries:
        assert canary not in raw
    sent = [r["body"]["prompt"] for r in proxy.records if r["path"] == "/v1/completions"]
    assert sent
    for context in contexts:
        ids = lm.tokenizer(context, add_special_tokens=False)["input_ids"]
        grams = {tuple(ids[i:i + 8]) for i in range(len(ids) - 7)}
        for rows in sent:
            for row in rows:
                assert not grams & {tuple(row[i:i + 8]) for i in range(len(row) - 7)}


@pytest.fixture(scope="module")
def vllm_url(lm, tmp_path_factory):
    with vllm(_converted_gguf(bundled_gguf_path()), tmp_path_factory.mktemp("vllm")) as url:
        yield url


@pytest.fixture(scope="module")
def llama_url(tmp_path_factory):
    with llama_server(bundled_gguf_path(), tmp_path_factory.mktemp("llama")) as url:
        yield url


def test_vllm_is_token_identical_to_in_process(vllm_url, lm):
    """Same fp32 weights: through vLLM, greedy steered and side-by-side answers equal the
    in-process engine's with the same top-20 cut, token for token; and nothing personal crosses."""
    proxy = RecordingProxy(vllm_url)
    try:
        engine = remote(proxy.url, lm)
        local = CoSteerEngine(InProcessCloud(lm, top_k=20), DeviceLM(lm))
        canaries, contexts, round_trips = [], [], []
        for prompt, persona in PERSONAS:
            canary = f"CANARY-{uuid.uuid4().hex[:10]}"
            context = f"{persona} My code name is {canary}."
            canaries.append(canary)
            contexts.append(context)
            for mode in ("steered", "side_by_side"):
                got, ms = ids_by_stream(engine, prompt, context, mode)
                want, _ = ids_by_stream(local, prompt, context, mode)
                assert got == want, (prompt, mode)
                round_trips += ms[2:]
        assert_no_personal_data(proxy, lm, contexts, canaries)
        record_figure("vllm_round_trip_ms_per_step_median", round(statistics.median(round_trips), 1))
    finally:
        proxy.close()


def test_vllm_errors_are_clear_when_tokenize_is_missing_or_the_shape_is_unexpected(vllm_url, lm):
    proxy = RecordingProxy(vllm_url)
    try:
        proxy.missing = {"/tokenize"}
        with pytest.raises(CloudError, match="POST /tokenize was refused: HTTP 404"):
            remote(proxy.url, lm)
        proxy.missing = set()
        engine = remote(proxy.url, lm)
        proxy.reshape = lambda path, data: {"choices": [{"index": 0, "text": "?"}]} if path == "/v1/completions" else data
        with pytest.raises(CloudError, match="unexpected response shape"):
            list(engine.stream([{"role": "user", "content": "Hi"}], "", DecodeSpec("unsteered", sampling=Sampling(max_new_tokens=2))))
    finally:
        proxy.close()


def test_llama_server_agrees_with_the_fp32_model_and_steers(llama_url, lm):
    """llama-server computes with the Q4_1 file's own kernels (activations quantized to 8 bits),
    our in-process copy in fp32 from the same weights. Teacher-forced along the fp32 greedy answer,
    50 steps per prompt: the top-1 choices agree (the issue's target is 95 %; the figure is
    recorded either way), and wherever they differ the fp32 model itself was nearly undecided
    (its two choices within 1 nat), which a wrong reading of llama-server's format would not give."""
    same = steps = 0
    margins = []
    for prompt, persona in PERSONAS:
        plain, _ = build_prompts(lm.tokenizer, [{"role": "user", "content": prompt}], persona)
        cloud = RemoteCloud(llama_url, lm.tokenizer, lm.vocab_size, lm.eos_ids, top_k=20).connect().open([plain])
        local = ModelRows(lm, [plain])
        for _ in range(50):
            want, theirs = int(local.logprobs[0].argmax()), int(cloud.logprobs[0].argmax())
            same += theirs == want
            steps += 1
            if theirs != want:
                margins.append(float(local.logprobs[0, want] - local.logprobs[0, theirs]))
            cloud.step([want])
            local.step([want])
    agreement = same / steps
    record_figure("llama_server_top1_agreement_teacher_forced",
                  {"agreement": round(agreement, 4), "steps": steps, "target": 0.95,
                   "fp32_margin_at_disagreements_nats": [round(m, 3) for m in margins]})
    assert agreement >= 0.9 and all(m < 1.0 for m in margins), (agreement, margins)

    proxy = RecordingProxy(llama_url)
    try:
        engine = remote(proxy.url, lm)
        canary = f"CANARY-{uuid.uuid4().hex[:10]}"
        prompt, persona = PERSONAS[0]
        context = f"{persona} My code name is {canary}."
        got, ms = ids_by_stream(engine, prompt, context, "side_by_side")
        assert got["steered"] != got["unsteered"]
        assert_no_personal_data(proxy, lm, [context], [canary])
        record_figure("llama_server_round_trip_ms_per_step_median", round(statistics.median(ms[2:]), 1))
    finally:
        proxy.close()


def test_vllm_with_a_tokenizer_that_adds_bos(lm, tmp_path):
    """Gemma's tokenizer adds BOS: the connect-time check must ask vLLM not to add it."""
    gemma = load_model(GEMMA_SPEC)
    assert gemma.tokenizer("hi")["input_ids"][0] == gemma.tokenizer.bos_token_id
    start = time.time()
    with vllm(_gemma_folder(), tmp_path) as url:
        cloud = RemoteCloud(url, gemma.tokenizer, gemma.vocab_size, gemma.eos_ids, top_k=20).connect()
        engine = CoSteerEngine(cloud, DeviceLM(gemma))
        local = CoSteerEngine(InProcessCloud(gemma, top_k=20), DeviceLM(gemma))
        prompt, persona = PERSONAS[0]
        got, _ = ids_by_stream(engine, prompt, persona, "side_by_side", tokens=16)
        want, _ = ids_by_stream(local, prompt, persona, "side_by_side", tokens=16)
        agree = sum(a == b for s in got for a, b in zip(got[s], want[s])) / sum(len(v) for v in got.values())
        record_figure("vllm_gemma_token_agreement_16_tokens", round(agree, 3))
        assert got["steered"] and got["unsteered"]
    record_figure("vllm_gemma_start_and_run_s", round(time.time() - start, 1))


def _gemma_folder():
    from costeer.models.load import gemma_gguf_path

    return _converted_gguf(gemma_gguf_path())


def test_rows_and_cloud_log_probs_are_real_log_probabilities(vllm_url, llama_url, lm):
    plain, _ = build_prompts(lm.tokenizer, [{"role": "user", "content": PERSONAS[0][0]}], "")
    for url in (vllm_url, llama_url):
        top = RemoteCloud(url, lm.tokenizer, lm.vocab_size, lm.eos_ids, top_k=20).connect().next_logprobs([plain])[0]
        values = torch.tensor(list(top.values()))
        assert len(top) == 20 and (values <= 0).all() and float(values.exp().sum()) <= 1.0 + 1e-4


def _speculated(engine, prompt, context, mode, k, tokens=32):
    from costeer.engine.speculative import Speculation

    out, spec = {}, {}
    for ev in engine.stream([{"role": "user", "content": prompt}], context,
                            DecodeSpec(mode, sampling=Sampling(max_new_tokens=tokens), speculate=k)):
        out.setdefault(ev.stream, []).append(ev.token_id)
        spec.setdefault(ev.stream, Speculation()).add(ev)
    return out, spec


def test_speculative_decoding_through_vllm_and_llama_server(vllm_url, llama_url, lm):
    """vLLM (the same fp32 weights): speculate 4 gives the per-token loop's greedy tokens, steered
    and side by side, from nested rows in one request per round. llama-server computes with the
    Q4_1 kernels, the device in fp32: a real pair with different numerics, so its drafts can be
    rejected; its acceptance and round trips are recorded, and so is whether the output matched
    (llama.cpp's results are not promised to be the same across batch shapes, so that is not asserted)."""
    engine = remote(vllm_url, lm)
    rounds = tokens = 0
    for (prompt, persona), mode in zip(PERSONAS, ("steered", "side_by_side")):
        want, _ = ids_by_stream(engine, prompt, persona, mode)
        got, spec = _speculated(engine, prompt, persona, mode, 4)
        assert got == want, (prompt, mode)
        rounds, tokens = rounds + spec["steered"].rounds, tokens + spec["steered"].tokens
    record_figure("vllm_speculate4_round_trips_per_token", round(rounds / tokens, 3))
    engine = remote(llama_url, lm)
    figures = []
    for prompt, persona in PERSONAS:
        want, _ = ids_by_stream(engine, prompt, persona, "steered")
        got, spec = _speculated(engine, prompt, persona, "steered", 4)
        s = spec["steered"]
        figures.append({"identical": got == want, "acceptance": s.acceptance, "rejected": s.rejected,
                        "outside_top_k": s.outside_top_k, "round_trips_per_token": round(s.rounds / s.tokens, 3)})
        assert len(got["steered"]) == len(want["steered"]) and s.rounds < s.tokens
    record_figure("llama_server_speculate4_q4_cloud_fp32_device", figures)
