"""Lower-precision weights for a CPU decode step, with the fp32 model kept as the exact reference.

A decode step of a small model is memory traffic: every weight is read once per step
(SmolLM2-135M: ~540 MB in fp32). Storing the Linear weights in 8 or 4 bits reads 4-8x less.
The kernels are torch's own, so nothing is compiled at install time:

- ``int8``: one int8 per weight, one scale per output row (symmetric); ``aten._weight_int8pack_mm``.
- ``int4``: 4-bit weights in groups of 32 along the input, a scale and an offset per group;
  ``aten._weight_int4pack_mm_for_cpu``. The output head stays int8: in 4 bits it moved the
  bundled model's top-1 token away from fp32's on 19 of 100 steps, in 8 bits on 4 (llama.cpp's
  4-bit files keep their output layer at higher precision too). The bundled model's body is
  Q4_1 (4 bits, groups of 32, a scale and a minimum) in its GGUF, so int4 nearly re-creates it.

Both take bf16 activations (on fp32 activations the int8 kernel was 6-12x slower here), so a
Linear's input is rounded to bf16 and its output returned in the model's dtype; everything else
(norms, attention, the KV cache, the log-softmax the steering reads) stays fp32. Each output row
depends on its input row alone, whatever the batch (checked by the tests), which is what lets the
one-row, two-row and speculative forwards of the engine agree with each other exactly on any path.

`choose_precision` times the kernels on one layer of each of the model's shapes at load time, as
`cpu_linear.weight_left_pays` does for the fp32 orientation: the CPU differs from one machine to
the next, and a kernel that is fast on one can be slow on another.
"""
from __future__ import annotations

import torch
from torch import nn

from costeer.models.cpu_linear import WeightLeftLinear, _best_ms

PRECISIONS = ("fp32", "int8", "int4")
CHOICES = ("auto", *PRECISIONS)
INT4_GROUP = 32


class Int8Linear(nn.Module):
    """y = x W^T + b with W in int8 (one scale per output row)."""

    precision = "int8"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        w = weight.detach().float()
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127
        self.register_buffer("qweight", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8).contiguous())
        self.register_buffer("scales", scale.to(torch.bfloat16))
        self.bias = bias
        self.out_features, self.in_features = w.shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
        y = torch.ops.aten._weight_int8pack_mm(flat, self.qweight, self.scales).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)


class Int4Linear(nn.Module):
    """y = x W^T + b with W in 4 bits, groups of INT4_GROUP inputs sharing a scale and an offset."""

    precision = "int4"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, group: int = INT4_GROUP):
        super().__init__()
        w = weight.detach().float()
        out_f, in_f = w.shape
        groups = w.reshape(out_f, in_f // group, group)
        low, high = groups.amin(-1, keepdim=True), groups.amax(-1, keepdim=True)
        scale = ((high - low) / 15).clamp(min=1e-12)
        q = torch.round((groups - low) / scale).clamp(0, 15).to(torch.int32).reshape(out_f, in_f)
        # the kernel computes (q - 8) * scale + offset, so the offset is low + 8 * scale
        scale_offset = torch.stack([scale.squeeze(-1), (low + 8 * scale).squeeze(-1)], dim=-1)
        self.register_buffer("qweight", torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1))
        self.register_buffer("scale_offset", scale_offset.transpose(0, 1).contiguous().to(torch.bfloat16))
        self.bias = bias
        self.group = group
        self.out_features, self.in_features = out_f, in_f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.qweight, self.group, self.scale_offset).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)


QUANTIZED = {"int8": Int8Linear, "int4": Int4Linear}


def _linears(model: nn.Module):
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) in (nn.Linear, WeightLeftLinear):
                yield parent, name, child


def _fits(precision: str, layer) -> bool:
    return precision != "int4" or layer.in_features % INT4_GROUP == 0


def quantize_linears(model: nn.Module, precision: str) -> int:
    """Swap every Linear of `model` for its `precision` twin (the output head for int8 under int4);
    return how many were swapped. The input embedding is left alone (a lookup reads one row, not
    the table), so a head tied to it gets its own quantized copy and the embedding stays fp32."""
    if precision == "fp32":
        return 0
    head = model.get_output_embeddings()
    swapped = 0
    for parent, name, child in list(_linears(model)):
        kind = "int8" if child is head else precision
        if _fits(kind, child):
            setattr(parent, name, QUANTIZED[kind](child.weight, child.bias))
            swapped += 1
    return swapped


@torch.inference_mode()
def kernel_times(model: nn.Module, reps: int = 5) -> dict[str, float]:
    """Estimated ms of one decode step's products (one and two rows) for each precision as
    `quantize_linears` would run them: one layer of each shape is timed, times how many the model
    has. This is what `choose_precision` decides on; it takes about a second."""
    head = model.get_output_embeddings()
    shapes: dict[tuple, list] = {}
    for _, _, m in _linears(model):
        shapes.setdefault((m is head, m.out_features, m.in_features), []).append(m)
    times = {}
    for precision in PRECISIONS:
        total = 0.0
        for (is_head, _, _), layers in shapes.items():
            layer = layers[0]
            kind = "int8" if is_head and precision == "int4" else precision
            if not _fits(kind, layer):
                kind = "fp32"
            twin = layer if kind == "fp32" else QUANTIZED[kind](layer.weight, layer.bias)
            for n in (1, 2):
                x = torch.randn(n, layer.in_features)
                twin(x)
                total += _best_ms(lambda: twin(x), reps) * len(layers)
        times[precision] = round(total, 3)
    return times


def choose_precision(model: nn.Module) -> tuple[str, dict[str, float]]:
    """int4 if it is clearly (>20 %) faster than fp32 here and not clearly slower than int8; else
    int8 if that is clearly faster than fp32; else fp32. The margins keep the choice the same from
    one start to the next on a machine, so a rehearsed answer comes back."""
    times = kernel_times(model)
    if times["int4"] < 0.8 * times["fp32"] and times["int4"] < 1.25 * times["int8"]:
        return "int4", times
    return ("int8" if times["int8"] < 0.8 * times["fp32"] else "fp32"), times
