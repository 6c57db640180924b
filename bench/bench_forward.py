"""Forward conv3d: generated kernels against torch eager, in the same process, on the same inputs.

    python bench/bench_forward.py [--workloads seed-a seed-b ...] [--dtypes float32 tf32 bfloat16]
                                  [--channels-last] [--compiled] [--out DIR]

Per row: FLOPs and the fewest bytes the problem must move; the floor, the larger of FLOPs
over the matching unit's rate and bytes over copy bandwidth, both ceilings measured here
first; median ms of each (CUDA events, L2 flushed before each run, the GPU held until the
host has queued the call, so the time is the GPU's); % of floor; peak GPU memory of one
call; host time per call (us, Python and launches, measured apart). "ours" is the
dispatcher's pick after autotuning (tile sizes, or torch where torch is faster); "default"
is the untuned tile choice. Our output is checked against float64 torch before it is timed.
With --channels-last every row is run a second time with a channels_last_3d input, for ours
(the NDHWC kernels) and for torch eager alike; those rows are marked "cl" in a layout column
(without the option the table is as before). With --compiled, torch.compile of the same call
(mode max-autotune-no-cudagraphs: Inductor times its Triton conv templates against aten's and
keeps the fastest) is a peer column, checked and timed like torch eager (Inductor's autotuner
reports shorter times for its Triton kernel than this timing of the compiled call gives; see
bench/NOTES.md, session 9). Writes DIR/forward.json, DIR/forward.md, DIR/forward.png.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conv3d_codegen import strict  # noqa: E402
from conv3d_codegen.autotune import buildable_sources  # noqa: E402
from conv3d_codegen.build import Target  # noqa: E402
from conv3d_codegen.dispatch import Dispatcher  # noqa: E402
from conv3d_codegen.measure import host_us, median_ms, random_inputs, relative_error, tolerance  # noqa: E402
from conv3d_codegen.ops import run  # noqa: E402
from conv3d_codegen.render import default_tiles  # noqa: E402
from conv3d_codegen.workloads import WORKLOADS  # noqa: E402


def measure_ceilings() -> dict[str, float]:
    """Copy bandwidth (bytes read + written per second) and matrix-product rates, measured."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ceilings = {"bandwidth": 2 * src.numel() / (median_ms(lambda: dst.copy_(src), flush_l2=False) * 1e-3)}
    n = 8192
    for name, dtype, tf32 in [("float32", torch.float32, False), ("tf32", torch.float32, True),
                              ("bfloat16", torch.bfloat16, False)]:
        a, b = torch.randn(n, n, device="cuda", dtype=dtype), torch.randn(n, n, device="cuda", dtype=dtype)
        torch.backends.cuda.matmul.allow_tf32 = tf32
        ceilings[name] = 2 * n ** 3 / (median_ms(lambda: a @ b, reps=10, flush_l2=False) * 1e-3)
    torch.backends.cuda.matmul.allow_tf32 = False
    ceilings["float16"] = ceilings["bfloat16"]
    return ceilings


def peak_bytes(fn) -> int:
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def workload(name: str, dtype: str, layout: str = "ncdhw"):
    precision = "tf32" if dtype == "tf32" else "ieee"
    work = WORKLOADS[name].with_dtype("float32" if dtype == "tf32" else dtype, precision)
    return dataclasses.replace(work, spec=work.spec.model_copy(update={"layout": layout}))


def prebuild_candidates(dispatcher: Dispatcher, works) -> None:
    """Every autotuning candidate of every row at once: builds are the slow part."""
    target = Target.for_device()
    dispatcher.loader.load_many([s for w in works for s in buildable_sources(w.spec, tuple(w.input_shape), target.arch)],
                                target)


def compiled_conv(conv: dict):
    """torch.compile of F.conv3d with this row's arguments, max-autotune, compiled afresh."""
    import torch._dynamo

    torch._dynamo.reset()
    return torch.compile(lambda x, w, b: F.conv3d(x, w, b, **conv), mode="max-autotune-no-cudagraphs", dynamic=False)


def bench_row(dispatcher: Dispatcher, name: str, dtype: str, ceilings: dict, layout: str = "ncdhw",
              compiled: bool = False) -> dict:
    work = workload(name, dtype, layout)
    spec, conv, precision = work.spec, work.spec.functional_args(), work.spec.precision
    torch.backends.cudnn.allow_tf32 = dtype == "tf32"  # fp32 rows compare IEEE float32 with IEEE float32
    x, weight, bias = random_inputs(spec, work.input_shape)
    x = x.contiguous(memory_format=spec.memory_format)  # channels_last_3d rows: for ours and torch alike
    conv3d = lambda *a, **k: run(dispatcher, *a, **k)  # noqa: E731
    with strict():
        out = conv3d(x, weight, bias, precision=precision, **conv)
    plan = dispatcher.plan_for(spec, x, weight, bias)
    choice = dispatcher.tuner.lookup(spec, tuple(x.shape), Target.for_device(), torch.cuda.get_device_name())
    ref = F.conv3d(x[:2].double(), weight.double(), None if bias is None else bias.double(), **conv)
    err = relative_error(out[:2], ref)
    if not err <= tolerance(spec):
        raise SystemExit(f"{name} {dtype}: relative error {err:.2e} over {tolerance(spec):.0e}; not timing it")
    del out
    ours = lambda: conv3d(x, weight, bias, precision=precision, **conv)  # noqa: E731
    theirs = lambda: F.conv3d(x, weight, bias, **conv)  # noqa: E731
    floor_ms = max(work.flops / ceilings[dtype], work.min_bytes / ceilings["bandwidth"]) * 1e3
    row = dict(workload=name, dtype=dtype, layout=layout, flops=work.flops, bytes=work.min_bytes, floor_ms=floor_ms,
               ours_ms=median_ms(ours), torch_ms=median_ms(theirs), rel_err=err, pick=choice.label,
               default_ms=choice.timings_ms.get(str(default_tiles(spec))), route=plan.route,
               ours_peak_mb=peak_bytes(ours) / 2**20, torch_peak_mb=peak_bytes(theirs) / 2**20,
               ours_host_us=host_us(ours), torch_host_us=host_us(theirs))
    if compiled:
        fn = compiled_conv(conv)
        compiled_err = relative_error(fn(x, weight, bias)[:2], ref)
        row.update(compiled_ms=median_ms(lambda: fn(x, weight, bias)), compiled_err=compiled_err)
    torch.backends.cudnn.allow_tf32 = True
    return row


def heading(title: str, ceilings: dict) -> list[str]:
    """A results section's first lines: what, when, on which GPU and versions, the ceilings."""
    props = torch.cuda.get_device_properties(0)
    return [f"## {title}, {datetime.date.today()}: {props.name}, torch {torch.__version__}, "
            f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}", "",
            f"Measured ceilings: copy {ceilings['bandwidth'] / 1e12:.2f} TB/s, FP32 "
            f"{ceilings['float32'] / 1e12:.1f}, TF32 {ceilings['tf32'] / 1e12:.0f}, BF16 "
            f"{ceilings['bfloat16'] / 1e12:.0f} TFLOP/s (8192^3 matrix products).", ""]


def markdown(rows: list[dict], ceilings: dict) -> str:
    layouts = any(r.get("layout", "ncdhw") != "ncdhw" for r in rows)  # a layout column only where it differs
    compiled = any("compiled_ms" in r for r in rows)  # with --compiled, every row has them
    lines = heading("Forward", ceilings) + [
             "| workload | dtype | " + ("layout | " if layouts else "") + "GFLOP | MB | floor ms | torch ms "
             + ("| torch.compile ms (rel err) " if compiled else "") +
             "| ours ms | speedup | " + ("x compiled | " if compiled else "") +
             "ours % floor | pick | default tiles ms | rel err | peak MB ours / torch | host us ours / torch |",
             "|---|---|" + ("---|" if layouts else "") + ("---|---|" if compiled else "")
             + "---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        default = f"{r['default_ms']:.2f}" if r["default_ms"] else "-"
        layout = ("cl | " if r.get("layout") == "ndhwc" else "ncdhw | ") if layouts else ""
        peer = f"| {r['compiled_ms']:.2f} ({r['compiled_err']:.0e}) " if compiled else ""
        versus = f"{r['compiled_ms'] / r['ours_ms']:.2f}x | " if compiled else ""
        lines.append(f"| {r['workload']} | {r['dtype']} | {layout}{r['flops'] / 1e9:.1f} | {r['bytes'] / 1e6:.0f} "
                     f"| {r['floor_ms']:.2f} | {r['torch_ms']:.2f} {peer}| {r['ours_ms']:.2f} "
                     f"| {r['torch_ms'] / r['ours_ms']:.2f}x | {versus}{100 * r['floor_ms'] / r['ours_ms']:.0f}% "
                     f"| {r['pick']} | {default} | {r['rel_err']:.1e} "
                     f"| {r['ours_peak_mb']:.0f} / {r['torch_peak_mb']:.0f} "
                     f"| {r['ours_host_us']:.0f} / {r['torch_host_us']:.0f} |")
    return "\n".join(lines) + "\n"


def chart(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['workload']}\n{r['dtype']}" + (" cl" if r.get("layout") == "ndhwc" else "") for r in rows]
    pos = range(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(rows)), 4))
    ax.bar([p - 0.27 for p in pos], [r["torch_ms"] for r in rows], 0.27, label="torch eager")
    ax.bar(list(pos), [r["ours_ms"] for r in rows], 0.27, label="conv3d-codegen")
    ax.bar([p + 0.27 for p in pos], [r["floor_ms"] for r in rows], 0.27, label="floor")
    ax.set_xticks(list(pos), labels, fontsize=8)
    ax.set_ylabel("ms (median)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"],
                        choices=["float32", "tf32", "float16", "bfloat16"])
    parser.add_argument("--channels-last", action="store_true",
                        help="also run every row with a channels_last_3d input (rows marked cl)")
    parser.add_argument("--compiled", action="store_true",
                        help="add torch.compile (max-autotune) of the same call as a peer column")
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args()
    layouts = ["ncdhw", "ndhwc"] if args.channels_last else ["ncdhw"]
    ceilings = measure_ceilings()
    dispatcher = Dispatcher(autotune=True)
    prebuild_candidates(dispatcher, [workload(n, dt, lay) for n in args.workloads for dt in args.dtypes
                                     for lay in layouts])
    rows = [bench_row(dispatcher, name, dtype, ceilings, lay, args.compiled) for name in args.workloads
            for dtype in args.dtypes for lay in layouts]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "forward.json").write_text(json.dumps({"ceilings": ceilings, "rows": rows}, indent=2))
    text = markdown(rows, ceilings)
    (args.out / "forward.md").write_text(text)
    chart(rows, args.out / "forward.png")
    print(text)


if __name__ == "__main__":
    main()
