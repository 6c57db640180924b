"""Backward conv3d: generated dgrad and wgrad against torch eager, in the same process.

    python bench/bench_backward.py [--workloads seed-a seed-b] [--dtypes float32 tf32 bfloat16] [--out DIR]

Per workload and dtype, three rows: forward plus backward (grads of input, weight and bias,
through autograd, as a training step runs them), the gradient of the input alone (dgrad)
and of the weight and bias alone (wgrad). Each with FLOPs, the fewest bytes, the floor (the
larger of FLOPs over the measured FP32/TF32/BF16 rate and bytes over copy bandwidth; for
forward plus backward the sum of the three floors), median ms (CUDA events, L2 flushed)
and peak memory. Gradients are checked against float64 torch (on 2 samples) before timing.
Writes DIR/backward.json and DIR/backward.md.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_forward import heading, measure_ceilings, peak_bytes, workload  # noqa: E402
from conv3d_codegen.autotune import buildable_sources  # noqa: E402
from conv3d_codegen.backward import _wgrad_record, input_grad, torch_grads, wgrad_sources, weight_grad  # noqa: E402
from conv3d_codegen import dgrad_phases  # noqa: E402
from conv3d_codegen.build import Target  # noqa: E402
from conv3d_codegen.dispatch import Dispatcher, using  # noqa: E402
from conv3d_codegen.measure import host_us, median_ms, random_inputs, relative_error, tolerance  # noqa: E402
from conv3d_codegen.ops import conv3d  # noqa: E402
from conv3d_codegen.render_grad import dgrad_spec, supports_wgrad  # noqa: E402
from conv3d_codegen.workloads import WORKLOADS, Workload  # noqa: E402

TIMING = dict(warmup=3, reps=15)
HOST_CALLS = 10  # steps queued to time the host (torch's fp32 seed-a step takes 0.3 s of GPU)


def prebuild(dispatcher: Dispatcher, works: list[Workload]) -> None:
    """Forward and dgrad autotuning candidates and the wgrad kernels, all at once."""
    sources, target = [], Target.for_device()
    for w in works:
        sources += buildable_sources(w.spec, tuple(w.input_shape), target.arch)
        if (dspec := dgrad_spec(w.spec)[0]) is not None:  # a forward convolution of grad_out, built for its size
            grad_out = (w.input_shape[0], w.spec.out_channels, *w.spec.output_size(*w.input_shape[2:]))
            sources += buildable_sources(dspec, grad_out, target.arch)
        if supports_wgrad(w.spec) is None:  # the wgrad tuner's candidates
            sources += wgrad_sources(w.spec, tuple(w.input_shape), target.arch)
    dispatcher.loader.load_many(sources, target)


def size(shape) -> int:
    return math.prod(shape)


def bench_rows(dispatcher: Dispatcher, name: str, dtype: str, ceilings: dict) -> list[dict]:
    work = workload(name, dtype)
    spec, conv = work.spec, work.spec.functional_args()
    torch.backends.cudnn.allow_tf32 = dtype == "tf32"
    x, weight, bias = random_inputs(spec, work.input_shape)
    x.requires_grad_(), weight.requires_grad_(), bias.requires_grad_()
    grad_out = torch.randn(work.output_shape, dtype=x.dtype, device=x.device)
    element = x.element_size()

    # Correctness first, on 2 samples, against float64.
    two = x[:2].detach()
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (two, weight, bias))
    F.conv3d(x64, w64, b64, **conv).backward(grad_out[:2].double())
    gx = input_grad(dispatcher, spec, grad_out[:2], weight.detach(), tuple(two.shape))
    gw, gb = weight_grad(dispatcher, spec, grad_out[:2], two)
    errs = {k: relative_error(got, want) for k, got, want in
            [("dgrad", gx, x64.grad), ("wgrad", gw, w64.grad), ("bias", gb, b64.grad)]}
    if not max(errs.values()) <= tolerance(spec):
        raise SystemExit(f"{name} {dtype}: gradient errors {errs} over {tolerance(spec):.0e}; not timing it")
    del x64, w64, b64, gx, gw, gb

    def ours_step():
        out = conv3d(x, weight, bias, precision=spec.precision, **conv)
        return torch.autograd.grad(out, (x, weight, bias), grad_out)

    def torch_step():
        out = F.conv3d(x, weight, bias, **conv)
        return torch.autograd.grad(out, (x, weight, bias), grad_out)

    xd, wd = x.detach(), weight.detach()
    flops = work.flops
    x_b, y_b, w_b = size(work.input_shape) * element, size(work.output_shape) * element, weight.numel() * element
    unit = ceilings[dtype]

    def floor(nbytes: int) -> float:
        return max(flops / unit, nbytes / ceilings["bandwidth"]) * 1e3

    fwd_floor, dgrad_floor, wgrad_floor = floor(x_b + w_b + y_b), floor(y_b + w_b + x_b), floor(x_b + y_b + w_b)
    rows = []
    with using(dispatcher):
        for what, ours, theirs, row_flops, row_bytes, floor_ms in [
            ("fwd+bwd", ours_step, torch_step, 3 * flops, 3 * (x_b + y_b + w_b), fwd_floor + dgrad_floor + wgrad_floor),
            ("dgrad", lambda: input_grad(dispatcher, spec, grad_out, wd, tuple(x.shape)),
             lambda: torch_grads(spec, grad_out, xd, wd, (True, False, False)), flops, y_b + w_b + x_b, dgrad_floor),
            ("wgrad", lambda: weight_grad(dispatcher, spec, grad_out, xd),
             lambda: torch_grads(spec, grad_out, xd, wd, (False, True, True)), flops, x_b + y_b + w_b, wgrad_floor),
        ]:
            rows.append(dict(workload=name, dtype=dtype, what=what, flops=row_flops, bytes=row_bytes,
                             floor_ms=floor_ms, ours_ms=median_ms(ours, **TIMING), torch_ms=median_ms(theirs, **TIMING),
                             ours_peak_mb=peak_bytes(ours) / 2**20, torch_peak_mb=peak_bytes(theirs) / 2**20,
                             rel_err=errs["dgrad"] if what == "dgrad" else max(errs["wgrad"], errs["bias"])
                             if what == "wgrad" else max(errs.values())))
        # the host's time per training step (see measure.host_us), where a step shorter than it waits on it
        rows[0]["ours_host_us"], rows[0]["torch_host_us"] = host_us(ours_step, HOST_CALLS), host_us(torch_step, HOST_CALLS)
    rows[1]["pick"], rows[2]["pick"], rows[2]["timings"] = _picks(dispatcher, spec, xd, grad_out)
    torch.backends.cudnn.allow_tf32 = True
    return rows


def _picks(dispatcher: Dispatcher, spec, x, grad_out) -> tuple[str, str, str]:
    """What the tuners kept: dgrad's (the derived forward's) pick, wgrad's, and wgrad's timings."""
    target = Target.for_device()
    dspec = dgrad_spec(spec)[0]
    choice = dspec and dispatcher.tuner.lookup(dspec, tuple(grad_out.shape), target, torch.cuda.get_device_name())
    if dspec is None:  # split by output phase: the contest with torch keeps its winner
        record = dispatcher.cache.read_record(*dgrad_phases._record_id(spec, tuple(x.shape), x.device, target))
        dgrad = record["winner"] if record else "untuned"
    else:
        dgrad = choice.label if choice else "untuned"
    winner, timings = _wgrad_record(dispatcher, spec, x, target)
    return dgrad, str(winner or "untuned"), timings or ""


def _host(row: dict) -> str:
    return f"{row['ours_host_us']:.0f} / {row['torch_host_us']:.0f}" if "ours_host_us" in row else "-"


def markdown(rows: list[dict], ceilings: dict) -> str:
    lines = heading("Backward", ceilings) + [
             "| workload | dtype | pass | GFLOP | MB | floor ms | torch ms | ours ms | speedup | ours % floor "
             "| pick | rel err | peak MB ours / torch | host us ours / torch |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['workload']} | {r['dtype']} | {r['what']} | {r['flops'] / 1e9:.1f} | {r['bytes'] / 1e6:.0f} "
                     f"| {r['floor_ms']:.2f} | {r['torch_ms']:.2f} | {r['ours_ms']:.2f} "
                     f"| {r['torch_ms'] / r['ours_ms']:.2f}x | {100 * r['floor_ms'] / r['ours_ms']:.0f}% "
                     f"| {r.get('pick', '-')} | {r['rel_err']:.1e} | {r['ours_peak_mb']:.0f} / {r['torch_peak_mb']:.0f} "
                     f"| {_host(r)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", nargs="+", default=["seed-a", "seed-b"], choices=list(WORKLOADS))
    parser.add_argument("--dtypes", nargs="+", default=["float32", "tf32", "bfloat16"],
                        choices=["float32", "tf32", "float16", "bfloat16"])
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args()
    ceilings = measure_ceilings()
    dispatcher = Dispatcher(autotune=True)
    prebuild(dispatcher, [workload(n, dt) for n in args.workloads for dt in args.dtypes])
    rows = []
    for name in args.workloads:
        for dtype in args.dtypes:
            rows += bench_rows(dispatcher, name, dtype, ceilings)
            print(markdown(rows[-3:], ceilings).splitlines()[-3:], flush=True)
            print(f"wgrad tuning of {name} {dtype}: {rows[-1]['timings']}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "backward.json").write_text(json.dumps({"ceilings": ceilings, "rows": rows}, indent=2))
    text = markdown(rows, ceilings)
    (args.out / "backward.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
