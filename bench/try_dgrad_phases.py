"""Phase-split dgrad against torch's dgrad on the 'strided' workload (8 x 32 x 32 x 64 x 64 -> 64,
5x3x3, stride 2, padding 1).

    PYTHONPATH=. python3 bench/try_dgrad_phases.py --out DIR [--dtypes float32 bfloat16] [--no-tune]

Per dtype, on one set of random tensors (grad_out and the weight), each checked against float64
torch on the first sample before it is timed (CUDA events, median of 30 after 5 warm-ups, L2
flushed before each run):
- torch: convolution_backward's input gradient, as backward.torch_dgrad runs it (cuDNN in IEEE
  float32 for float32);
- phase split, default tiles: every phase convolution on the direct template's default tiles
  (a Dispatcher without autotuning over a fresh cache);
- phase split, tuned phases: every phase convolution autotuned (its candidates and torch),
  then the whole split timed against torch by dgrad_phases' contest, whose kept record (winner
  and timings) is shown; "input_grad" is what backward.input_grad then runs.
Below, per phase of the untuned split: its taps, its convolution alone, and the copy of all
phases into grad_x alone. Writes DIR/try_dgrad_phases.md and DIR/try_dgrad_phases.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conv3d_codegen.autotune import TORCH, Tuner  # noqa: E402
from conv3d_codegen.backward import flipped_weight, input_grad, torch_grads  # noqa: E402
from conv3d_codegen.build import Target  # noqa: E402
from conv3d_codegen.cache import KernelCache  # noqa: E402
from conv3d_codegen.dgrad_phases import OP, phases, phases_plan, run_phases, torch_dgrad  # noqa: E402
from conv3d_codegen.dispatch import Dispatcher, cudnn_precision  # noqa: E402
from conv3d_codegen.kernel import launch_args  # noqa: E402
from conv3d_codegen.measure import median_ms, relative_error, tolerance  # noqa: E402
from conv3d_codegen.workloads import WORKLOADS  # noqa: E402

NAME = "strided"
TIMING = dict(warmup=5, reps=30)


def fresh(autotune: bool) -> Dispatcher:
    return Dispatcher(KernelCache(Path(tempfile.mkdtemp(prefix="conv3d-try-dgrad-phases-"))), autotune=autotune)


def checked(label: str, got: torch.Tensor, want: torch.Tensor, spec) -> float:
    err = relative_error(got[:1], want)
    status = "ok" if err <= tolerance(spec) else "FAILED"
    print(f"  check {label}: relative error {err:.2e} ({status})", flush=True)
    return err


def per_phase(dispatcher: Dispatcher, spec, found, grad_out, weight, input_shape) -> tuple[list[dict], float]:
    """Each phase convolution alone, and the copies of every phase into grad_x alone."""
    flipped, rows, outs = flipped_weight(spec, weight), [], []
    grad_x = grad_out.new_empty(input_shape)
    for phase in found:
        if phase.spec is None:
            continue
        gy, w = phase.grad_out(grad_out).contiguous(), phase.weight(flipped)
        plan = dispatcher.plan_for(phase.spec, gy, w, None)
        out = gy.new_empty((gy.shape[0], phase.spec.out_channels, *phase.spec.output_size(*gy.shape[2:])))
        if plan.kernel is not None:
            ms = median_ms(lambda: plan.kernel(gy, w, None, out, launch_args(phase.spec, gy.shape)), **TIMING)
        else:
            with cudnn_precision(phase.spec.precision, gy.dtype):
                ms = median_ms(lambda: torch.nn.functional.conv3d(gy, w, None, **phase.spec.functional_args()),
                               **TIMING)
        outs.append((phase, out))
        rows.append({"offset": phase.offset, "taps": "x".join(str(len(t)) for t in phase.taps),
                     "padding": phase.spec.padding, "trim": phase.trim, "route": plan.route,
                     "kernel": plan.kernel.name if plan.kernel else "torch", "ms": ms})
    copy_ms = median_ms(lambda: [grad_x[p.slices].copy_(p.trimmed(o)) for p, o in outs], **TIMING)
    return rows, copy_ms


@dataclass
class Case:
    dtype: str
    spec: object
    input_shape: tuple
    grad_out: torch.Tensor
    weight: torch.Tensor
    found: list
    want: torch.Tensor  # float64 grad of the input of the first sample
    row: dict = field(default_factory=dict)


def make_case(dtype: str) -> Case:
    work = WORKLOADS[NAME].with_dtype(dtype)
    spec, input_shape = work.spec, work.input_shape
    torch.manual_seed(0)
    grad_out = torch.randn(work.output_shape, device="cuda", dtype=spec.torch_dtype)
    weight = (torch.randn(spec.weight_shape, device="cuda") / (spec.in_per_group * spec.kernel_volume) ** 0.5
              ).to(spec.torch_dtype)
    want = torch_grads(spec, grad_out[:1].double(), grad_out.new_empty((1, *input_shape[1:]), dtype=torch.float64),
                       weight.double(), (True, False, False))[0]
    return Case(dtype, spec, input_shape, grad_out, weight, phases(spec, input_shape[2:]), want, {"dtype": dtype})


def untuned(case: Case) -> None:
    """torch's dgrad, the phase split on default tiles, and each phase alone."""
    spec, grad_out, weight, input_shape, found, row = (case.spec, case.grad_out, case.weight, case.input_shape,
                                                       case.found, case.row)
    print(f"{case.dtype}: {len(found)} phases, kernels {[p.spec.kernel_size for p in found if p.spec]}", flush=True)
    row["err torch"] = checked("torch", torch_dgrad(spec, grad_out, weight, input_shape), case.want, spec)
    row["torch ms"] = median_ms(lambda: torch_dgrad(spec, grad_out, weight, input_shape), **TIMING)
    print(f"  torch dgrad {row['torch ms']:.3f} ms", flush=True)
    plain = fresh(autotune=False)
    started = time.perf_counter()
    row["err default"] = checked("phase split, default tiles",
                                 input_grad(plain, spec, grad_out, weight, input_shape), case.want, spec)
    print(f"  first call (builds {plain.cache.stats.builds} kernels) {time.perf_counter() - started:.1f} s",
          flush=True)
    row["default ms"] = median_ms(lambda: run_phases(plain, spec, found, grad_out, weight, input_shape), **TIMING)
    print(f"  phase split, default tiles {row['default ms']:.3f} ms", flush=True)
    row["phases"], row["copy ms"] = per_phase(plain, spec, found, grad_out, weight, input_shape)
    for p in row["phases"]:
        print(f"    phase {p['offset']} taps {p['taps']} pad {p['padding']}: {p['route']} {p['ms']:.3f} ms", flush=True)
    print(f"    copies into grad_x {row['copy ms']:.3f} ms", flush=True)


def tuned(case: Case) -> None:
    """Each phase convolution autotuned, then the contest with torch; what input_grad then runs."""
    spec, grad_out, weight, input_shape, found, row = (case.spec, case.grad_out, case.weight, case.input_shape,
                                                       case.found, case.row)
    dispatcher = fresh(autotune=True)
    started = time.perf_counter()
    got = input_grad(dispatcher, spec, grad_out, weight, input_shape)  # tunes the phases, then the contest
    row["tune s"] = time.perf_counter() - started
    row["err tuned"] = checked("input_grad after tuning", got, case.want, spec)
    record = dispatcher.cache.read_record(*Tuner.record_id(spec, input_shape, Target.for_device(),
                                                           torch.cuda.get_device_name(), op=OP))
    row["winner"], row["contest ms"] = record["winner"], record["timings_ms"]
    row["tuned ms"] = median_ms(lambda: run_phases(dispatcher, spec, found, grad_out, weight, input_shape), **TIMING)
    row["input_grad ms"] = median_ms(lambda: input_grad(dispatcher, spec, grad_out, weight, input_shape), **TIMING)
    flipped = flipped_weight(spec, weight)
    row["tuned routes"] = []
    for p in found:
        if p.spec is not None:
            plan = dispatcher.plan_for(p.spec, p.grad_out(grad_out).contiguous(), p.weight(flipped), None)
            tiles = plan.kernel.source.params.get("tiles", "") if plan.kernel else ""
            row["tuned routes"].append(f"{p.offset}: {plan.route} {tiles}".rstrip())
    runs = "torch" if phases_plan(dispatcher, spec, grad_out, weight, input_shape).torch else "phase split"
    print(f"  tuning {row['tune s']:.1f} s ({dispatcher.cache.stats.builds} builds); kept {row['winner']} "
          f"{record['timings_ms']}; phase split, tuned phases {row['tuned ms']:.3f} ms; "
          f"input_grad {row['input_grad ms']:.3f} ms ({runs})", flush=True)
    for r in row["tuned routes"]:
        print(f"    {r}", flush=True)


def _ms(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def markdown(cases: list[Case]) -> str:
    props = torch.cuda.get_device_properties(0)
    lines = [f"## Phase-split dgrad, '{NAME}' workload {WORKLOADS[NAME].input_shape}: {props.name}, "
             f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}", "",
             "| dtype | torch dgrad ms | split, default tiles ms | split, tuned phases ms | kept winner "
             "| contest ms (split / torch) | input_grad ms | rel err default / tuned |",
             "|---|---|---|---|---|---|---|---|"]
    for case in cases:
        r = case.row
        if "default ms" not in r:
            continue
        contest = " / ".join(_ms(r["contest ms"].get(k)) for k in ("phase split", TORCH)) if "tuned ms" in r else ""
        tuned_cells = (f"{r['tuned ms']:.3f} | {r['winner']} | {contest} | {r['input_grad ms']:.3f}" if "tuned ms" in r
                       else "- | - | - | -")
        errors = f"{r['err default']:.1e} / " + (f"{r['err tuned']:.1e}" if "err tuned" in r else "-")
        lines.append(f"| {r['dtype']} | {r['torch ms']:.3f} | {r['default ms']:.3f} | {tuned_cells} | {errors} |")
    for case in cases:
        r = case.row
        if "phases" not in r:
            continue
        lines += ["", f"{r['dtype']}, default tiles, each phase alone:", "",
                  "| phase (rd, rh, rw) | taps | padding | trim | route | ms |", "|---|---|---|---|---|---|"]
        lines += [f"| {p['offset']} | {p['taps']} | {p['padding']} | {p['trim']} | {p['route']} | {p['ms']:.3f} |"
                  for p in r["phases"]]
        lines += [f"| copies into grad_x | | | | | {r['copy ms']:.3f} |", "",
                  f"Sum of the phases alone: {sum(p['ms'] for p in r['phases']):.3f} ms."]
        if "tuned routes" in r:
            lines += ["", "Tuned phase routes: " + "; ".join(r["tuned routes"])]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"],
                        choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--no-tune", action="store_true", help="leave out the autotuned phase convolutions")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    cases = []

    def write() -> None:  # after every step, so that a run cut short still leaves its rows
        (args.out / "try_dgrad_phases.md").write_text(markdown(cases))
        (args.out / "try_dgrad_phases.json").write_text(json.dumps([c.row for c in cases], indent=2, default=str))

    for dtype in args.dtypes:  # the untuned rows of every dtype first: they are quick
        cases.append(make_case(dtype))
        untuned(cases[-1])
        write()
    if not args.no_tune:
        for case in cases:
            tuned(case)
            write()
    print(markdown(cases))


if __name__ == "__main__":
    main()
