"""Session 22 probe: a timeline of block 0 of seed-a's wgmma wgrad kernel (bf16), from clock64() stamps the probe
inserts into its source (a diagnostic build; the kernel is otherwise the template's).

    PYTHONPATH=. python3 bench/probes/s22_wgrad_timeline.py OUT_DIR [stages ring raws tight]

Stamps, per grad_out row i of block 0 (the first 512) and per input row k the builders build:
- each multiplying warpgroup: its row's waits done (READY, BUILT), its products issued, its products done;
- the builders (thread 0): the input row's copy landed (RAW), its slot free (FREE), its blocks built (BUILT);
- the producer: grad_out row i asked for, landed (FULL), handed over (READY).
Prints the medians of the intervals (cycles of the SM's clock) and writes the stamps to OUT_DIR/timeline.json."""
import json
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
from conv3d_codegen.measure import median_ms, random_inputs  # noqa: E402
from conv3d_codegen.render_wgrad_wgmma import WgradWgmmaTiles, render_wgrad_wgmma  # noqa: E402
from s21_wgrad_wgmma import SEED_A, edit  # noqa: E402

N = 512
SLOTS = ["wg0 ready", "wg0 issued", "wg0 done", "wg1 ready", "wg1 issued", "wg1 done", "raw", "free", "built",
         "asked", "handed", "full"]
STAMP = ("#define TL(slot, i, cond) do { if (blockIdx.x == 0 && (cond) && (i) < 512) "
         "g_tl[(slot) * 512 + (i)] = clock64(); } while (0)\n")
# the stamps' buffer: after the workspace's partial sums (the probe allocates room for it)
STAMP_SETUP = [
    ("using index_t = long long;\n", "using index_t = long long;\n__device__ long long* g_tl;\n" + STAMP),
    ("  float* part = partial + static_cast<index_t>(blockIdx.x) * (WEIGHTS + (BIAS ? CO : 0));\n",
     "  float* part = partial + static_cast<index_t>(blockIdx.x) * (WEIGHTS + (BIAS ? CO : 0));\n"
     "  g_tl = reinterpret_cast<long long*>(partial + static_cast<index_t>(gridDim.x) * (WEIGHTS + (BIAS ? CO : 0)));\n"),
]
EDITS = STAMP_SETUP + [
    ("  for (int i = 0; i < rows; ++i) {\n    const uint32_t a = stages + row.s * STAGE,",
     "  for (int i = 0; i < rows; ++i) {\n    TL(WG * 3, i, tw == 0);\n    const uint32_t a = stages + row.s * STAGE,"),
    ("    wg_commit();\n    wg_wait<0>();", "    wg_commit();\n    TL(WG * 3 + 1, i, tw == 0);\n    wg_wait<0>();\n"
     "    TL(WG * 3 + 2, i, tw == 0);"),
    ("    mbar_wait(raw_full + 8 * q, (k / RAWS) & 1);\n", "    mbar_wait(raw_full + 8 * q, (k / RAWS) & 1);\n"
     "    TL(6, k, bt == 0);\n"),
    ("    if (k >= R) mbar_wait(freed + 8 * slot, (k / R - 1) & 1);\n",
     "    if (k >= R) mbar_wait(freed + 8 * slot, (k / R - 1) & 1);\n    TL(7, k, bt == 0);\n"),
    ("      mbar_arrive(built + 8 * slot);\n", "      mbar_arrive(built + 8 * slot);\n      TL(8, k, bt == 0);\n"),
    ("    copy_box(stages + s * STAGE, map, at.oh * WO / 8 * 8, at.od, at.n, full + 8 * s);\n",
     "    copy_box(stages + s * STAGE, map, at.oh * WO / 8 * 8, at.od, at.n, full + 8 * s);\n    TL(9, i, true);\n"),
    ("    if (lane == 0) mbar_arrive(ready + 8 * s);\n", "    if (lane == 0) mbar_arrive(ready + 8 * s);\n"
     "    TL(10, i, lane == 0);\n"),
    ("    mbar_wait(full + 8 * s, (i / STAGES) & 1);\n", "    mbar_wait(full + 8 * s, (i / STAGES) & 1);\n"
     "    TL(11, i, lane == 0);\n"),
]


def med(xs):
    return statistics.median(xs) if xs else float("nan")


class StampedRun:
    """Seed-a's kernel in `tiles` with `edits` applied to its source (stamps into the workspace past the partial sums:
    `slots` rows of `n`), built into out/cache and run on fresh inputs (seed `seed`); `stamps()` runs it 3 times and
    returns the stamps, `time_ms()` its median_ms. An edit whose text the source lacks is skipped where `optional(old)`
    says so (printed), an error otherwise."""

    def __init__(self, out: Path, tiles, edits, slots: int, n: int, seed: int, optional=lambda old: False):
        spec, shape = SEED_A.spec, SEED_A.input_shape
        source = render_wgrad_wgmma(spec, tiles, size=shape[2:])
        body = source.body
        for old, new in edits:
            if old not in body and optional(old):
                print(f"(no stamp: the template has no {old.strip().splitlines()[0]!r})")
                continue
            body = edit(body, old, new)
        self.kernel = Dispatcher(KernelCache(out / "cache")).loader.load_many([source.edited("timeline", body)],
                                                                            Target.for_device())[0]
        if isinstance(self.kernel, Exception):
            raise self.kernel
        sms = torch.cuda.get_device_properties(0).multi_processor_count
        torch.manual_seed(seed)
        self.x, weight, bias = random_inputs(spec, shape)
        self.grad_out = torch.randn((shape[0], spec.out_channels, *spec.output_size(*shape[2:])), dtype=self.x.dtype,
                                    device="cuda")
        self.at = sms * (weight.numel() + spec.out_channels)
        self.slots, self.n = slots, n
        self.workspace = torch.zeros(self.at + 2 * slots * n, device="cuda")
        self.gw, self.gb = torch.empty_like(weight), torch.empty_like(bias)
        self.args = launch_args(spec, self.x.shape) | {"splits": sms, "workspace": self.workspace.data_ptr()}

    def run(self) -> None:
        self.kernel(self.x, self.grad_out, self.gb, self.gw, self.args)

    def stamps(self) -> list[list[int]]:
        for _ in range(3):
            self.run()
        torch.cuda.synchronize()
        return self.workspace[self.at:].view(torch.int64).view(self.slots, self.n).cpu().tolist()

    def time_ms(self) -> float:
        return median_ms(self.run, reps=50)


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    config = [int(a) for a in sys.argv[2:5]] + [sys.argv[5] == "1"] if len(sys.argv) > 5 else [6, 2, 8, True]
    tiles = WgradWgmmaTiles(*config)
    stamps = StampedRun(out, tiles, EDITS, len(SLOTS), N, 22).stamps()
    t = {name: [v for v in row] for name, row in zip(SLOTS, stamps)}
    rows = sum(1 for v in t["wg0 issued"] if v)
    seqs = sum(1 for v in t["built"] if v)
    t0 = min(v for row in stamps for v in row if v)
    (out / "timeline.json").write_text(json.dumps({"tiles": str(tiles), "rows": rows, "seqs": seqs, "t0": t0,
                                                     "stamps": t}))
    iv = {}
    for g in ("wg0", "wg1"):
        iv[f"{g} exec (issued -> done)"] = [t[f"{g} done"][i] - t[f"{g} issued"][i] for i in range(rows)]
        iv[f"{g} gap (done -> next ready)"] = [t[f"{g} ready"][i + 1] - t[f"{g} done"][i] for i in range(rows - 1)]
        iv[f"{g} issue (ready -> issued)"] = [t[f"{g} issued"][i] - t[f"{g} ready"][i] for i in range(rows)]
        iv[f"{g} period (done -> next done)"] = [t[f"{g} done"][i + 1] - t[f"{g} done"][i] for i in range(rows - 1)]
    iv["wg1 issued - wg0 issued"] = [t["wg1 issued"][i] - t["wg0 issued"][i] for i in range(rows)]
    iv["builder free -> built"] = [t["built"][k] - t["free"][k] for k in range(seqs)]
    iv["builder raw wait (built k-1 -> raw k)"] = [t["raw"][k] - t["built"][k - 1] for k in range(1, seqs)]
    iv["builder free wait (raw -> free)"] = [t["free"][k] - t["raw"][k] for k in range(seqs)]
    iv["producer full -> handed"] = [t["handed"][i] - t["full"][i] for i in range(rows)]
    iv["producer asked -> full"] = [t["full"][i] - t["asked"][i] for i in range(rows)]
    iv["handed -> wg0 ready"] = [t["wg0 ready"][i] - t["handed"][i] for i in range(rows)]
    print(f"{tiles}: block 0, {rows} rows, {seqs} input rows, {t['wg0 done'][rows - 1] - t0} cycles in all")
    for name, xs in iv.items():
        xs = sorted(xs)
        print(f"{name:42s} median {med(xs):8.0f}  p10 {xs[len(xs) // 10]:8.0f}  p90 {xs[9 * len(xs) // 10]:8.0f}")
    print("row  wg0: ready issued done | wg1: ready issued done | handed   (cycles from block 0's first stamp)")
    for i in list(range(0, 8)) + list(range(60, 66)):
        print(f"{i:3d}  " + " ".join(f"{t[s][i] - t0:8d}" for s in SLOTS[:6]) + f" | {t['handed'][i] - t0:8d}")
    print("k   raw free built")
    for k in list(range(0, 12)) + list(range(62, 70)):
        print(f"{k:3d}  " + " ".join(f"{t[s][k] - t0:8d}" for s in ("raw", "free", "built")))


if __name__ == "__main__":
    main()
