"""Model loading: the bundled GGUF cache, local folders, refusals with one clear line."""
import json

import pytest
import torch

from costeer.models.cpu_linear import WeightLeftLinear
from costeer.models.load import ModelLoadError, cache_dir, load_model, load_pair
from costeer.engine.spec import DecodeSpec


def test_bundled_model_loads_from_the_converted_cache(lm):
    assert lm.name == "bundled:SmolLM2-135M-Instruct"
    assert lm.vocab_size == 49152
    folders = [p for p in (cache_dir() / "models").glob("SmolLM2-135M-Instruct.Q4_1-*") if (p / "costeer-converted.json").is_file()]
    assert folders, "the converted copy is cached"
    assert not (folders[0] / "config.json").read_text().count("quantization_config")


def test_weight_left_linear_matches_stock_linear():
    lin = torch.nn.Linear(64, 300, bias=True)
    fast = WeightLeftLinear(lin)
    for rows in (1, 2, 3, 7):
        x = torch.randn(rows, 1, 64)
        assert torch.allclose(fast(x), lin(x), atol=1e-5)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, lm):
    """A tiny random Llama saved with the bundled tokenizer: a real local-folder model."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny")
    cfg = LlamaConfig(vocab_size=lm.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      tie_word_embeddings=True, eos_token_id=lm.tokenizer.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    return folder


def test_a_local_folder_works_as_device_model(tiny_folder, lm):
    from costeer.engine.decoding import Sampling, build_engine

    cloud, local = load_pair(None, str(tiny_folder))
    assert local is not cloud and local.name == str(tiny_folder)
    engine = build_engine(cloud, local)
    spec = DecodeSpec("side_by_side", sampling=Sampling(max_new_tokens=4))
    events = list(engine.stream([{"role": "user", "content": "Hi"}], "I like tea.", spec))
    assert {e.stream for e in events} == {"steered", "unsteered"}


def test_different_tokenizers_get_a_vocabulary_map(tiny_folder, tmp_path):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(tiny_folder, other)
    tj = json.loads((other / "tokenizer.json").read_text())
    vocab = tj["model"]["vocab"]
    a, b = "hello", "world"
    vocab[a], vocab[b] = vocab[b], vocab[a]  # same tokens, different ids
    (other / "tokenizer.json").write_text(json.dumps(tj))
    from costeer.engine.decoding import build_engine

    cloud, local = load_pair(str(tiny_folder), str(other))
    engine = build_engine(cloud, local)
    assert engine.vocab_map is not None and engine.vocab_map.size > 40_000


def test_missing_folder_and_corrupt_gguf(tmp_path):
    with pytest.raises(ModelLoadError, match="no such model folder"):
        load_model(str(tmp_path / "nothing-here"))
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00garbage")
    with pytest.raises(ModelLoadError) as err:
        load_model(str(bad))
    assert "broken.gguf" in str(err.value) and "\n" not in str(err.value)
    assert "--allow-downloads" not in str(err.value)  # a local file: the hub hint would mislead


def test_hub_id_offline_gives_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as err:
        load_model("Qwen/Qwen2.5-0.5B-Instruct")
    assert "Qwen/Qwen2.5-0.5B-Instruct" in str(err.value) and "\n" not in str(err.value)


def test_bad_dtype_and_device():
    with pytest.raises(ModelLoadError, match="dtype"):
        load_model(None, dtype="int3")
    with pytest.raises(ModelLoadError, match="device"):
        load_model(None, device="tpu")
