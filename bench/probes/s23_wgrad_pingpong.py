"""Session 23 probe: seed-a's wgmma wgrad kernel (bf16), its parts switched off one at a time, and its configurations
with one or two rows in flight per multiplying warpgroup. Runs s22_wgrad_build's checks and timings (edge shapes
against float64, seed-a on 2 samples, median_ms) on these sources.

    PYTHONPATH=. python3 bench/probes/s23_wgrad_pingpong.py OUT_DIR [--ncu] [--only NAME,NAME]

Runs 1-3 (bench/NOTES.md, session 23) also timed the two warpgroups taking turns to issue (named barriers; commit
58e18cd's template): 1-3% slower than issuing together."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from s21_wgrad_wgmma import VARIANTS  # noqa: E402
from s22_wgrad_build import VARIANTS22, main  # noqa: E402

from conv3d_codegen.render_wgrad_wgmma import WgradWgmmaTiles  # noqa: E402

# diagnostics of the strip form (run 6 on): each computes a wrong result
VARIANTS23 = {"nomirror": [("        build_rows(strip + t0 * 16, slot < KH - 1,", "        build_rows(strip + t0 * 16, false,")],
              "nobias": VARIANTS22["nobias"],
              "nobuild": [("      if (valid) {\n        const int p = first", "      if (false) {\n        const int p = first")],
              # one group of builder warps building every input row
              "groups1": [("constexpr int GROUPS = RAWS % 2 == 0 ? 2 : 1;", "constexpr int GROUPS = 1;")],
              # grad_out's outside columns not zeroed; grad_out's rows copied only into the first STAGES stages
              "nozero": [("    for (int p = 0; p < 8; ++p) {\n      if (8 * p >= off",
                          "    for (int p = 0; p < 0; ++p) {\n      if (8 * p >= off")],
              "notma": VARIANTS["notma"]}
VARIANTS23["nobuild_nozero"] = VARIANTS23["nobuild"] + VARIANTS23["nozero"]
# the products alone: no strips built, nothing zeroed, grad_out not copied past the first stages, no bias
VARIANTS23["product"] = VARIANTS23["nobuild_nozero"] + VARIANTS23["notma"] + VARIANTS23["nobias"]
# (stages, ring, raws, inflight) since run 6, the strips (runs 4-5: (stages, ring, raws, tight, inflight), K blocks of
# their own; run 5's best (4, KH + 3, 8, tight, 1) 0.358 ms, two in flight 0.362)
PROBED = [(4, 8, 8, 1), (4, 8, 8, 2), (6, 7, 8, 1), (8, 5, 8, 1), (5, 7, 8, 1), (4, 3, 8, 1), (4, 1, 8, 1)]
DIAGNOSED = (4, 8, 8, 1)
# run 8 on: nomirror, nobias, nobuild, groups1 only
VARIANTS23 = {k: VARIANTS23[k] for k in ("nomirror", "nobias", "nobuild", "groups1", "product")}
# the edge shapes in the first configuration that fits each, and with a ring of KH + 1 and two rows in flight
EDGE_TILES = {"": None, "-r1i2": WgradWgmmaTiles(4, 1, 8, 2)}

if __name__ == "__main__":
    main(PROBED, DIAGNOSED, VARIANTS23, "s23_wgrad_pingpong.json", EDGE_TILES)
