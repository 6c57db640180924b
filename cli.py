"""conv3d-gen: emit, build and check generated Conv3d kernels.

  conv3d-gen emit SPEC            print the emitted CUDA (no GPU needed)
  conv3d-gen build SPEC [SPEC..]  build kernels into the cache, in parallel
  conv3d-gen check [WORKLOAD..]   the main job: build, verify against torch, time

SPEC is a workload name (seed-a, seed-b, ...) or the short form, quoted:
  "3x5x7 --cin 3 --cout 64 [--stride 2] [--padding same] [--dtype bfloat16] ..."
"""
from __future__ import annotations

import argparse
import sys
import time

import torch
from pydantic import ValidationError

from conv3d_codegen import KernelBuildError, FallbackError, strict
from conv3d_codegen.build import Target, compile_cubin, kernel_key
from conv3d_codegen.dispatch import default_dispatcher, source_for
from conv3d_codegen.measure import median_ms, random_inputs, relative_error, tolerance
from conv3d_codegen.ops import conv3d
from conv3d_codegen.render import render_generic
from conv3d_codegen.spec import ConvSpec
from conv3d_codegen.workloads import DEFAULT_WORKLOADS, WORKLOADS

NO_GPU = "no CUDA GPU present (torch.cuda.is_available() is False)"


def parse_spec(text: str) -> ConvSpec:
    return WORKLOADS[text].spec if text in WORKLOADS else ConvSpec.from_text(text)


def default_target(arch: str | None) -> Target:
    if arch:
        return Target.for_arch(arch)
    return Target.for_device() if torch.cuda.is_available() else Target.for_arch("sm_90")


def cmd_emit(args) -> int:
    spec = parse_spec(args.spec)
    source = render_generic(spec.dtype) if args.generic else source_for(spec)[0]
    text = source.text(kernel_key(source, default_target(args.arch)))
    if args.line_numbers:
        lines = text.splitlines()
        text = "\n".join(f"{i:>{len(str(len(lines)))}}  {line}" for i, line in enumerate(lines, 1)) + "\n"
    sys.stdout.write(text)
    return 0


def cmd_build(args) -> int:
    if not torch.cuda.is_available():
        print(f"conv3d-gen: error: {NO_GPU}; kernels are built for the GPU in use. "
              "`conv3d-gen emit` works without one.", file=sys.stderr)
        return 2
    specs = [parse_spec(s) for s in args.specs]
    dispatcher = default_dispatcher()
    started = time.perf_counter()
    results = dispatcher.prebuild(specs, workers=args.workers)
    failed = 0
    for spec, result in results.items():
        if isinstance(result, Exception):
            failed += 1
            print(f"FAILED  {spec.tag}\n{result}", file=sys.stderr)
        else:
            print(f"ok  {result.name}  ({result.entry.meta['info'].get('build_seconds', 0):.1f} s)  {result.entry.path}")
    print(f"{len(results) - failed} built or found, {failed} failed, {time.perf_counter() - started:.1f} s; "
          f"cache {dispatcher.cache.root}")
    return 1 if failed else 0


def cmd_check(args) -> int:
    items = [WORKLOADS[name].with_dtype(dtype) for name in args.workloads for dtype in args.dtypes]
    if not torch.cuda.is_available():
        return _check_without_gpu(items)
    dispatcher = default_dispatcher()
    started = time.perf_counter()
    for spec, result in dispatcher.prebuild([w.spec for w in items]).items():
        if isinstance(result, Exception):
            raise result
    print(f"kernels ready in {time.perf_counter() - started:.1f} s (cache {dispatcher.cache.root})\n")
    print(f"{'workload':<10} {'dtype':<9} {'rel.err':>8} {'tol':>6} {'ours ms':>8} {'torch ms':>8} "
          f"{'speedup':>7} {'TFLOP/s':>7}")
    bad = 0
    for item in items:
        spec, conv = item.spec, item.spec.functional_args()
        x, weight, bias = random_inputs(spec, item.input_shape)
        with strict():
            out = conv3d(x, weight, bias, **conv)
        ref = torch.nn.functional.conv3d(x[:2].double(), weight.double(),
                                         None if bias is None else bias.double(), **conv)
        err = relative_error(out[:2], ref)
        bad += not err <= tolerance(spec)
        ours = median_ms(lambda: conv3d(x, weight, bias, **conv))
        theirs = median_ms(lambda: torch.nn.functional.conv3d(x, weight, bias, **conv))
        print(f"{item.name:<10} {spec.dtype:<9} {err:8.1e} {tolerance(spec):6.0e} {ours:8.2f} {theirs:8.2f} "
              f"{theirs / ours:6.2f}x {item.flops / ours / 1e9:7.1f}")
    print(f"\n{len(items) - bad} of {len(items)} within tolerance against torch in float64")
    return 1 if bad else 0


def _check_without_gpu(items) -> int:
    target = Target.for_arch("sm_90")
    print(f"{NO_GPU}: emitting the kernels and compiling them with nvcc for {target.arch}; nothing runs.\n")
    print(f"{'kernel':<48} {'regs':>4} {'spill B':>7} {'smem B':>7} {'nvcc s':>6}")
    for item in items:
        source = source_for(item.spec)[0]
        report = compile_cubin(source, target)
        print(f"{source.name:<48} {report.registers:>4} {report.spill_store_bytes + report.spill_load_bytes:>7} "
              f"{report.shared_bytes:>7} {report.seconds:>6.1f}")
    return 0


def _workload_name(name: str) -> str:
    if name not in WORKLOADS:
        raise argparse.ArgumentTypeError(f"unknown workload {name!r}; known: {', '.join(WORKLOADS)}")
    return name


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="conv3d-gen", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    emit = commands.add_parser("emit", help="print the emitted CUDA source of a spec")
    emit.add_argument("spec")
    emit.add_argument("--generic", action="store_true", help="the generic kernel of the spec's dtype")
    emit.add_argument("--arch", help="target arch for the cache key (default: the GPU, else sm_90)")
    emit.add_argument("-n", "--line-numbers", action="store_true")
    emit.set_defaults(run=cmd_emit)

    build = commands.add_parser("build", help="build kernels into the cache")
    build.add_argument("specs", nargs="+")
    build.add_argument("--workers", type=int, help="parallel builds (default: CPU count)")
    build.set_defaults(run=cmd_build)

    check = commands.add_parser("check", help="build, verify against torch and time the default workloads")
    check.add_argument("workloads", nargs="*", default=list(DEFAULT_WORKLOADS), type=_workload_name,
                       metavar="WORKLOAD", help=f"one of {', '.join(WORKLOADS)} (default: the seeds)")
    check.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"],
                       choices=["float32", "float16", "bfloat16"])
    check.set_defaults(run=cmd_check)
    return parser


def _describe(err: Exception) -> str:
    if isinstance(err, ValidationError):
        return "; ".join(e["msg"].removeprefix("Value error, ") for e in err.errors())
    return str(err)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, KernelBuildError, FallbackError) as err:
        print(f"conv3d-gen: error: {_describe(err)}", file=sys.stderr)
        return 2 if isinstance(err, ValueError) else 1


if __name__ == "__main__":
    sys.exit(main())
