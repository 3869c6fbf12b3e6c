"""Lower-precision device weights (models/quantized.py, issue 28): rows that do not depend on their
batch (what keeps the engine's identities), answers close to fp32's, the choice measured at load
time, refusals in words, and the precision named where the user reads speed."""
import pytest
import torch
import torch.nn.functional as F

from conftest import run_main
from costeer.engine.decoding import CoSteerEngine, Sampling
from costeer.engine.spec import DecodeSpec
from costeer.models.load import ModelLoadError, load_model
from costeer.models.quantized import PRECISIONS, Int4Linear, Int8Linear, choose_precision


@pytest.fixture(scope="module")
def int4():
    return load_model(precision="int4")


def _body_layer(lm):
    return lm.model.model.layers[0].mlp.up_proj  # 576 -> 1536, de-quantized from the GGUF's Q4_1


@pytest.mark.parametrize("cls", [Int8Linear, Int4Linear])
def test_a_row_does_not_depend_on_its_batch(lm, cls):
    """Each output row is computed from its own input row alone, bit for bit, whatever the batch:
    the engine's one-, two- and three-row forwards and speculation's K-row checks rely on it."""
    layer = _body_layer(lm)
    fast = cls(layer.weight, layer.bias)
    x = torch.randn(40, layer.in_features, generator=torch.Generator().manual_seed(0))
    full = fast(x)
    for n in (1, 2, 3, 5, 17):
        assert torch.equal(fast(x[:n]), full[:n])
    assert torch.equal(fast(x[-1:]), full[-1:])


def test_int4_recreates_the_bundled_q4_weights_better_than_int8(lm):
    """The bundled body was Q4_1 (groups of 32, a scale and a minimum): int4 in groups of 32 comes
    back to it up to bf16 rounding, closer than one int8 scale per row does."""
    layer = _body_layer(lm)
    x = torch.randn(8, layer.in_features, generator=torch.Generator().manual_seed(1))
    exact = F.linear(x.bfloat16().float(), layer.weight)  # the kernels read bf16 inputs

    @torch.inference_mode()
    def error(cls):
        return float((cls(layer.weight, None)(x) - exact).abs().max() / exact.abs().max())
    assert error(Int4Linear) < error(Int8Linear) < 0.05


def test_the_fast_path_runs_the_engine_and_keeps_its_identities(int4):
    """On int4 weights: the steered answer side by side is the steered answer alone, and speculation
    gives the per-token answer (the identities the fp32 tests prove, here on the fast path)."""
    engine = CoSteerEngine.one_model(int4)
    message = [{"role": "user", "content": "Suggest a plan for my Friday evening."}]
    context = "- Strict vegetarian living in Osaka. Loves jazz and quiet places."

    def steered(mode, **kw):
        spec = DecodeSpec(mode, sampling=Sampling(max_new_tokens=16), **kw)
        return [e.token_id for e in engine.stream(message, context, spec) if e.stream == "steered"]
    alone = steered("steered")
    assert len(alone) == 16
    assert steered("side_by_side") == alone
    assert steered("steered", speculate=4) == alone


def test_top1_agreement_counts_every_step_and_explains_each_miss(lm, int4):
    from costeer.bench.precision import top1_agreement

    same = top1_agreement(lm, lm, steps=20)
    assert same == {"top1_agreement": 1.0, "agreement_steps": 20, "miss_margins_nats": []}
    fast = top1_agreement(lm, int4, steps=20)
    misses = fast["miss_margins_nats"]
    assert fast["agreement_steps"] == 20 and fast["top1_agreement"] == (20 - len(misses)) / 20
    assert all(m >= 0 for m in misses)


def test_auto_measures_and_picks_a_precision_here(lm):
    chosen, times = choose_precision(lm.model)
    assert chosen in PRECISIONS and set(times) == set(PRECISIONS) and min(times.values()) > 0
    if chosen == "int4":
        assert times["int4"] < 0.8 * times["fp32"] and times["int4"] < 1.25 * times["int8"]
    else:
        assert chosen == ("int8" if times["int8"] < 0.8 * times["fp32"] else "fp32")


def test_auto_is_fp32_where_the_kernels_do_not_apply():
    """`auto` is the app's default, so `--device cuda` or `--dtype bfloat16` must not be refused for
    it; only an explicit int8/int4 is (next test)."""
    lm = load_model(dtype="bfloat16", precision="auto")
    assert lm.precision == "fp32" and lm.kernel_ms is None


def test_a_separate_cloud_stays_fp32(tmp_path, lm):
    """The precision is the device's: with two models, the in-process cloud it steers keeps fp32."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from costeer.models.load import load_pair

    folder = tmp_path / "tiny"
    cfg = LlamaConfig(vocab_size=lm.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                      eos_token_id=lm.tokenizer.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    cloud, device = load_pair(None, str(folder), precision="int4")
    assert cloud.precision == "fp32" and device.precision == "int4"
    assert not any(isinstance(m, (Int4Linear, Int8Linear)) for m in cloud.model.modules())


def test_a_bad_precision_is_refused_in_words():
    with pytest.raises(ModelLoadError, match=r"precision must be one of auto, fp32, int8, int4, got 'int3'"):
        load_model(precision="int3")
    with pytest.raises(ModelLoadError, match="precision int4 runs on the CPU with dtype float32 only"):
        load_model(precision="int4", dtype="bfloat16")
    r = run_main(["-m", "costeer", "generate", "--prompt", "hi", "--precision", "int3"])
    assert r.returncode == 2 and "--precision" in r.stderr and "int3" in r.stderr and "Traceback" not in r.stderr


def test_the_latency_readout_names_the_precision():
    from ui.render import latency_html

    summary = {"per_step_ms": {"device": 1.0, "cloud": 2.0, "steering": 0.1, "ui": 0.1, "other": 0.1},
               "time_to_first_token_ms": 100, "tokens_per_s": 10.0, "ms_per_step": 100, "steps": 3, "total_ms": 300}
    assert "device weights: fp32 (the exact reference)" in latency_html(summary, False)
    assert "device weights: int4, output head int8" in latency_html(summary, False, precision="int4")


@pytest.mark.slow
def test_the_bench_compares_the_fast_path_with_fp32_in_one_run(int4):
    from costeer.bench.speed import fp32_reference, run_bench
    from costeer.engine.decoding import build_engine

    engine = build_engine(int4)
    fast = run_bench(engine, tokens=4, repeats=1)
    assert fast["precision"] == "int4" and "linear_orientation" not in fast
    out = fp32_reference(engine, fast, tokens=4, repeats=1)
    assert out["fp32_weights_mb_per_step"] > 3 * fast["weights_mb_per_step"]  # 538 MB vs 95 MB
    for k in ("plain", "steered", "side_by_side"):
        assert out[f"{k}_speedup_over_fp32"] == pytest.approx(
            out[f"fp32_{k}_ms_per_token"] / fast[f"{k}_ms_per_token"], rel=0.01)
    assert 0 < out["top1_agreement_with_fp32"] <= 1


def test_the_projection_counts_the_bytes_a_quantized_step_reads(lm, int4):
    """'Will it run on my PC?' scales by the bytes a step reads: int4's codes and scales, not the
    fp32 embedding table left beside them; the parameter count is the model's either way."""
    from costeer.bench.projection import measured_from

    summary = {"per_step_ms": {"cloud": 10.0, "device": 0.0, "steering": 1.0}, "time_to_first_token_ms": 100.0}
    fp32, fast = (measured_from(summary, m.model, True, "cpu") for m in (lm, int4))
    assert fast.params == fp32.params > 100e6
    assert fp32.weight_bytes > 5 * fast.weight_bytes > 0  # 538 MB against 95 MB
