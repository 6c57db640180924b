"""Session 25 probe (v31, on commit c181173's template; the template is v29's since): seed-a's wgmma wgrad kernel
(bf16) with the bias gradient summed by warp 8 from the staged grad_out rows (v31), against v24's product of warpgroup
1 with a block of ones ("v24bias": the same template rendered with render_wgrad_wgmma.BIAS_WARP off), in one process.
Runs s22_wgrad_build's checks and timings (edge shapes against float64 with 1, 7 and 132 splits, seed-a on 2 samples,
median_ms).

    PYTHONPATH=. python3 bench/probes/s25_wgrad_bias.py OUT_DIR"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from s22_wgrad_build import main  # noqa: E402
from s25_wgrad_prep import render_with  # noqa: E402

PROBED = [(4, 3, 8, True), (8, 1, 8, True)]
DIAGNOSED = (4, 3, 8, True)
EDGE_TILES = {"": None}
# diagnostics of v31's (4, KH + 3, 8, tight), each computing a wrong result
VARIANTS25 = {
    "nosum": [("    if (BIAS_WARP && i >= STAGES - 1) sum_row(i - STAGES + 1);", "")],
    # run 2: which part of warp 8's sums costs (each a wrong bias): every other row's; one XOR a word where the sums
    # take four instructions; the sums without their loads; the row summed before the EMPTY wait, not after the ask
    "sumhalf": [("    if (BIAS_WARP && i >= STAGES - 1) sum_row(i - STAGES + 1);",
                 "    if (BIAS_WARP && i >= STAGES - 1 && (i & 1)) sum_row(i - STAGES + 1);")],
    "sumlite": [("          s[h][q] += __uint_as_float(v[q] << 16);\n          s[h][q] += __uint_as_float(v[q] & 0xFFFF0000u);",
                 "          s[h][q] = __uint_as_float(__float_as_uint(s[h][q]) ^ v[q]);")],
    "sumnoload": [("        lds128(v, stage + c * ROWB + (((p + lane) & 7) << 4));",
                   "        v[0] = v[1] = v[2] = v[3] = stage + c * ROWB + (((p + lane) & 7) << 4);")],
    "sumbefore": [("    if (i >= STAGES) mbar_wait(empty + 8 * s, (i / STAGES - 1) & 1);\n    if (lane == 0) {",
                   "    if (i >= STAGES) sum_row(i - STAGES);\n"
                   "    if (i >= STAGES) mbar_wait(empty + 8 * s, (i / STAGES - 1) & 1);\n    if (lane == 0) {"),
                  ("    if (BIAS_WARP && i >= STAGES - 1) sum_row(i - STAGES + 1);", ""),
                  ("  for (int j = rows > STAGES - 1 ? rows - STAGES + 1 : 0; j < rows; ++j) sum_row(j);",
                   "  for (int j = rows > STAGES ? rows - STAGES : 0; j < rows; ++j) sum_row(j);")],
    "nomirror": [("          build_piece<0>(block, slot < KH - 1,", "          build_piece<0>(block, false,"),
                 ("          build_piece<1>(block, slot < KH - 1,", "          build_piece<1>(block, false,")],
}


def v24_bias() -> dict:
    """The diagnosed configuration with v24's bias product (warpgroup 1's n8 wgmma with a block of ones)."""
    return render_with("v24bias", BIAS_WARP=False)


if __name__ == "__main__":
    main(PROBED, DIAGNOSED, VARIANTS25, "s25_wgrad_bias.json", EDGE_TILES, v24_bias)
