"""Session 16 probe: where the rotating-slots template's time goes on seed-a's and seed-b's bf16 dgrad
(templates/conv3d_fwd_slots.cu.j2), and what more output planes a block buy.

    PYTHONPATH=. python3 bench/probes/s16_slots_parts.py OUT_DIR [--ncu]

For each planes (output planes a block) the tuner offers, the template as it ships (checked: NaN-poisoned
output against float64 torch) and variants of its rendered source (Source.edited, built beside each
other), timed in one process on the same tensors:
  nostage   nothing staged (the stages keep their first rows)
Every variant computes a wrong result; timing is median_ms (CUDA events, median, L2 flushed). With --ncu
(under Nsight Compute) only the shipped kernel of planes=2 runs, once a workload, untimed. A diagnostic, not a
kernel of the package: its edits match the template's text as of this commit. Earlier rounds' variants (every
window at list row 0, no write-out, no A loads: results/2026-11-22-h100-s16-slots-parts*.log) matched the
template of commits fc937ea and 21b84cc (v12, v13); git has them."""
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
from conv3d_codegen.measure import median_ms, random_inputs, relative_error  # noqa: E402
from conv3d_codegen.render_grad import dgrad_spec  # noqa: E402
from conv3d_codegen.render_slots import render_slots, slots_candidates  # noqa: E402
from conv3d_codegen.workloads import WORKLOADS  # noqa: E402

NEVER = "__device__ int g_never_flag = 0;\n"
MARKER = "constexpr int CI = "


def edit(body: str, old: str, new: str) -> str:
    assert body.count(old) >= 1, old
    return body.replace(old, new)


def never(body: str) -> str:
    return body if NEVER in body else edit(body, MARKER, NEVER + MARKER)


def nostage(body):
    return edit(never(body), "  const long long first = ((static_cast<long long>(n) * CI + warp)",
                "  if (!g_never_flag) return;\n  const long long first = ((static_cast<long long>(n) * CI + warp)")


VARIANTS = {"nostage": [nostage]}


def main() -> None:
    out, profiled = Path(sys.argv[1]), "--ncu" in sys.argv
    out.mkdir(parents=True, exist_ok=True)
    dispatcher = Dispatcher(KernelCache(out / "cache"))
    rows = []
    for name in ("seed-a", "seed-b"):
        fwd = WORKLOADS[name].spec.model_copy(update={"dtype": "bfloat16"})
        dspec, _ = dgrad_spec(fwd)
        n = WORKLOADS[name].input_shape[0]
        gy_shape = (n, dspec.in_channels, *fwd.output_size(*WORKLOADS[name].input_shape[2:]))
        sources = {}
        for tiles in slots_candidates(dspec):
            base = render_slots(dspec, tiles, size=gy_shape[2:])
            sources[f"planes={tiles.planes}"] = base
            for v, edits in VARIANTS.items():
                if profiled:
                    continue
                body = base.body
                for e in edits:
                    body = e(body)
                sources[f"planes={tiles.planes} {v}"] = base.edited(v, body)
        kernels = dict(zip(sources, dispatcher.loader.load_many(list(sources.values()), Target.for_device())))
        x, weight, bias = random_inputs(dspec, gy_shape)
        args = launch_args(dspec, gy_shape)
        ref = F.conv3d(x[:2].double(), weight.double(), None if bias is None else bias.double(), **dspec.functional_args())
        y = torch.full((n, *ref.shape[1:]), float("nan"), dtype=x.dtype, device=x.device)
        for v, k in kernels.items():
            if " " in v:
                continue  # a variant: its result is wrong
            y.fill_(float("nan"))
            k(x, weight, bias, y, args)
            err = relative_error(y[:2], ref)
            assert torch.isfinite(y).all() and err <= 1e-2, (v, err)
            if profiled:
                break
        for v, k in kernels.items():
            if profiled:
                break
            ms = median_ms(lambda: k(x, weight, bias, y, args), reps=50)
            rows.append({"workload": name, "variant": v, "ms": ms})
            print(f"{name} {v:18s} {ms:.4f} ms", flush=True)
    if not profiled:
        (out / "s16_slots_parts.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
