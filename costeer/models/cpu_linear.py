"""Which way round a CPU decode step should multiply: measured on the machine, at load time.

For one or two rows, MKL's fp32 GEMM can be much faster as y^T = W @ x^T than torch's stock
x @ W^T, or much slower, depending on the CPU: on this project's 2-core AMD EPYC machine a
SmolLM2-135M decode step took 44 ms with the swap and 52 ms without (1 row; 47 vs 82 ms for 2
rows), while on a 2-core Intel Xeon the swap was 2-3x slower. So `weight_left_pays` times both
orientations on the model's own largest layers and the load keeps whichever is faster; the
weights stay as they are (no copy), and results agree with F.linear to float32 rounding.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn


class WeightLeftLinear(nn.Module):
    """y = (W @ x^T)^T + bias, sharing the original Linear's parameters."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight = linear.weight
        self.bias = linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).contiguous()  # (N, in)
        n = flat.shape[0]
        if n == 1:
            flat = torch.cat([flat, flat])  # contiguous: a stride-0 view falls back to a slow path
        y = torch.mm(self.weight, flat.t()).t()[:n]  # (N, out)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)


def use_weight_left_linears(model: nn.Module) -> int:
    """Swap every nn.Linear in `model` for WeightLeftLinear; return how many were swapped."""
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, WeightLeftLinear(child))
                swapped += 1
    return swapped


def product_layers(model: nn.Module) -> list[nn.Module]:
    """Every layer that multiplies by a weight matrix, in any precision (quantized.py's too)."""
    return [m for m in model.modules() if isinstance(m, (nn.Linear, WeightLeftLinear)) or getattr(m, "precision", None)]


def weight_bytes(model: nn.Module) -> int:
    """Bytes a decode step reads from the product layers' weights (quantized: codes and scales)."""
    return sum(t.numel() * t.element_size() for m in product_layers(model)
               for t in [*m.parameters(recurse=False), *m.buffers(recurse=False)])


def _input(layer: nn.Module, n: int) -> torch.Tensor:
    weight = getattr(layer, "weight", None)
    return torch.randn(n, layer.in_features, dtype=weight.dtype if weight is not None else torch.float32)


def _best_ms(fn, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1000


@torch.inference_mode()
def orientation_times(model: nn.Module, rows=(1, 2), reps: int = 8) -> dict:
    """Best-of-`reps` ms for the stock and the swapped product, summed over the model's largest
    body layer and its largest layer overall (the output head), for 1 and 2 rows."""
    linears = sorted((m for m in model.modules() if isinstance(m, (nn.Linear, WeightLeftLinear))),
                     key=lambda m: m.weight.numel())
    probes = {id(m): m for m in (linears[-1], linears[-2] if len(linears) > 1 else linears[-1])}.values()
    stock = left = 0.0
    for layer in probes:
        swapped = WeightLeftLinear(layer)
        for n in rows:
            x = torch.randn(n, layer.in_features, dtype=layer.weight.dtype)
            stock += _best_ms(lambda: F.linear(x, layer.weight, layer.bias), reps)
            left += _best_ms(lambda: swapped(x), reps)
    return {"stock_ms": round(stock, 3), "weight_left_ms": round(left, 3)}


def weight_left_pays(model: nn.Module) -> bool:
    """True when the swapped product is clearly (>10 %) faster here."""
    t = orientation_times(model)
    return t["weight_left_ms"] < 0.9 * t["stock_ms"]


@torch.inference_mode()
def matmul_floor_ms(model: nn.Module, reps: int = 10) -> float:
    """The time of one decode step's matrix multiplications alone: one row through every Linear
    once, in the model's order, in the orientation the model uses; best of `reps` passes. A pass
    reads every weight once, as a step does (SmolLM2-135M: ~540 MB in fp32, more than any cache
    here; ~95 MB in int4), so this is what a step cannot go below with these kernels."""
    layers = product_layers(model)
    xs = [_input(layer, 1) for layer in layers]

    def one_pass():
        for layer, x in zip(layers, xs):
            layer(x)
    return _best_ms(one_pass, reps)


@torch.inference_mode()
def matmul_hot_cache_ms(model: nn.Module, reps: int = 10) -> float:
    """The same products timed one layer at a time, each repeated on its own weight (kept hot in
    the cache): a lower, unreachable bound, reported to show how much of a step is memory traffic."""
    total = 0.0
    for layer in product_layers(model):
        x = _input(layer, 1)
        total += _best_ms(lambda: layer(x), reps)
    return total
