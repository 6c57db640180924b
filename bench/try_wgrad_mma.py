"""Tensor-core wgrad candidates on the seed workloads, next to torch and the direct template, in one process.

    PYTHONPATH=. python3 bench/try_wgrad_mma.py --out DIR [--workloads seed-a seed-b] [--dtypes bfloat16]
        [--cache DIR]

For each workload and dtype: the gradient of the weight and the bias of the full seed shape
(grad_out 16x64x62x60x58 for seed-a). Builds every wgrad_mma_candidates() tile choice and the
direct template's default tiles at once (KernelLoader.load_many; --cache reuses a cache, e.g.
the one the GPU tests just filled), checks each on the first two samples against float64 torch
(outputs and workspace NaN-poisoned), then times each on the full shape (CUDA events, median,
L2 flushed before each run), with its reduction kernel and allocations as backward.weight_grad
runs them, next to torch.ops.aten.convolution_backward with output_mask (False, True, True)
(cuDNN's TF32 allowed for tf32 rows only). The floor is reading grad_out and x once at the
measured copy bandwidth, or the FLOPs at the measured matrix-product rate, whichever
is larger. Writes DIR/try_wgrad_mma.md and .json, and prints the table.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conv3d_codegen.backward import WgradPlan, _run_wgrad, torch_grads, wgrad_splits  # noqa: E402
from conv3d_codegen.build import Target  # noqa: E402
from conv3d_codegen.cache import KernelCache  # noqa: E402
from conv3d_codegen.kernel import KernelLoader  # noqa: E402
from conv3d_codegen.measure import median_ms, random_inputs, relative_error, tolerance  # noqa: E402
from conv3d_codegen.render import wide_offsets  # noqa: E402
from conv3d_codegen.render_grad import default_wgrad_tiles, render_wgrad  # noqa: E402
from conv3d_codegen.render_wgrad_mma import render_wgrad_mma, wgrad_mma_candidates  # noqa: E402
from conv3d_codegen.workloads import WORKLOADS, Workload  # noqa: E402
from try_mma import best_per_row  # noqa: E402

CHECKED_BATCH = 2
TIMING = dict(warmup=5, reps=20)


def workload(name: str, dtype: str) -> Workload:
    return WORKLOADS[name].with_dtype("float32" if dtype == "tf32" else dtype, "tf32" if dtype == "tf32" else "ieee")


def ceilings() -> dict[str, float]:
    """Copy bandwidth (bytes read + written per second) and the bfloat16 / tf32 / float32 matrix-product
    rates (float32: cuBLAS without TF32, the FP32 floor of float32 'ieee' rows, which run as 3xTF32)."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    found = {"bandwidth": 2 * src.numel() / (median_ms(lambda: dst.copy_(src), flush_l2=False) * 1e-3)}
    n = 8192
    for name, dtype, tf32 in [("bfloat16", torch.bfloat16, False), ("tf32", torch.float32, True),
                              ("float32", torch.float32, False)]:
        a, b = torch.randn(n, n, device="cuda", dtype=dtype), torch.randn(n, n, device="cuda", dtype=dtype)
        torch.backends.cuda.matmul.allow_tf32 = tf32
        found[name] = 2 * n ** 3 / (median_ms(lambda: a @ b, reps=10, flush_l2=False) * 1e-3)
    torch.backends.cuda.matmul.allow_tf32 = False
    found["float16"] = found["bfloat16"]
    return found


def run_row(name: str, dtype: str, entries: list[tuple[str, object, object]], limits: dict) -> list[dict]:
    """Check and time every entry (label, tiles, kernel) of one workload x dtype, and torch."""
    work = workload(name, dtype)
    spec, shape = work.spec, work.input_shape
    torch.backends.cudnn.allow_tf32 = dtype == "tf32"
    x, weight, _ = random_inputs(spec, shape)
    grad_out = torch.randn(work.output_shape, dtype=x.dtype, device="cuda")
    with torch.no_grad():
        _, want_w, want_b = torch_grads(spec, grad_out[:CHECKED_BATCH].double(), x[:CHECKED_BATCH].double(),
                                        weight.double(), (False, True, True))
        torch_ms = median_ms(lambda: torch_grads(spec, grad_out, x, weight, (False, True, True)), **TIMING)
        _, got_w, got_b = torch_grads(spec, grad_out[:CHECKED_BATCH], x[:CHECKED_BATCH], weight, (False, True, True))
        torch_err = max(relative_error(got_w, want_w), relative_error(got_b, want_b))
    element = x.element_size()
    floor_ms = max((grad_out.numel() + x.numel()) * element / limits["bandwidth"],
                   work.flops / limits[dtype]) * 1e3
    rows = []
    for label, tiles, kernel in entries:
        row = dict(workload=name, dtype=dtype, candidate=label, ms=math.inf, err=math.nan, torch_ms=torch_ms,
                   torch_err=torch_err, floor_ms=floor_ms, tflops=math.nan, note="")
        rows.append(row)
        if isinstance(kernel, Exception):
            row["note"] = f"build failed: {str(kernel).splitlines()[0][:120]}"
            continue
        plan = WgradPlan(kernel, None, tiles)
        try:
            with torch.no_grad():
                before = torch.are_deterministic_algorithms_enabled()
                torch.use_deterministic_algorithms(True, warn_only=True)  # new tensors filled with NaN
                try:
                    grad_w, grad_b = _run_wgrad(plan, spec, grad_out[:CHECKED_BATCH], x[:CHECKED_BATCH], True)
                finally:
                    torch.use_deterministic_algorithms(before)
                torch.cuda.synchronize()
        except Exception as err:  # reported in the table
            row["note"] = f"launch failed: {err}"
            continue
        row["err"] = max(relative_error(grad_w, want_w), relative_error(grad_b, want_b))
        row["splits"] = wgrad_splits(spec, tiles, x, grad_out.shape[2:])
        if not row["err"] <= tolerance(spec):
            row["note"] = f"WRONG: relative error over {tolerance(spec):.0e}; not timed"
            continue
        with torch.no_grad():
            row["ms"] = median_ms(lambda: _run_wgrad(plan, spec, grad_out, x, True), **TIMING)
        row["tflops"] = work.flops / (row["ms"] * 1e-3) / 1e12
    torch.backends.cudnn.allow_tf32 = True
    return rows


def markdown(rows: list[dict], limits: dict, header: str) -> str:
    lines = [header, "",
             f"Measured: copy {limits['bandwidth'] / 1e12:.2f} TB/s (read + written), "
             f"BF16 {limits['bfloat16'] / 1e12:.0f}, "
             f"TF32 {limits['tf32'] / 1e12:.0f}, FP32 {limits['float32'] / 1e12:.1f} TFLOP/s (8192^3, cuBLAS). "
             "Floor: reading grad_out and x once, or the FLOPs at the dtype's rate (float32: FP32's).", "",
             "| workload | dtype | candidate | splits | ms | torch ms | x vs torch | TFLOP/s | % of floor | floor ms "
             "| rel err | torch rel err | note |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ok = math.isfinite(r["ms"])
        lines.append(f"| {r['workload']} | {r['dtype']} | {r['candidate']} | {r.get('splits', '-')} "
                     f"| {r['ms']:.3f} | {r['torch_ms']:.3f} | {r['torch_ms'] / r['ms']:.2f}x | {r['tflops']:.0f} "
                     f"| {100 * r['floor_ms'] / r['ms']:.0f}% | {r['floor_ms']:.3f} | {r['err']:.1e} "
                     f"| {r['torch_err']:.1e} | {r['note']} |" if ok else
                     f"| {r['workload']} | {r['dtype']} | {r['candidate']} | {r.get('splits', '-')} | - "
                     f"| {r['torch_ms']:.3f} | - | - | - | {r['floor_ms']:.3f} | {r['err']:.1e} | {r['torch_err']:.1e} "
                     f"| {r['note']} |")
    return "\n".join(lines + best_per_row(rows, "candidate")) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", nargs="+", default=["seed-a", "seed-b"], choices=list(WORKLOADS))
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16"], choices=["bfloat16", "float16", "tf32", "float32"])
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--cache", type=Path, default=None, help="kernel cache to use (default: a fresh one)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    target = Target.for_device()
    props = torch.cuda.get_device_properties(0)
    header = (f"## Tensor-core wgrad candidates: {props.name} ({target.arch}, {props.multi_processor_count} SMs), "
              f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
              f"nvcc {target.cuda_version}")
    print(header, flush=True)

    plan = []  # (workload, dtype, label, tiles, source)
    for dtype in args.dtypes:
        for name in args.workloads:
            work = workload(name, dtype)
            spec, wide = work.spec, wide_offsets(work.spec, work.input_shape)
            direct = default_wgrad_tiles(spec)
            plan.append((name, dtype, f"direct {direct}", direct, render_wgrad(spec, direct, wide)))
            for tiles in wgrad_mma_candidates(spec, work.output_shape[-1]):
                plan.append((name, dtype, str(tiles), tiles, render_wgrad_mma(spec, tiles, wide)))

    cache = args.cache or Path(tempfile.mkdtemp(prefix="conv3d-try-wgrad-mma-"))
    loader = KernelLoader(KernelCache(cache))
    started = time.perf_counter()
    kernels = loader.load_many([p[4] for p in plan], target)
    print(f"built or loaded {len(plan)} kernels in {time.perf_counter() - started:.1f} s", flush=True)
    entries = {}
    for (name, dtype, label, tiles, _), kernel in zip(plan, kernels):
        if isinstance(kernel, Exception):
            print(f"BUILD FAILED {name} {dtype} {label}:\n{kernel}", flush=True)
        entries.setdefault((name, dtype), []).append((label, tiles, kernel))

    limits = ceilings()
    rows = []
    for (name, dtype), found in entries.items():
        rows += run_row(name, dtype, found, limits)
        torch.cuda.empty_cache()
        print(markdown(rows[-len(found):], limits, f"### {name} {dtype}"), flush=True)
        # written after every row: a run cut short keeps what it measured
        (args.out / "try_wgrad_mma.md").write_text(markdown(rows, limits, header))
        (args.out / "try_wgrad_mma.json").write_text(json.dumps({"ceilings": limits, "rows": rows}, indent=2,
                                                                default=str))
    print(markdown(rows, limits, header))


if __name__ == "__main__":
    main()
