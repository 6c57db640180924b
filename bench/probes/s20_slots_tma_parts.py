"""Session 20 probe: the rotating-slots template's dgrads (templates/conv3d_fwd_slots.cu.j2) with their rows staged by
cp.async and by the bulk tensor copy engine with a producer warpgroup (SlotsTiles.tma), timed in one process on the same
tensors: seed-a's bfloat16 with two stages (tma: a buffer a plane and stage, A by 32-bit loads paired by byte permutes),
and seed-b's tf32 with 4 planes and one stage (v20's pick) beside 2 planes and two stages (tma: the producer two rows
ahead).

    PYTHONPATH=. python3 bench/probes/s20_slots_tma_parts.py OUT_DIR [--run 3] [--ncu]

Run 2 timed seed-a's bf16 with 2 planes and seed-b's tf32 (results/2026-11-22-h100-s20-run2-probe.json); run 3 times
seed-a's bf16 with 2 and 4 planes (4: 176 registers of accumulators and fragments, past MAX_CORE_REGISTERS, which the
probe lifts), and with --ncu runs each shipped kernel once, untimed, for Nsight Compute's DRAM and L2 counters. (Run 5
of the session timed a form since reverted, the output rows written during the next row's wgmmas, against the form
kept: results/2026-11-22-h100-s20-run5-probe.log; run 6 is run 3's on the 16-bit rows swizzled by the engine.)

Each kernel as it ships (checked: NaN-poisoned output against float64 torch) and variants of its rendered source
(Source.edited, built beside it):
  nostage   nothing staged after the first row (cp.async: stage_row returns at once; tma: the producer asks for the
            first row only and the warpgroups wait on no FULL barrier)
  product   nostage, and no output row written (session 18's noout: the completed slots' stores and barriers stay)
Every variant computes a wrong result; timing is median_ms (CUDA events, median, L2 flushed). A diagnostic, not a
kernel of the package: its edits match the template's text as of this commit."""
import json
import tempfile
from functools import reduce
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from conv3d_codegen.build import Target  # noqa: E402
from conv3d_codegen.cache import KernelCache  # noqa: E402
from conv3d_codegen.dispatch import Dispatcher  # noqa: E402
from conv3d_codegen.kernel import launch_args  # noqa: E402
from conv3d_codegen.measure import median_ms, random_inputs, relative_error, tolerance  # noqa: E402
from conv3d_codegen.render_grad import dgrad_spec  # noqa: E402
import conv3d_codegen.render_slots as slots  # noqa: E402
from conv3d_codegen.render_slots import SlotsTiles, render_slots  # noqa: E402
from conv3d_codegen.workloads import WORKLOADS  # noqa: E402
from s16_slots_parts import edit, never, nostage  # noqa: E402  (session 16's edits of the same template)
from s18_slots_f32_parts import noout  # noqa: E402


def nostage_tma(body):
    body = edit(never(body), "        if (use > 0) mbar_wait(empty + b, (use - 1) & 1);",
                "        if (rows > 0 && !g_never_flag) continue;  // only the first row staged\n"
                "        if (use > 0) mbar_wait(empty + b, (use - 1) & 1);")
    wait = "  for (int j = 0; j < AP; ++j) mbar_wait(full + 8 * (k * PLANES + wg * P + j), r / STAGES & 1);"
    return edit(body, wait, wait.replace("mbar_wait", "if (g_never_flag) mbar_wait"))


PARTS = {False: {"nostage": [nostage], "product": [nostage, noout]},
         True: {"nostage": [nostage_tma], "product": [nostage_tma, noout]}}
# (workload, dtype, [(planes, stages)]): each cp.async and tma
RUNS = {2: [("seed-a", "bfloat16", [(2, 2)]), ("seed-b", "tf32", [(4, 1), (2, 2)])],
        3: [("seed-a", "bfloat16", [(2, 2), (4, 2)])]}


def main() -> None:
    out, profiled = Path(sys.argv[1]), "--ncu" in sys.argv
    run = int(sys.argv[sys.argv.index("--run") + 1]) if "--run" in sys.argv else 2
    if run == 3:
        slots.MAX_CORE_REGISTERS = 176  # seed-a's 4 planes (the probe's question: do they pay)
    out.mkdir(parents=True, exist_ok=True)
    dispatcher = Dispatcher(KernelCache(Path(tempfile.gettempdir()) / "conv3d-s20-probe-cache"))  # kept out of OUT_DIR
    rows = []
    for workload, dtype, shapes in RUNS[run]:
        seed = WORKLOADS[workload]
        fwd = seed.spec.model_copy(update={"dtype": "float32", "precision": "tf32"} if dtype == "tf32" else {"dtype": dtype})
        dspec, _ = dgrad_spec(fwd)
        gy_shape = (seed.input_shape[0], dspec.in_channels, *fwd.output_size(*seed.input_shape[2:]))
        sources, shipped = {}, []
        for planes, stages in shapes:
            for tma in (False, True):
                tiles = SlotsTiles(planes, stages, tma)
                base = render_slots(dspec, tiles, size=gy_shape[2:])
                sources[str(tiles)] = base
                shipped.append(str(tiles))
                for v, edits in PARTS[tma].items():  # each edit applied to the body the one before returned
                    sources[f"{tiles} {v}"] = base.edited(v, reduce(lambda body, e: e(body), edits, base.body))
        kernels = dict(zip(sources, dispatcher.loader.load_many(list(sources.values()), Target.for_device())))
        x, weight, bias = random_inputs(dspec, gy_shape)
        args = launch_args(dspec, gy_shape)
        ref = F.conv3d(x[:2].double(), weight.double(), None, **dspec.functional_args())
        outputs = {}
        for name in shipped:
            y = torch.full((gy_shape[0], *ref.shape[1:]), float("nan"), dtype=x.dtype, device=x.device)
            kernels[name](x, weight, bias, y, args)
            err = relative_error(y[:2], ref)
            assert torch.isfinite(y).all() and err <= tolerance(dspec), (name, err)
            outputs[name] = (y, err)
            print(f"{workload} {dtype} {name}: rel err {err:.2e}", flush=True)
        if profiled:
            continue
        y = outputs[shipped[0]][0]
        for v, k in kernels.items():
            ms = median_ms(lambda: k(x, weight, bias, y, args), reps=40)
            rows.append({"workload": workload, "dtype": dtype, "variant": v, "ms": ms,
                         "rel_err": outputs[v][1] if v in outputs else None})
            print(f"{workload} {dtype:8s} {v:36s} {ms:.4f} ms", flush=True)
    if not profiled:
        (out / f"s20_slots_tma_parts_run{run}.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
