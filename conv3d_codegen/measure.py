"""Measures: GPU time (CUDA events, median after warm-up, L2 flushed before each run) and
accuracy against a float64 reference, with the project's tolerances."""
from __future__ import annotations

import statistics
from collections.abc import Callable

import torch

from .spec import ConvSpec

# Largest ||out - ref|| / ||ref|| that passes, against torch in float64.
TOLERANCE = {"float32": 1e-5, "tf32": 1e-3, "float16": 1e-2, "bfloat16": 1e-2}


def tolerance(spec: ConvSpec) -> float:
    return TOLERANCE["tf32" if spec.precision == "tf32" else spec.dtype]


def median_ms(fn: Callable[[], object], *, warmup: int = 5, reps: int = 30, flush_l2: bool = True,
              min_total_ms: float = 0.0) -> float:
    """Median of `reps` timed runs, more if needed to time at least `min_total_ms` in all
    (short kernels need many runs for a stable median)."""
    flush = torch.empty(256 << 20, dtype=torch.uint8, device="cuda") if flush_l2 else None
    for _ in range(warmup):
        fn()
    times = []
    while len(times) < reps or (sum(times) < min_total_ms and len(times) < 1000):
        if flush is not None:
            flush.zero_()  # evicts the inputs from L2 (50 MB on an H100), outside the timed region
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; NaN anywhere in `out` gives NaN (never passes).
    Where the reference is exactly zero (every tap in padding, no bias) the error is ||out||."""
    out, ref = out.double(), ref.double()
    diff, scale = (out - ref).norm(), ref.norm()
    return (diff / scale).item() if scale > 0 else diff.item()


def random_inputs(spec: ConvSpec, input_shape: tuple[int, ...], device: torch.device | str = "cuda"):
    """Fresh random input, weight and bias for `spec` (never zeros), scaled like nn.Conv3d's
    initialization so outputs stay near 1 in every dtype."""
    dtype = spec.torch_dtype
    x = torch.randn(input_shape, device=device, dtype=dtype)
    fan_in = spec.in_per_group * spec.kernel_volume
    weight = (torch.randn(spec.weight_shape, device=device) / fan_in ** 0.5).to(dtype)
    bias = torch.randn(spec.out_channels, device=device, dtype=dtype) if spec.bias else None
    return x, weight, bias
