"""Session 23 probe: seed-a's wgmma wgrad kernel (bf16) with its two multiplying warpgroups taking turns to issue
(named barriers TURN0 and TURN1), against the same kernel with both issuing at once as in v23 ("instep"). Runs
s22_wgrad_build's checks and timings (edge shapes against float64, seed-a on 2 samples, median_ms) on these sources.

    PYTHONPATH=. python3 bench/probes/s23_wgrad_pingpong.py OUT_DIR [--ncu] [--only NAME,NAME]"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from s21_wgrad_wgmma import VARIANTS  # noqa: E402
from s22_wgrad_build import VARIANTS22, main  # noqa: E402

# v23's order: both warpgroups issue a row as soon as its stage and input rows are in (results correct)
INSTEP = [("  if (WG == 1) bar_arrive_named(TURN0, 256);", ""),
          ("    bar_named(WG == 0 ? TURN0 : TURN1, 256);", ""),
          ("    if (WG == 0 || i + 1 < rows) bar_arrive_named(WG == 0 ? TURN1 : TURN0, 256);", "")]
VARIANTS23 = {"instep": INSTEP, "nomirror": VARIANTS22["nomirror"], "nobias": VARIANTS22["nobias"],
              "nobuild": VARIANTS22["nobuild"],
              # grad_out's outside columns not zeroed; grad_out's rows copied only into the first STAGES stages
              "nozero": [("    for (int p = 0; p < 8; ++p) {\n      if (8 * p >= off",
                          "    for (int p = 0; p < 0; ++p) {\n      if (8 * p >= off")],
              "notma": VARIANTS["notma"]}
VARIANTS23["nobuild_nozero"] = VARIANTS23["nobuild"] + VARIANTS23["nozero"]
VARIANTS23["instep_nobuild_nozero"] = INSTEP + VARIANTS23["nobuild_nozero"]
# the products alone: no blocks built, nothing zeroed, grad_out not copied past the first stages, no bias
VARIANTS23["product"] = VARIANTS23["nobuild_nozero"] + VARIANTS23["notma"] + VARIANTS23["nobias"]
VARIANTS23["instep_product"] = INSTEP + VARIANTS23["product"]
# (stages, ring, raws, tight): v23's three, and a ring of KH + 2 (the builders a row further ahead)
PROBED = [(8, 1, 8, True), (6, 1, 8, True), (4, 1, 8, False), (6, 2, 8, True)]

if __name__ == "__main__":
    main(PROBED, (8, 1, 8, True), VARIANTS23, "s23_wgrad_pingpong.json")
