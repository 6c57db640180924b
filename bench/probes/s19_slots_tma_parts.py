"""Session 19 probe: the rotating-slots template's float32 dgrads (templates/conv3d_fwd_slots.cu.j2) with their rows
staged by cp.async (as in v19) and by the bulk tensor copy engine with a producer warpgroup (SlotsTiles.tma), timed in
one process on the same tensors: seed-a's tf32 with one stage (all 3 taps in one pass), seed-b's tf32 with 4 planes and
one stage. (Run 2 of this session timed a first tma form, the rows asked for by one consumer thread after the row's
barrier, and seed-b's 3xTF32: results/2026-11-22-h100-s19-run2-probe.json.)

    PYTHONPATH=. python3 bench/probes/s19_slots_tma_parts.py OUT_DIR

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
from conv3d_codegen.render_slots import SlotsTiles, render_slots  # noqa: E402
from conv3d_codegen.workloads import WORKLOADS  # noqa: E402
from s16_slots_parts import edit, never, nostage  # noqa: E402  (session 16's edits of the same template)
from s18_slots_f32_parts import noout  # noqa: E402


def nostage_tma(body):
    body = edit(never(body), "        if (rows > 0) mbar_wait(empty + 8 * k, (rows - 1) & 1);",
                "        if (rows > 0 && !g_never_flag) continue;  // only the first row staged\n"
                "        if (rows > 0) mbar_wait(empty + 8 * k, (rows - 1) & 1);")
    return edit(body, "  for (int j = 0; j < AP; ++j) mbar_wait(full + 8 * (wg * P + j), (hi + par) & 1);",
                "  for (int j = 0; j < AP; ++j)\n    if (g_never_flag) mbar_wait(full + 8 * (wg * P + j), (hi + par) & 1);")


PARTS = {False: {"nostage": [nostage], "product": [nostage, noout]},
         True: {"nostage": [nostage_tma], "product": [nostage_tma, noout]}}
KERNELS = [("seed-a", "tf32", 2), ("seed-b", "tf32", 4)]


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    dispatcher = Dispatcher(KernelCache(Path(tempfile.gettempdir()) / "conv3d-s19-probe-cache"))  # kept out of OUT_DIR
    rows = []
    for workload, dtype, planes in KERNELS:
        seed = WORKLOADS[workload]
        fwd = seed.spec.model_copy(update={"dtype": "float32", "precision": "tf32" if dtype == "tf32" else "ieee"})
        dspec, _ = dgrad_spec(fwd)
        gy_shape = (seed.input_shape[0], dspec.in_channels, *fwd.output_size(*seed.input_shape[2:]))
        sources, shipped = {}, []
        for tma in (False, True):
            tiles = SlotsTiles(planes, 1, tma)
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
        same = torch.equal(*(outputs[n][0] for n in shipped))
        print(f"{workload} {dtype}: cp.async and tma outputs bitwise equal: {same}", flush=True)
        y = outputs[shipped[0]][0]
        for v, k in kernels.items():
            ms = median_ms(lambda: k(x, weight, bias, y, args), reps=40)
            rows.append({"workload": workload, "dtype": dtype, "variant": v, "ms": ms,
                         "rel_err": outputs[v][1] if v in outputs else None, "bitwise_equal": same})
            print(f"{workload} {dtype:8s} {v:36s} {ms:.4f} ms", flush=True)
    (out / "s19_slots_tma_parts.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
