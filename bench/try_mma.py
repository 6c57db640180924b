"""Tensor-core template candidates on the seed workloads (and 'wide'), next to torch, in one process.

    PYTHONPATH=. python3 bench/try_mma.py --out DIR [--workloads seed-a seed-b wide dgrad-a] [--dtypes bfloat16 tf32]
        [--a-from global shared]

Builds every mma_candidates() tile choice of every row at once (KernelLoader.load_many over a
fresh cache in a temporary folder), checks each against float64 torch on the first two samples
with a NaN-poisoned output, then times it (CUDA events, median, L2 flushed before each run)
next to torch.nn.functional.conv3d on the same tensors (cuDNN's TF32 allowed for tf32 rows only).
Candidates with A gathered from global memory and with A staged in shared memory (a_from=shared)
are both timed; --a-from keeps one kind. 'dgrad-a' is the data gradient of seed-a as the
forward convolution it runs as (grad_out 16x64x62x60x58 -> 3 channels, the flipped 3x5x7
kernel, padding 2x4x6, no bias).
The floor is the larger of FLOPs over the measured matrix-product rate of the dtype (8192^3,
cuBLAS) and the fewest bytes over the measured copy bandwidth. ptxas registers and spills of
each candidate come from compiling it alone for the device's arch. Writes DIR/try_mma.json and
DIR/try_mma.md, and prints the table.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_forward import measure_ceilings, workload  # noqa: E402
from conv3d_codegen.build import Target, compile_cubin  # noqa: E402
from conv3d_codegen.cache import KernelCache  # noqa: E402
from conv3d_codegen.kernel import KernelLoader, launch_args  # noqa: E402
from conv3d_codegen.measure import median_ms, random_inputs, relative_error, tolerance  # noqa: E402
from conv3d_codegen.render import wide_offsets  # noqa: E402
from conv3d_codegen.render_mma import mma_candidates, render_mma  # noqa: E402
from conv3d_codegen.spec import ConvSpec  # noqa: E402
from conv3d_codegen.workloads import WORKLOADS, Workload  # noqa: E402

CHECKED_BATCH = 2


def ptxas_reports(sources, target: Target) -> list:
    """Registers and spills of each source compiled alone; an exception where nvcc failed."""
    def one(source):
        try:
            return compile_cubin(source, target)
        except Exception as err:  # reported in the table, not fatal
            return err
    with ThreadPoolExecutor(os.cpu_count() or 4) as pool:
        return list(pool.map(one, sources))


DGRAD_A = "dgrad-a"


def work_of(name: str, dtype: str) -> Workload:
    """bench_forward's workload, or seed-a's data gradient as the forward convolution it runs as."""
    if name != DGRAD_A:
        return workload(name, dtype)
    seed = workload("seed-a", dtype).spec
    spec = ConvSpec(in_channels=64, out_channels=3, kernel_size=(3, 5, 7), padding=(2, 4, 6), bias=False,
                    dtype=seed.dtype, precision=seed.precision)
    return Workload(DGRAD_A, spec, (16, 64, 62, 60, 58))


def run_row(name: str, dtype: str, entries: list[dict], ceilings: dict) -> list[dict]:
    """Check and time every candidate of one workload x dtype, and torch on the same tensors."""
    work = work_of(name, dtype)
    spec, shape = work.spec, work.input_shape
    conv = spec.functional_args()
    torch.backends.cudnn.allow_tf32 = dtype == "tf32"  # float32 rows compare TF32 with TF32
    x, weight, bias = random_inputs(spec, shape)
    ref = F.conv3d(x[:CHECKED_BATCH].double(), weight.double(), None if bias is None else bias.double(), **conv)
    torch_ms = median_ms(lambda: F.conv3d(x, weight, bias, **conv))
    torch_err = relative_error(F.conv3d(x[:CHECKED_BATCH], weight, bias, **conv), ref)
    floor_ms = max(work.flops / ceilings[dtype], work.min_bytes / ceilings["bandwidth"]) * 1e3
    out = torch.empty((shape[0], spec.out_channels, *spec.output_size(*shape[2:])), dtype=x.dtype, device="cuda")
    args = launch_args(spec, shape)
    rows = []
    for entry in entries:
        row = dict(workload=name, dtype=dtype, tiles=entry["tiles"], regs=entry["regs"], spills=entry["spills"],
                   smem=entry["smem"], torch_ms=torch_ms, torch_err=torch_err, floor_ms=floor_ms,
                   ms=math.inf, err=math.nan, note="")
        kernel = entry["kernel"]
        if isinstance(kernel, Exception):
            row["note"] = f"build failed: {str(kernel).splitlines()[0][:120]}"
            rows.append(row)
            continue
        out.fill_(float("nan"))
        try:
            kernel(x, weight, bias, out, args)
            torch.cuda.synchronize()
        except Exception as err:
            row["note"] = f"launch failed: {err}"
            rows.append(row)
            continue
        row["err"] = relative_error(out[:CHECKED_BATCH], ref)
        if not row["err"] <= tolerance(spec):
            row["note"] = f"WRONG: relative error over {tolerance(spec):.0e}; not timed"
        else:
            row["ms"] = median_ms(lambda: kernel(x, weight, bias, out, args))
        rows.append(row)
    torch.backends.cudnn.allow_tf32 = True
    return rows


def markdown(rows: list[dict], ceilings: dict, header: str) -> str:
    lines = [header, "",
             f"Measured ceilings: copy {ceilings['bandwidth'] / 1e12:.2f} TB/s, TF32 {ceilings['tf32'] / 1e12:.0f}, "
             f"BF16 {ceilings['bfloat16'] / 1e12:.0f} TFLOP/s (8192^3 matrix products, cuBLAS).", "",
             "| workload | dtype | candidate | regs | spill B | smem KB | ms | torch ms | x vs torch | % of floor "
             "| floor ms | rel err | torch rel err | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ms = f"{r['ms']:.3f}" if math.isfinite(r["ms"]) else "-"
        speed = f"{r['torch_ms'] / r['ms']:.2f}x" if math.isfinite(r["ms"]) else "-"
        floor = f"{100 * r['floor_ms'] / r['ms']:.0f}%" if math.isfinite(r["ms"]) else "-"
        lines.append(f"| {r['workload']} | {r['dtype']} | {r['tiles']} | {r['regs']} | {r['spills']} "
                     f"| {r['smem'] / 1024:.0f} | {ms} | {r['torch_ms']:.3f} | {speed} | {floor} | {r['floor_ms']:.3f} "
                     f"| {r['err']:.1e} | {r['torch_err']:.1e} | {r['note']} |")
    return "\n".join(lines + best_per_row(rows, "tiles")) + "\n"


def best_per_row(rows: list[dict], label: str) -> list[str]:
    """The fastest verified candidate of each workload and dtype, as markdown lines; `label`
    is the key of a row's candidate name."""
    best = {}
    for r in rows:
        key = (r["workload"], r["dtype"])
        if math.isfinite(r["ms"]) and (key not in best or r["ms"] < best[key]["ms"]):
            best[key] = r
    lines = ["", "Best per row:", ""]
    for (name, dtype), r in best.items():
        lines.append(f"- {name} {dtype}: {r['ms']:.3f} ms ({r['torch_ms'] / r['ms']:.2f}x torch's {r['torch_ms']:.3f}, "
                     f"{100 * r['floor_ms'] / r['ms']:.0f}% of floor) with {r[label]}")
    return lines


def header(title: str, target: Target) -> str:
    """The title line of a try script's table: what it times, on which GPU and toolchain."""
    props = torch.cuda.get_device_properties(0)
    return (f"## {title}: {props.name} ({target.arch}), torch {torch.__version__}, "
            f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, nvcc {target.cuda_version}")


def build_entries(plan: list[tuple], target: Target, cache: Path, no_ptxas: bool = False) -> dict:
    """Build every (workload, dtype, label, source) of `plan` at once into the kernel cache at
    `cache`, print build failures and ptxas's report of each (unless `no_ptxas`), and return
    time_and_write's entries: (workload, dtype) -> one dict per candidate. A candidate's shared
    memory is its source's "shared" parameter (dynamic shared memory), else ptxas's count."""
    sources = [p[3] for p in plan]
    loader = KernelLoader(KernelCache(cache))
    started = time.perf_counter()
    kernels = loader.load_many(sources, target)
    print(f"built {len(sources)} kernels in {time.perf_counter() - started:.1f} s", flush=True)
    reports = [None] * len(sources) if no_ptxas else ptxas_reports(sources, target)
    entries = {}
    for (name, dtype, label, source), kernel, report in zip(plan, kernels, reports):
        if isinstance(kernel, Exception):
            print(f"BUILD FAILED {name} {dtype} {label}:\n{kernel}", flush=True)
        ok = report is not None and not isinstance(report, Exception)
        smem = int(source.params["shared"].split()[0]) if "shared" in source.params else \
            report.shared_bytes if ok else 0
        entries.setdefault((name, dtype), []).append(dict(
            tiles=label, kernel=kernel, regs=report.registers if ok else "-",
            spills=report.spill_store_bytes + report.spill_load_bytes if ok else "-", smem=smem))
        if ok:
            print(f"ptxas {name} {dtype} {label}: {report.registers} registers, {report.spill_store_bytes} B spill "
                  f"stores, {report.spill_load_bytes} B spill loads, {smem} B smem, {report.seconds:.1f} s", flush=True)
    return entries


def probe_baseline(name: str, dtype: str, label: str, source, title: str) -> tuple[dict, list[str]]:
    """A probe's yardstick: one template candidate (`label`, `source`) of workload `name` built and
    timed beside torch (run_row). Returns its row and the opening lines of the probe's table: the
    title with the GPU and versions, and the candidate's, torch's and the floor's figures."""
    entries = build_entries([(name, dtype, label, source)], Target.for_device(),
                            Path(tempfile.mkdtemp(prefix="conv3d-probe-")), no_ptxas=True)
    row = run_row(name, dtype, entries[(name, dtype)], measure_ceilings())[0]
    lines = [f"{header(title, Target.for_device())}", "",
             f"Template pick ({label}): {row['ms']:.3f} ms, rel err {row['err']:.1e}; torch {row['torch_ms']:.3f} ms; "
             f"floor {row['floor_ms']:.3f} ms.", ""]
    return row, lines


def check_then_time(call, out: torch.Tensor, ref: torch.Tensor, tol: float) -> dict:
    """One run of a probe's kernel: `out` poisoned (NaN), call(), its first CHECKED_BATCH samples
    against `ref` (float64) and every element written; timed (median_ms) only if both hold."""
    out.fill_(float("nan"))
    call()
    torch.cuda.synchronize()
    err = relative_error(out[:CHECKED_BATCH], ref)
    whole = bool(torch.isfinite(out).all())
    return dict(err=err, all_written=whole, ms=median_ms(call) if err <= tol and whole else math.nan)


def time_and_write(entries: dict, header: str, out: Path, stem: str) -> None:
    """Check and time every built entry of every (workload, dtype) row next to torch, then write
    OUT/STEM.md and OUT/STEM.json and print the table."""
    ceilings = measure_ceilings()
    rows = []
    for (name, dtype), found in entries.items():
        rows += run_row(name, dtype, found, ceilings)
        torch.cuda.empty_cache()  # the row's tensors are gone; give their memory back before the next
        print(f"timed {name} {dtype}", flush=True)
    text = markdown(rows, ceilings, header)
    (out / f"{stem}.md").write_text(text)
    (out / f"{stem}.json").write_text(json.dumps({"ceilings": ceilings, "rows": rows}, indent=2, default=str))
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", nargs="+", default=["seed-a", "seed-b", "wide"],
                        choices=list(WORKLOADS) + [DGRAD_A])
    parser.add_argument("--a-from", nargs="+", default=["global", "shared"], choices=["global", "shared"],
                        help="which kinds of candidate to time: A gathered from global memory, staged in shared")
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "tf32"], choices=["bfloat16", "float16", "tf32", "float32"])
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--no-ptxas", action="store_true", help="skip compiling each candidate alone for ptxas's report")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    target = Target.for_device()
    title = header("Tensor-core template candidates", target)
    print(title, flush=True)

    plan = []  # (workload, dtype, label, source)
    for name in args.workloads:
        for dtype in args.dtypes:
            work = work_of(name, dtype)
            wide = wide_offsets(work.spec, work.input_shape)
            for tiles in [t for t in mma_candidates(work.spec) if t.a_from in args.a_from]:
                plan.append((name, dtype, str(tiles), render_mma(work.spec, tiles, wide)))
    entries = build_entries(plan, target, Path(tempfile.mkdtemp(prefix="conv3d-try-mma-")), args.no_ptxas)
    time_and_write(entries, title, args.out, "try_mma")


if __name__ == "__main__":
    main()
