"""Session 16 probe: where the rotating-slots template's time goes on seed-a's and seed-b's bf16 dgrad
(templates/conv3d_fwd_slots.cu.j2 as of v12: 0.479 and 0.353 ms, and v13, ~3,600 clocks a row on seed-a against
~1,400 for its tensor cores or its counted shared-memory traffic).

    PYTHONPATH=. python3 bench/probes/s16_slots_parts.py OUT_DIR

Variants of the template's rendered source (Source.edited, built beside each other), timed in one
process on the same tensors:
  full      the template as it ships (checked: NaN-poisoned output against float64 torch)
  r0        every row's B window at list row 0: 128-byte-aligned core matrices (the shipped windows
            start SLOT x R x 16 bytes in, 4 of seed-a's 5 and 2 of seed-b's 3 not 128-byte aligned)
  nostage   nothing staged (the stages keep their first rows)
  nowrite   the completed slots neither stored nor zeroed (a flag in global memory that is always 0)
  noa       the next row's A fragments not loaded (the wgmmas reuse the first row's)
  product   nostage + nowrite + noa: the wgmmas, their waits and the row's barrier
  noprefetch  v11's order: a row's A fragments loaded just before its wgmmas (v12 loads them a row ahead)
With --ncu (under Nsight Compute), only the full kernel runs, once a workload, untimed.
Every variant but full computes a wrong result; timing is median_ms (CUDA events, median, L2 flushed).
A diagnostic, not a kernel of the package: its edits match the template's text as of this commit."""
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
from conv3d_codegen.render_slots import render_slots  # noqa: E402
from conv3d_codegen.workloads import WORKLOADS  # noqa: E402

NEVER = "__device__ int g_never_flag = 0;\n"
MARKER = "constexpr int CI = "


def edit(body: str, old: str, new: str) -> str:
    assert body.count(old) >= 1, old
    return body.replace(old, new)


def never(body: str) -> str:
    return body if NEVER in body else edit(body, MARKER, NEVER + MARKER)


def r0(body):
    return edit(body, "const uint32_t b = wl + (kd * KS + c) * 2 * LBO + SLOT * R * 16;",
                "const uint32_t b = wl + (kd * KS + c) * 2 * LBO;")


def nostage(body):
    return edit(body, "  const long long first = ((static_cast<long long>(n) * CI + warp)",
                "  if (!g_never_flag) return;\n  const long long first = ((static_cast<long long>(n) * CI + warp)")


def nostage_never(body):
    return nostage(never(body))


def noprefetch(body):
    """v11's order: the row's A fragments loaded just before its wgmmas, none loaded ahead."""
    body = edit(body, "  constexpr int R = ((-(V + PH)) % KH + KH) % KH;  // this row's window\n  wg_fence();",
                "  constexpr int R = ((-(V + PH)) % KH + KH) % KH;  // this row's window\n"
                "  load_a(a, stages + ((hi + par) & 1) * STAGE, lane, wg, wq);\n  wg_fence();")
    body = edit(body, "  uint32_t an[KD][KS][4];\n  load_a(an, stages + ((hi + 1 + par) & 1) * STAGE, lane, wg, wq);  // past the block's last row: unused\n", "")
    return edit(body, "      for (int i = 0; i < 4; ++i) a[kd][c][i] = an[kd][c][i];", "      for (int i = 0; i < 4; ++i) {}")


def nowrite(body):
    return edit(never(body), "  write_row<S>(acc, raw0 + (h & 1) * RAW", "  if (g_never_flag) write_row<S>(acc, raw0 + (h & 1) * RAW")


def noa(body):
    return edit(never(body), "  load_a(an, stages + ((hi + 1 + par) & 1) * STAGE, lane, wg, wq);",
                "  if (g_never_flag) load_a(an, stages + ((hi + 1 + par) & 1) * STAGE, lane, wg, wq);\n"
                "  else {\n#pragma unroll\n    for (int i = 0; i < KD * KS * 4; ++i) (&an[0][0][0])[i] = (&a[0][0][0])[i];\n  }")


VARIANTS = {"r0": [r0], "nostage": [nostage_never], "nowrite": [nowrite], "noa": [noa],
            "product": [nostage_never, nowrite, noa], "noprefetch": [noprefetch]}


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
        base = render_slots(dspec, size=gy_shape[2:])
        sources = {"full": base}
        for v, edits in VARIANTS.items():
            body = base.body
            for e in edits:
                body = e(body)
            sources[v] = base.edited(v, body)
        kernels = dict(zip(sources, dispatcher.loader.load_many(list(sources.values()), Target.for_device())))
        x, weight, bias = random_inputs(dspec, gy_shape)
        args = launch_args(dspec, gy_shape)
        ref = F.conv3d(x[:2].double(), weight.double(), None if bias is None else bias.double(), **dspec.functional_args())
        y = torch.full((n, *ref.shape[1:]), float("nan"), dtype=x.dtype, device=x.device)
        kernels["full"](x, weight, bias, y, args)
        if profiled:
            continue
        err = relative_error(y[:2], ref)
        assert torch.isfinite(y).all() and err <= 1e-2, err
        for v, k in kernels.items():
            ms = median_ms(lambda: k(x, weight, bias, y, args), reps=50)
            rows.append({"workload": name, "variant": v, "ms": ms, "rel_err": err if v == "full" else None})
            print(f"{name} {v:8s} {ms:.4f} ms" + (f"  (rel err {err:.1e})" if v == "full" else ""), flush=True)
    if not profiled:
        (out / "s16_slots_parts.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
