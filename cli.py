"""conv3d-gen: build, inspect and check the kernels conv3d-codegen generates.

  conv3d-gen emit SPEC             the emitted CUDA source (no GPU needed)
  conv3d-gen show SPEC|KERNEL      the same with line numbers (and colour on a terminal)
  conv3d-gen build [SPEC..]        build into the cache: specs, --file specs.yaml, --model pkg.mod:factory
  conv3d-gen list                  the cache: kernels, sizes, dates, autotuning winners
  conv3d-gen verify SPEC --input-shape N,C,D,H,W     against torch in float64
  conv3d-gen bench SPEC --input-shape N,C,D,H,W      against torch, median ms
  conv3d-gen clean | prune --max-size 2G             empty the cache, or trim it (least recently used)
  conv3d-gen doctor                the GPU, toolchain and cache as this machine has them
  conv3d-gen check [WORKLOAD..]    the main job: build, verify and time the seed workloads

SPEC is a workload name (seed-a seed-b wide strided depthwise pointwise) or the short form,
quoted: "3x5x7 --cin 3 --cout 64 [--stride 2] [--padding same] [--dtype bfloat16] ...".
Commands that report take --json. Bad arguments exit with status 2.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import sys
import threading
import time
from pathlib import Path

import torch
from pydantic import ValidationError

from conv3d_codegen import FallbackError, KernelBuildError, strict
from conv3d_codegen.build import Target, compile_cubin, kernel_key, nvcc_path, nvcc_version
from conv3d_codegen.cache import CacheUnusable, KernelCache, default_cache_dir, unsafe
from conv3d_codegen.dispatch import AUTOTUNE_ENV, MODE_ENV, STRICT_ENV, Dispatcher, cudnn_precision, source_for
from conv3d_codegen.kernel import launch_args
from conv3d_codegen.measure import median_ms, random_inputs, relative_error, tolerance
from conv3d_codegen.models import conv_calls, load_factory
from conv3d_codegen.ops import run
from conv3d_codegen.render import render_generic
from conv3d_codegen.spec import ConvSpec
from conv3d_codegen.workloads import DEFAULT_WORKLOADS, WORKLOADS

NO_GPU = "no CUDA GPU present (torch.cuda.is_available() is False)"


class UsageError(ValueError):
    """Bad arguments: reported in one line, exit status 2."""


# ---- argument types ------------------------------------------------------------------

def parse_spec(text: str) -> ConvSpec:
    return WORKLOADS[text].spec if text in WORKLOADS else ConvSpec.from_text(text)


def parse_shape(text: str) -> tuple[int, int, int, int, int]:
    parts = re.split(r"[,x]", text)
    if len(parts) != 5 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"an input shape is N,C,D,H,W of positive integers, got {text!r}")
    return tuple(int(p) for p in parts)


def parse_size(text: str) -> int:
    found = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)B?", text.strip().upper())
    if not found:
        raise argparse.ArgumentTypeError(f"a size is a number with K, M, G or T, e.g. 500M or 2G; got {text!r}")
    return int(float(found.group(1)) * 1024 ** "_KMGT".index(found.group(2) or "_"))


def workload_name(name: str) -> str:
    if name not in WORKLOADS:
        raise argparse.ArgumentTypeError(f"unknown workload {name!r}; known: {', '.join(WORKLOADS)}")
    return name


def specs_from_file(path: Path) -> list[ConvSpec]:
    """A JSON or YAML list; each item a SPEC string or a mapping of ConvSpec fields."""
    try:
        text = path.read_text()
    except OSError as err:
        raise UsageError(f"cannot read {path}: {err.strerror}") from None
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise UsageError("reading YAML needs PyYAML (pip install pyyaml); JSON works without it") from None
        items = yaml.safe_load(text)
    else:
        try:
            items = json.loads(text)
        except ValueError as err:
            raise UsageError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(items, list):
        raise UsageError(f"{path} must hold a list of specs")
    return [parse_spec(item) if isinstance(item, str) else ConvSpec(**item) for item in items]


# ---- output ----------------------------------------------------------------------------

def table(rows: list[dict], columns: list[str]) -> str:
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def emit_result(args, data, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if getattr(args, "json", False) else text)


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def when(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M")


_KEYWORDS = re.compile(r"\b(const|constexpr|int|float|long|unsigned|bool|void|for|if|return|template|using|"
                       r"namespace|extern|static_cast|__global__|__device__|__forceinline__|__shared__|"
                       r"__restrict__|__launch_bounds__|__syncthreads)\b")


def highlight(line: str) -> str:
    """Comments dim, keywords bold, preprocessor lines cyan: enough to read a kernel by."""
    code, sep, comment = line.partition("//")
    if code.lstrip().startswith("#"):
        code = f"\033[36m{code}\033[0m"
    else:
        code = _KEYWORDS.sub(lambda m: f"\033[1m{m.group(0)}\033[0m", code)
    return code + (f"\033[2m{sep}{comment}\033[0m" if sep else "")


# ---- commands -------------------------------------------------------------------------

def default_target(arch: str | None) -> Target:
    if arch:
        return Target.for_arch(arch)
    return Target.for_device() if torch.cuda.is_available() else Target.for_arch("sm_90")


def source_text(args) -> str:
    cache = KernelCache()
    winners = _winners(cache)
    matches = sorted((e for e in _entries(cache) if e.name.startswith(args.spec)),
                     key=lambda e: (bool(winners.get(_identity_and_tiles(e))), e.last_used))
    if matches:  # a kernel in the cache, by name or prefix: the exact one, else an autotune winner, else the last used
        entry = next((e for e in matches if e.name == args.spec), matches[-1])
        if len(matches) > 1 and entry.name != args.spec:  # autotuning leaves several of one spec
            why = "an autotune winner" if winners.get(_identity_and_tiles(entry)) else "the last used"
            print(f"{len(matches)} cached kernels start with {args.spec}; showing {why}, {entry.name}",
                  file=sys.stderr)
        if "source" not in entry.meta.get("files", {}):
            raise UsageError(f"the cached kernel {entry.name} has no source recorded")
        return entry.file("source").read_text()
    spec = parse_spec(args.spec)
    source = render_generic(spec.dtype) if args.generic else source_for(spec)[0]
    return source.text(kernel_key(source, default_target(args.arch)))


def cmd_emit(args) -> int:
    sys.stdout.write(source_text(args))
    return 0


def cmd_show(args) -> int:
    lines = source_text(args).splitlines()
    color = sys.stdout.isatty() and not args.no_color and not os.environ.get("NO_COLOR")
    width = len(str(len(lines)))
    for i, line in enumerate(lines, 1):
        print(f"{i:>{width}}  {highlight(line) if color else line}")
    return 0


def require_gpu() -> None:
    if not torch.cuda.is_available():
        raise UsageError(f"{NO_GPU}; kernels are built for and run on the GPU in use. "
                         "`conv3d-gen emit` and `show` work without one.")


def cmd_build(args) -> int:
    specs = [parse_spec(s) for s in args.specs]
    for path in args.file or []:
        specs += specs_from_file(Path(path))
    sources_for_model, calls = [], []
    if args.autotune and not args.model:
        raise UsageError("--autotune needs --model: tuning times each conv on the input shape it sees")
    if args.model:
        if args.input_shape is None:
            raise UsageError("--model needs --input-shape N,C,D,H,W")
        calls = conv_calls(load_factory(args.model)(), args.input_shape, getattr(torch, args.dtype))
        sources_for_model = [source_for(c.spec, c.input_shape)[0] for c in calls]
        print(f"{args.model}: {len(calls)} conv3d calls, {len(set(c.spec for c in calls))} specs", file=sys.stderr)
    if not specs and not sources_for_model:
        raise UsageError("nothing to build: give specs, --file or --model")
    require_gpu()
    sources = list({s.name + s.body: s for s in [source_for(spec)[0] for spec in specs] + sources_for_model}.values())
    dispatcher, started = Dispatcher(autotune=args.autotune), time.perf_counter()
    done, lock, tty = [0], threading.Lock(), sys.stderr.isatty()

    def progress(result) -> None:
        with lock:
            done[0] += 1
            name = getattr(result, "name", "FAILED")
            end = "" if tty and done[0] < len(sources) else "\n"
            print(f"\r[{done[0]}/{len(sources)}] {name}".ljust(80), end=end, file=sys.stderr, flush=True)

    results = dispatcher.loader.load_many(sources, Target.for_device(), args.workers, progress)
    rows = [{"kernel": getattr(r, "name", s.name), "status": "ok" if not isinstance(r, Exception) else "failed",
             "build s": r.entry.meta["info"].get("build_seconds", "") if not isinstance(r, Exception) else "",
             "error": str(r) if isinstance(r, Exception) else ""} for s, r in zip(sources, results)]
    if args.autotune:  # each conv once on random data of its shape: the records prebuilt mode reads
        for call in calls:
            plan = dispatcher.plan_for(call.spec, *random_inputs(call.spec, call.input_shape))
            rows.append({"kernel": plan.kernel.name if plan.kernel else plan.route,
                         "status": f"tuned for layer {call.module}", "build s": "", "error": ""})
    failed = [r for r in rows if r["status"] == "failed"]
    summary = (f"{len(rows) - len(failed)} built or found, {len(failed)} failed in "
               f"{time.perf_counter() - started:.1f} s; cache {dispatcher.cache.root}")
    errors = "".join(f"\n\n{r['error']}" for r in failed)
    emit_result(args, {"kernels": rows, "cache": str(dispatcher.cache.root)},
                table(rows, ["kernel", "status", "build s"]) + f"\n{summary}{errors}")
    return 1 if failed else 0


def _entries(cache: KernelCache):
    return cache.entries() if cache.root.is_dir() else []


def _winners(cache: KernelCache) -> dict[tuple[str, str], list[str]]:
    """(spec JSON, tiles) -> the input shapes for which autotuning picked them."""
    winners: dict[tuple[str, str], list[str]] = {}
    for record in cache.records() if cache.root.is_dir() else []:
        if record.get("winner") not in (None, "torch"):
            shape = "x".join(map(str, record.get("shape", [])))
            winners.setdefault((record.get("spec"), record["winner"]), []).append(shape)
    return winners


def _identity_and_tiles(entry) -> tuple[str, str]:
    info = entry.meta.get("info", {})
    return info.get("identity", ""), info.get("params", {}).get("tiles", "")


def cmd_list(args) -> int:
    cache = KernelCache()
    winners = _winners(cache)
    rows = []
    for entry in _entries(cache):
        identity, tiles = _identity_and_tiles(entry)
        try:
            spec = ConvSpec.model_validate_json(identity).to_text()
        except ValidationError:
            spec = identity  # the generic kernel: its dtype
        rows.append({"kernel": entry.name, "spec": spec, "tiles": tiles or "-", "size": human_size(entry.size),
                     "built": when(entry.meta.get("created", 0)), "last used": when(entry.last_used),
                     "autotune winner for": ", ".join(winners.get((identity, tiles), [])) or "-"})
    emit_result(args, {"cache": str(cache.root), "kernels": rows},
                f"cache {cache.root}: {len(rows)} kernels\n" +
                (table(rows, ["kernel", "size", "built", "last used", "autotune winner for", "tiles", "spec"])
                 if rows else ""))
    return 0


def cmd_verify(args) -> int:
    require_gpu()
    spec = parse_spec(args.spec)
    dispatcher = Dispatcher()
    x, weight, bias = random_inputs(spec, args.input_shape)
    plan = dispatcher.plan_for(spec, x, weight, bias)
    if plan.kernel is None:
        raise UsageError(f"no kernel serves this call: {plan.reason}")
    out = torch.full((x.shape[0], spec.out_channels, *spec.output_size(*x.shape[2:])), float("nan"),
                     dtype=x.dtype, device=x.device)
    plan.kernel(x, weight, bias, out, launch_args(spec, x.shape))
    ref = torch.nn.functional.conv3d(x.double(), weight.double(), None if bias is None else bias.double(),
                                     **spec.functional_args())
    err = relative_error(out, ref)
    ok = err <= tolerance(spec)
    emit_result(args, {"kernel": plan.kernel.name, "relative_error": err, "tolerance": tolerance(spec), "ok": ok},
                f"{plan.kernel.name} ({plan.route}) on {args.input_shape}: relative error {err:.2e} "
                f"against torch in float64, tolerance {tolerance(spec):.0e}: {'ok' if ok else 'FAILED'}")
    return 0 if ok else 1


def cmd_bench(args) -> int:
    require_gpu()
    spec = parse_spec(args.spec)
    dispatcher = Dispatcher(autotune=args.autotune)
    x, weight, bias = random_inputs(spec, args.input_shape)
    conv = spec.functional_args()
    plan = dispatcher.plan_for(spec, x, weight, bias)
    ours = median_ms(lambda: run(dispatcher, x, weight, bias, precision=spec.precision, **conv))
    theirs = median_ms(lambda: torch.nn.functional.conv3d(x, weight, bias, **conv))
    row = {"kernel": plan.kernel.name if plan.kernel else plan.route, "ours ms": f"{ours:.3f}",
           "torch ms": f"{theirs:.3f}", "speedup": f"{theirs / ours:.2f}x"}
    emit_result(args, {**row, "input_shape": args.input_shape, "gpu": torch.cuda.get_device_name()},
                f"{spec.to_text()} on {args.input_shape}, {torch.cuda.get_device_name()}, median of 30 after warm-up"
                f"\n{table([row], list(row))}")
    return 0


def cmd_clean(args) -> int:
    cache = KernelCache()
    count = len(_entries(cache))
    freed = cache.clean() if cache.root.is_dir() else 0
    emit_result(args, {"removed": count, "bytes_freed": freed},
                f"removed {count} kernels and the records, freed {human_size(freed)} in {cache.root}")
    return 0


def cmd_prune(args) -> int:
    cache = KernelCache()
    removed = cache.prune(args.max_size) if cache.root.is_dir() else []
    left = sum(e.size for e in _entries(cache))
    emit_result(args, {"removed": [e.name for e in removed], "bytes_left": left},
                f"removed {len(removed)} least recently used kernels; {human_size(left)} left "
                f"(limit {human_size(args.max_size)}) in {cache.root}")
    return 0


def cmd_doctor(args) -> int:
    problems = []
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        gpu = f"{torch.cuda.get_device_name()} (sm_{major}{minor}), {torch.cuda.device_count()} device(s)"
    else:
        gpu = f"none: {NO_GPU}; kernels can be emitted but not built or run"
    nvcc = nvcc_path()
    if nvcc is None:
        problems.append("nvcc not found: set CUDA_HOME or put nvcc on PATH")
    root = default_cache_dir()
    cache = {"path": str(root), "exists": root.is_dir()}
    if root.is_dir():
        st = root.stat()
        cache.update(owner_uid=st.st_uid, mode=f"{st.st_mode & 0o777:o}", writable=os.access(root, os.W_OK),
                     kernels=len(_entries(KernelCache(root))),
                     size=human_size(sum(p.stat().st_size for p in root.rglob("*") if p.is_file())))
        if (reason := unsafe(root)) is not None:
            problems.append(f"cache refused: {reason}")
        elif not cache["writable"]:
            problems.append(f"cache {root} is not writable; a private temporary cache will be used")
    report = {
        "gpu": gpu,
        "torch": f"{torch.__version__} (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()})",
        "nvcc": f"{nvcc} ({nvcc_version()})" if nvcc else "not found",
        "cache": cache,
        "settings": {MODE_ENV: os.environ.get(MODE_ENV) or "async (default)",
                     AUTOTUNE_ENV: os.environ.get(AUTOTUNE_ENV) or "1 (default)",
                     STRICT_ENV: os.environ.get(STRICT_ENV) or "0 (default)"},
        "problems": problems,
    }
    shown = dict(report, cache=", ".join([cache["path"]] + [f"{k} {v}" for k, v in cache.items() if k != "path"]),
                 settings=", ".join(f"{k}={v}" for k, v in report["settings"].items()))
    text = "\n".join(f"{k:<9} {v}" for k, v in shown.items() if k != "problems")
    text += "\n" + ("\n".join(f"PROBLEM   {p}" for p in problems) if problems else "no problems found")
    emit_result(args, report, text)
    return 1 if problems else 0


def cmd_check(args) -> int:
    items = [WORKLOADS[name].with_dtype(dtype) for name in args.workloads for dtype in args.dtypes]
    if not torch.cuda.is_available():
        return _check_without_gpu(items)
    dispatcher = Dispatcher()
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
            out = run(dispatcher, x, weight, bias, **conv)
        ref = torch.nn.functional.conv3d(x[:2].double(), weight.double(),
                                         None if bias is None else bias.double(), **conv)
        err = relative_error(out[:2], ref)
        bad += not err <= tolerance(spec)
        ours = median_ms(lambda: run(dispatcher, x, weight, bias, **conv))
        with cudnn_precision(spec.precision, x.dtype):  # IEEE float32 against IEEE float32
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


# ---- the parser ------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and status 2, as argparse does, with the fix named
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} -h)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="conv3d-gen", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def command(name: str, handler, help: str, json_output: bool = True):
        sub = commands.add_parser(name, help=help, description=help)
        sub.set_defaults(run=handler)
        if json_output:
            sub.add_argument("--json", action="store_true", help="machine-readable output")
        return sub

    for name, handler, help in [("emit", cmd_emit, "print the emitted CUDA source of a spec"),
                                ("show", cmd_show, "the emitted source with line numbers; a cached kernel by name")]:
        sub = command(name, handler, help, json_output=False)
        sub.add_argument("spec", help="SPEC, or (show) the name of a kernel in the cache")
        sub.add_argument("--generic", action="store_true", help="the generic kernel of the spec's dtype")
        sub.add_argument("--arch", help="target arch for the cache key (default: the GPU, else sm_90)")
        if name == "show":
            sub.add_argument("--no-color", action="store_true")

    sub = command("build", cmd_build, "build kernels into the cache, in parallel")
    sub.add_argument("specs", nargs="*", metavar="SPEC")
    sub.add_argument("--file", action="append", help="a JSON or YAML list of specs (repeatable)")
    sub.add_argument("--model", help="package.module:factory returning an nn.Module: build every conv it runs")
    sub.add_argument("--input-shape", type=parse_shape, help="N,C,D,H,W of the model's input")
    sub.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    sub.add_argument("--autotune", action="store_true",
                     help="with --model: also tune each conv on its input shape (tile sizes or torch)")
    sub.add_argument("--workers", type=int, help="parallel builds (default: CPU count)")

    command("list", cmd_list, "the kernels in the cache")
    for name, handler, help in [("verify", cmd_verify, "run a spec's kernel against torch in float64"),
                                ("bench", cmd_bench, "time a spec's kernel against torch")]:
        sub = command(name, handler, help)
        sub.add_argument("spec", metavar="SPEC")
        sub.add_argument("--input-shape", type=parse_shape, required=True, help="N,C,D,H,W")
        if name == "bench":
            sub.add_argument("--autotune", action="store_true", help="autotune the tiles first")
    command("clean", cmd_clean, "delete every kernel and record in the cache")
    sub = command("prune", cmd_prune, "delete least recently used kernels down to a size")
    sub.add_argument("--max-size", type=parse_size, required=True, help="e.g. 500M or 2G")
    command("doctor", cmd_doctor, "the GPU, toolchain and cache as this machine has them")
    sub = command("check", cmd_check, "the main job: build, verify and time the default workloads",
                  json_output=False)
    sub.add_argument("workloads", nargs="*", default=list(DEFAULT_WORKLOADS), type=workload_name,
                     metavar="WORKLOAD", help=f"one of {', '.join(WORKLOADS)} (default: the seeds)")
    sub.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"],
                     choices=["float32", "float16", "bfloat16"])
    return parser


def _describe(err: Exception) -> str:
    if isinstance(err, ValidationError):
        return "; ".join(e["msg"].removeprefix("Value error, ") for e in err.errors())
    return str(err)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, KernelBuildError, FallbackError, CacheUnusable) as err:
        print(f"conv3d-gen {args.command}: error: {_describe(err)}", file=sys.stderr)
        return 2 if isinstance(err, ValueError) else 1


if __name__ == "__main__":
    sys.exit(main())
