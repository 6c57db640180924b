"""Session 18 probe: where the rotating-slots template's time goes on seed-a's dgrad in tf32 with one stage
(templates/conv3d_fwd_slots.cu.j2, SlotsTiles(2, stages=1): all 3 taps in one pass), beside the same in 3 passes
of two stages and bf16's kernel, timed in one process on the same tensors.

    PYTHONPATH=. python3 bench/probes/s18_slots_f32_parts.py OUT_DIR [--ncu]

Each kernel as it ships (checked: NaN-poisoned output against float64 torch) and variants of its rendered source
(Source.edited, built beside it):
  nostage   nothing staged (the stages keep their zeros)
  noout     completed slots stored and summed into nothing: no output row written (the raw stores and their
            barriers stay)
  product   both: the A loads, the wgmmas, their waits and the barriers
  masked    (tf32) A rounded with the low 13 bits masked, as cvt.rna leaves them: its output must equal the shipped
            kernel's bit for bit, which shows the tensor cores ignore those bits (the template leaves them set)
Every variant computes a wrong result; timing is median_ms (CUDA events, median, L2 flushed). A diagnostic, not a
kernel of the package: its edits match the template's text as of this commit. With --ncu (under Nsight Compute)
only the first kernel (tf32, one stage) runs, once, checked and untimed."""
import json
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


def noout(body):
    return edit(never(body), "  if (!live) return;\n", "  if (!live || !g_never_flag) return;\n")


def masked(body):
    return edit(body, "return isfinite(x) ? b + 0x1000u : b;", "return isfinite(x) ? (b + 0x1000u) & 0xffffe000u : b;")


VARIANTS = {"nostage": [nostage], "noout": [noout], "product": [nostage, noout], "masked": [masked]}
PARTS = ["nostage", "noout", "product"]
KERNELS = [("tf32", SlotsTiles(2, stages=1), PARTS + ["masked"]), ("tf32", SlotsTiles(2), ["nostage", "masked"]),
           ("bfloat16", SlotsTiles(2), PARTS)]


def main() -> None:
    out, profiled = Path(sys.argv[1]), "--ncu" in sys.argv
    out.mkdir(parents=True, exist_ok=True)
    dispatcher = Dispatcher(KernelCache(out / "cache"))
    seed = WORKLOADS["seed-a"]
    rows = []
    for dtype, tiles, variants in KERNELS[:1] if profiled else KERNELS:
        update = {"dtype": "float32", "precision": "tf32"} if dtype == "tf32" else {"dtype": dtype}
        fwd = seed.spec.model_copy(update=update)
        dspec, _ = dgrad_spec(fwd)
        gy_shape = (seed.input_shape[0], dspec.in_channels, *fwd.output_size(*seed.input_shape[2:]))
        base = render_slots(dspec, tiles, size=gy_shape[2:])
        sources = {str(tiles): base}
        for v in [] if profiled else variants:
            body = base.body
            for e in VARIANTS[v]:
                body = e(body)
            sources[f"{tiles} {v}"] = base.edited(v, body)
        kernels = dict(zip(sources, dispatcher.loader.load_many(list(sources.values()), Target.for_device())))
        x, weight, bias = random_inputs(dspec, gy_shape)
        args = launch_args(dspec, gy_shape)
        ref = F.conv3d(x[:2].double(), weight.double(), None, **dspec.functional_args())
        y = torch.full((gy_shape[0], *ref.shape[1:]), float("nan"), dtype=x.dtype, device=x.device)
        kernels[str(tiles)](x, weight, bias, y, args)
        err = relative_error(y[:2], ref)
        assert torch.isfinite(y).all() and err <= tolerance(dspec), (str(tiles), err)
        if profiled:
            print(f"seed-a {dtype} {tiles}: rel err {err:.1e} (profiled, untimed)")
            return
        if "masked" in variants:
            y2 = torch.full_like(y, float("nan"))
            kernels[f"{tiles} masked"](x, weight, bias, y2, args)
            same = torch.equal(y, y2)
            print(f"seed-a {dtype} {tiles}: the masked rounding's output equals the shipped kernel's bit for bit: {same}")
            rows.append({"dtype": dtype, "variant": f"{tiles} masked", "bitwise_equal": same})
        for v, k in kernels.items():
            ms = median_ms(lambda: k(x, weight, bias, y, args), reps=40)
            rows.append({"dtype": dtype, "variant": v, "ms": ms, "rel_err": err if v == str(tiles) else None})
            print(f"seed-a {dtype:8s} {v:28s} {ms:.4f} ms", flush=True)
    (out / "s18_slots_f32_parts.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
