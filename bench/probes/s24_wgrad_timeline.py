"""Session 24 probe: a timeline of block 0 of seed-a's wgmma wgrad kernel (bf16, A in registers), from clock64() stamps
inserted into its source (a diagnostic build), whole and with its products alone (s24_wgrad_rs's "product").

    PYTHONPATH=. python3 bench/probes/s24_wgrad_timeline.py OUT_DIR

Its edits apply to commit 4607da1's template (A in registers, KH wgmmas a k16 step, the next row prepared during the
products; run 6 of bench/NOTES.md, session 24), not to the repository's (v24): check that commit's template,
render_wgrad_wgmma.py and common.cuh.j2 out to run it.

Stamps, per grad_out row i of block 0 (the first 512) and multiplying warpgroup (its thread 0): the row's start (before
wgmma.fence), its products issued (after the commit), the next row prepared (FULL, ldmatrix, masks), its products done
(after the wait), the next row's BUILT waited for. Prints the medians of the intervals (cycles of the SM's clock)."""
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from conv3d_codegen.build import Target  # noqa: E402
from conv3d_codegen.cache import KernelCache  # noqa: E402
from conv3d_codegen.dispatch import Dispatcher  # noqa: E402
from conv3d_codegen.kernel import launch_args  # noqa: E402
from conv3d_codegen.measure import random_inputs  # noqa: E402
from conv3d_codegen.render_wgrad_wgmma import WgradWgmmaTiles, render_wgrad_wgmma  # noqa: E402
from s21_wgrad_wgmma import SEED_A, edit  # noqa: E402
from s22_wgrad_timeline import STAMP_SETUP  # noqa: E402
from s24_wgrad_rs import VARIANTS24  # noqa: E402

N = 512
STAMPS = ["start", "issued", "prepared", "done", "built"]
EDITS = STAMP_SETUP + [
    ("    wg_fence();\n#pragma unroll\n    for (int ks = 0; ks < 4; ++ks) {",
     "    TL(WG * 5, i, tw == 0);\n    wg_fence();\n#pragma unroll\n    for (int ks = 0; ks < 4; ++ks) {"),
    ("    wg_commit();\n    RowPlace next = row;",
     "    wg_commit();\n    TL(WG * 5 + 1, i, tw == 0);\n    RowPlace next = row;"),
    ("      prepare(next, an, bn);\n    }\n",
     "      prepare(next, an, bn);\n      TL(WG * 5 + 2, i, tw == 0);\n    }\n"),
    ("    wg_wait<0>();\n    if (lane == 0) {\n      mbar_arrive(empty",
     "    wg_wait<0>();\n    TL(WG * 5 + 3, i, tw == 0);\n    if (lane == 0) {\n      mbar_arrive(empty"),
    ("      wait_built(row);\n    }\n  }\n", "      wait_built(row);\n      TL(WG * 5 + 4, i, tw == 0);\n    }\n  }\n"),
]


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    tiles = WgradWgmmaTiles(4, 3, 8, True)
    spec, shape = SEED_A.spec, SEED_A.input_shape
    seed = render_wgrad_wgmma(spec, tiles, size=shape[2:])
    sources = []
    for label, extra in (("timeline", []), ("timeline_product", VARIANTS24["product"])):
        body = seed.body
        for old, new in EDITS + extra:
            body = edit(body, old, new)
        sources.append(seed.edited(label, body))
    kernels = Dispatcher(KernelCache(out / "cache")).loader.load_many(sources, Target.for_device())
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    torch.manual_seed(24)
    x, weight, bias = random_inputs(spec, shape)
    grad_out = torch.randn((shape[0], spec.out_channels, *spec.output_size(*shape[2:])), dtype=x.dtype, device="cuda")
    stride = weight.numel() + spec.out_channels
    for source, kernel in zip(sources, kernels):
        if isinstance(kernel, Exception):
            raise kernel
        workspace = torch.zeros(sms * stride + 2 * 2 * len(STAMPS) * N, device="cuda")
        gw, gb = torch.empty_like(weight), torch.empty_like(bias)
        args = launch_args(spec, x.shape) | {"splits": sms, "workspace": workspace.data_ptr()}
        for _ in range(3):
            kernel(x, grad_out, gb, gw, args)
        torch.cuda.synchronize()
        stamps = workspace[sms * stride:].view(torch.int64).view(2, len(STAMPS), N).cpu().tolist()
        rows = sum(1 for v in stamps[0][1] if v)
        print(f"{source.name[-20:]} {tiles}: block 0, {rows} rows, "
              f"{stamps[0][3][rows - 1] - stamps[0][0][0]} cycles from warpgroup 0's first row to its last")
        for g in range(2):
            t = dict(zip(STAMPS, stamps[g]))
            iv = {"issue (start -> issued)": [t["issued"][i] - t["start"][i] for i in range(rows)],
                  "prepare (issued -> prepared)": [t["prepared"][i] - t["issued"][i] for i in range(rows - 1)],
                  "products (issued -> done)": [t["done"][i] - t["issued"][i] for i in range(rows)],
                  "hand-back + BUILT (done -> built)": [t["built"][i] - t["done"][i] for i in range(rows - 1)],
                  "gap (done -> next start)": [t["start"][i + 1] - t["done"][i] for i in range(rows - 1)],
                  "period (start -> next start)": [t["start"][i + 1] - t["start"][i] for i in range(rows - 1)]}
            if g == 1:
                iv["wg1 start - wg0 start"] = [stamps[1][0][i] - stamps[0][0][i] for i in range(rows)]
            for name, xs in iv.items():
                xs = sorted(xs)
                print(f"  wg{g} {name:36s} median {med(xs):7.0f}  p10 {xs[len(xs) // 10]:7.0f}  "
                      f"p90 {xs[9 * len(xs) // 10]:7.0f}")


if __name__ == "__main__":
    main()
