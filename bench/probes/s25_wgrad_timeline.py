"""Session 25 probe: a timeline of block 0 of seed-a's wgmma wgrad kernel (bf16, v29's template), from clock64()
stamps inserted into its source (a diagnostic build; run 4's stamps loaded a global pointer each, run 5's do not), to
see what a multiplying warpgroup waits for between rows.

    PYTHONPATH=. python3 bench/probes/s25_wgrad_timeline.py OUT_DIR [stages ring raws tight]

Stamps, per grad_out row i of block 0 (its first 512) and multiplying warpgroup (thread 0): before the row's waits
(READY, BUILT), the row's start (after them), its products issued (after the commit), its products done (after the
wait); per input row k: the builders' thread 0 at the loop's top, past RAW_EMPTY of row k - 2 and past its copy of a
row ahead (since run 6), past RAW, past FREE,
with its stores issued (before the fence), each builder warp's BUILT arrival; per grad_out
row: its copy asked for (warp 8), landed (warp 9 past FULL) and handed over (READY arrival). Prints the medians of the
intervals (cycles of the SM's clock), which arrival each row's waits ended on, and writes OUT_DIR/timeline.json; and
the instrumented kernel's median_ms."""
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from conv3d_codegen.render_wgrad_wgmma import WgradWgmmaTiles  # noqa: E402
from s21_wgrad_wgmma import SEED_A  # noqa: E402
from s22_wgrad_timeline import StampedRun  # noqa: E402

N = 512
SLOTS = (["wg0 prewait", "wg0 start", "wg0 issued", "wg0 done", "wg1 prewait", "wg1 start", "wg1 issued", "wg1 done",
          "top", "emptied", "copied", "raw", "free", "stored"] + [f"built w{w}" for w in range(10, 16)]
         + ["asked", "full", "handed"])
S = {name: k for k, name in enumerate(SLOTS)}
# The stamps go to a fixed global array (its address a constant: a stamp is clock64 and a store, no load on the
# stamping thread's path, where session 22's global pointer took a load a stamp), copied to the workspace past the
# partial sums at the kernel's end.
STAMP = (f"__device__ long long g_tl_buf[{len(SLOTS) * N}];\n"
         f"#define TL(slot, i, cond) do {{ if (blockIdx.x == 0 && (cond) && (i) < {N}) "
         f"g_tl_buf[(slot) * {N} + (i)] = clock64(); }} while (0)\n")
EDITS = [
    ("using index_t = long long;\n", "using index_t = long long;\n" + STAMP),
    ("      consume<1>(stages, rings + RING0, ones, ready, empty, built, freed, part, r0, rows, tw, lane);\n  }\n#endif",
     "      consume<1>(stages, rings + RING0, ones, ready, empty, built, freed, part, r0, rows, tw, lane);\n  }\n"
     "  __syncthreads();\n  if (blockIdx.x == 0) {\n    long long* tl = reinterpret_cast<long long*>(partial + "
     "static_cast<index_t>(gridDim.x) * (WEIGHTS + (BIAS ? CO : 0)));\n"
     f"    for (int k = tid; k < {len(SLOTS) * N}; k += THREADS) tl[k] = g_tl_buf[k];\n  }}\n#endif"),
    ("    if (bt == 0 && k >= 2 && !ahead.done()) {\n      const int old",
     f"    TL({S['top']}, k, bt == 0);\n    if (bt == 0 && k >= 2 && !ahead.done()) {{\n      const int old"),
    ("      mbar_wait(raw_empty + 8 * old, ((k - 2) / RAWS) & 1);\n",
     f"      mbar_wait(raw_empty + 8 * old, ((k - 2) / RAWS) & 1);\n      TL({S['emptied']}, k, bt == 0);\n"),
    ("    mbar_wait(raw_full + 8 * q, (k / RAWS) & 1);\n",
     f"    TL({S['copied']}, k, bt == 0);\n    mbar_wait(raw_full + 8 * q, (k / RAWS) & 1);\n"
     f"    TL({S['raw']}, k, bt == 0);\n"),
    ("    fence_proxy_async();  // the blocks, read next by the tensor cores\n",
     f"    TL({S['stored']}, k, bt == 0);\n    fence_proxy_async();  // the blocks, read next by the tensor cores\n"),
    ("  for (int i = 0; i < rows; ++i) {\n    const uint32_t a = stages + row.s * STAGE,",
     "  TL(WG * 4, 0, tw == 0);\n  for (int i = 0; i < rows; ++i) {\n    TL(WG * 4 + 1, i, tw == 0);\n"
     "    const uint32_t a = stages + row.s * STAGE,"),
    ("    wg_commit();\n    wg_wait<0>();", "    wg_commit();\n    TL(WG * 4 + 2, i, tw == 0);\n    wg_wait<0>();\n"
     "    TL(WG * 4 + 3, i, tw == 0);"),
    ("      row = place(i + 1);\n      wait_for(row);", "      row = place(i + 1);\n      TL(WG * 4, i + 1, tw == 0);\n"
     "      wait_for(row);"),
    ("    if (k >= R) mbar_wait(freed + 8 * slot, (k / R - 1) & 1);\n",
     f"    if (k >= R) mbar_wait(freed + 8 * slot, (k / R - 1) & 1);\n    TL({S['free']}, k, bt == 0);\n"),
    ("      mbar_arrive(built + 8 * slot);\n",
     f"      mbar_arrive(built + 8 * slot);\n      TL({S['built w10']} + (bt >> 5), k, true);\n"),
    ("    copy_box(stages + s * STAGE, map, at.oh * WO / 8 * 8, at.od, at.n, full + 8 * s);\n",
     f"    copy_box(stages + s * STAGE, map, at.oh * WO / 8 * 8, at.od, at.n, full + 8 * s);\n    TL({S['asked']}, i, true);\n"),
    ("    mbar_wait(full + 8 * s, (i / STAGES) & 1);\n",
     f"    mbar_wait(full + 8 * s, (i / STAGES) & 1);\n    TL({S['full']}, i, lane == 0);\n"),
    ("    if (lane == 0) mbar_arrive(ready + 8 * s);\n",
     f"    if (lane == 0) mbar_arrive(ready + 8 * s);\n    TL({S['handed']}, i, lane == 0);\n"),
    # v34 on: READY arrived once the row's window is built too
    ("      mbar_arrive(ready + 8 * s);\n    }\n", f"      mbar_arrive(ready + 8 * s);\n      TL({S['handed']}, i, true);\n    }}\n"),
]


def newest_input(i: int, ho: int, kh: int) -> int:
    """The sequence number of grad_out row i's newest input row, for block 0 (rows from (0, 0, 0))."""
    return i + (kh - 1) * (i // ho) + kh - 1


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    config = [int(a) for a in sys.argv[2:5]] + [sys.argv[5] == "1"] if len(sys.argv) > 5 else [4, 3, 8, True]
    tiles = WgradWgmmaTiles(*config)
    spec, shape = SEED_A.spec, SEED_A.input_shape
    # v33 on, the builders ask for no copies; v34 on, the zeroing warp arrives at READY in a block of lane 0's
    run = StampedRun(out, tiles, EDITS, len(SLOTS), N, 25,
                     lambda old: "ahead" in old or "raw_empty + 8 * old" in old or "mbar_arrive(ready" in old)
    print(f"{tiles} with the stamps: {run.time_ms():.4f} ms")
    stamps = run.stamps()
    t = dict(zip(SLOTS, stamps))
    rows = sum(1 for v in t["wg0 issued"] if v)
    t0 = min(v for row in stamps for v in row if v)
    (out / "timeline.json").write_text(json.dumps({"tiles": str(tiles), "rows": rows, "t0": t0, "stamps": t}))
    ho, kh = spec.output_size(*shape[2:])[1], spec.kernel_size[1]
    built = [max(t[f"built w{w}"][k] for w in range(10, 16)) for k in range(N)]
    iv, ended = {}, {}
    for g in ("wg0", "wg1"):
        iv[f"{g} waits (prewait -> start)"] = [t[f"{g} start"][i] - t[f"{g} prewait"][i] for i in range(1, rows)]
        iv[f"{g} issue (start -> issued)"] = [t[f"{g} issued"][i] - t[f"{g} start"][i] for i in range(rows)]
        iv[f"{g} exec (issued -> done)"] = [t[f"{g} done"][i] - t[f"{g} issued"][i] for i in range(rows)]
        iv[f"{g} hand-back (done -> prewait)"] = [t[f"{g} prewait"][i + 1] - t[f"{g} done"][i] for i in range(rows - 1)]
        iv[f"{g} period (start -> start)"] = [t[f"{g} start"][i + 1] - t[f"{g} start"][i] for i in range(rows - 1)]
        # what each row's waits ended on: the later of READY (handed) and its newest input row's BUILT (all 6 warps),
        # if it came after the warpgroup began waiting
        for i in range(1, rows):
            ready, b = t["handed"][i], built[newest_input(i, ho, kh)]
            late = max(ready, b) - t[f"{g} prewait"][i]
            key = "none" if late <= 0 else ("READY" if ready >= b else "BUILT")
            ended.setdefault(g, {}).setdefault(key, []).append(max(late, 0))
    iv["builders raw -> free"] = [t["free"][k] - t["raw"][k] for k in range(rows)]
    iv["builders free -> built (last warp)"] = [built[k] - t["free"][k] for k in range(rows)]
    iv["builders top -> copied (thread 0's copy)"] = [t["copied"][k] - t["top"][k] for k in range(rows)]
    iv["builders top -> emptied (RAW_EMPTY k - 2)"] = [t["emptied"][k] - t["top"][k] for k in range(2, rows)]
    iv["builders copied -> raw"] = [t["raw"][k] - t["copied"][k] for k in range(rows)]
    iv["builders free -> stored (thread 0)"] = [t["stored"][k] - t["free"][k] for k in range(rows)]
    iv["builders stored -> built w10"] = [t["built w10"][k] - t["stored"][k] for k in range(rows)]
    iv["builders built w10 -> next top"] = [t["top"][k + 1] - t["built w10"][k] for k in range(rows - 1)]
    iv["builders built w10 -> built (last warp)"] = [built[k] - t["built w10"][k] for k in range(rows)]
    iv["builders period (built -> built)"] = [built[k + 1] - built[k] for k in range(rows - 1)]
    iv["copy asked -> full"] = [t["full"][i] - t["asked"][i] for i in range(rows)]
    iv["zeroing full -> handed"] = [t["handed"][i] - t["full"][i] for i in range(rows)]
    print(f"{tiles}: block 0, {rows} rows, {t['wg0 done'][rows - 1] - t0} cycles in all")
    for name, xs in iv.items():
        xs = sorted(xs)
        print(f"{name:38s} median {statistics.median(xs):8.0f}  p10 {xs[len(xs) // 10]:8.0f}  "
              f"p90 {xs[9 * len(xs) // 10]:8.0f}  mean {statistics.fmean(xs):8.0f}")
    for g, keys in ended.items():
        print(g, "waits ended on: " + ", ".join(f"{k} {len(v)} rows (mean {statistics.fmean(v):.0f} cycles late)"
                                                 for k, v in sorted(keys.items())))
    print("row  wg0: prewait start issued done | wg1: prewait start issued done | handed built(newest)")
    for i in list(range(1, 8)) + list(range(57, 66)):
        print(f"{i:3d}  " + " ".join(f"{t[s][i] - t0:8d}" for s in SLOTS[:8])
              + f" | {t['handed'][i] - t0:8d} {built[newest_input(i, ho, kh)] - t0:8d}")


if __name__ == "__main__":
    main()
