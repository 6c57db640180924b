"""Measures: GPU time (CUDA events, median after warm-up, L2 flushed and the host's launches
queued before each run), host time per call, and accuracy against a float64 reference, with
the project's tolerances."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from .spec import ConvSpec

# Largest ||out - ref|| / ||ref|| that passes, against torch in float64.
TOLERANCE = {"float32": 1e-5, "tf32": 1e-3, "float16": 1e-2, "bfloat16": 1e-2}


def tolerance(spec: ConvSpec) -> float:
    return TOLERANCE["tf32" if spec.precision == "tf32" else spec.dtype]


# Cycles the GPU spins before each timed run (~0.5 ms at 2 GHz), so that the host has queued
# the whole call before its start event: the time is then the GPU's alone. Without it, a
# call whose Python and launch cost (50-150 us on the H100's host, torch's cuDNN heuristics
# included) outlasts the L2 flush showed that host time as GPU time, and short rows moved
# by 10-50% between runs. host_us() reports the host's cost on its own.
HOST_AHEAD_CYCLES = 1_000_000


def median_ms(fn: Callable[[], object], *, warmup: int = 5, reps: int = 30, flush_l2: bool = True,
              min_total_ms: float = 0.0, host_ahead: bool = True) -> float:
    """Median GPU time of `reps` timed runs, more if needed to time at least `min_total_ms`
    in all (short kernels need many runs for a stable median). With `host_ahead` the GPU
    waits before each run until the host has queued it (see HOST_AHEAD_CYCLES)."""
    flush = torch.empty(256 << 20, dtype=torch.uint8, device="cuda") if flush_l2 else None
    for _ in range(warmup):
        fn()
    times = []
    while len(times) < reps or (sum(times) < min_total_ms and len(times) < 1000):
        if flush is not None:
            flush.zero_()  # evicts the inputs from L2 (50 MB on an H100), outside the timed region
        if host_ahead:
            torch.cuda._sleep(HOST_AHEAD_CYCLES)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def host_us(fn: Callable[[], object], calls: int = 100) -> float:
    """Microseconds of host time per call, the GPU's time excluded as far as the launch queue
    allows: `calls` calls are queued without waiting on them."""
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - started
    torch.cuda.synchronize()
    return elapsed / calls * 1e6


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
