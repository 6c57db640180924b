"""Session 23 probe: seed-a's wgmma wgrad kernel (bf16), its parts switched off one at a time, in the tuner's
configurations and others. Runs s22_wgrad_build's checks and timings (edge shapes against float64, seed-a on 2 samples,
median_ms) on these sources.

    PYTHONPATH=. python3 bench/probes/s23_wgrad_pingpong.py OUT_DIR [--ncu] [--only NAME,NAME]

Its runs (bench/NOTES.md, session 23) were on three templates: runs 1-3 on commit 58e18cd's (the two multiplying
warpgroups taking turns to issue, by named barriers: 1-3% slower than issuing together; warp 9 zeroing by pieces),
runs 4-10 on commit 9731f52's (two rows in flight; B as strips of 72 rows; builders by quads of planes; two builder
groups), whose probe has their variants; run 11 on this one (v24: v23's K blocks, the zeroing by pieces)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from s21_wgrad_wgmma import VARIANTS  # noqa: E402
from s22_wgrad_build import VARIANTS22, main  # noqa: E402

from conv3d_codegen.render_wgrad_wgmma import WgradWgmmaTiles  # noqa: E402

# diagnostics, each computing a wrong result: v23's (no mirror, no bias, no block stores), grad_out's outside columns
# not zeroed, grad_out's rows copied only into the first STAGES stages, and the products alone (none of these)
VARIANTS23 = {"nomirror": VARIANTS22["nomirror"], "nobias": VARIANTS22["nobias"], "nobuild": VARIANTS22["nobuild"],
              "nozero": [("    for (int p = 0; p < 8; ++p) {\n      if (8 * p >= off",
                          "    for (int p = 0; p < 0; ++p) {\n      if (8 * p >= off")],
              "notma": VARIANTS["notma"]}
VARIANTS23["product"] = VARIANTS23["nobuild"] + VARIANTS23["nozero"] + VARIANTS23["notma"] + VARIANTS23["nobias"]
# (stages, ring, raws, tight): the tuner's three, and a ring of KH + 2 with 6 stages
PROBED = [(4, 3, 8, True), (8, 1, 8, True), (4, 1, 8, False), (6, 2, 8, True)]
DIAGNOSED = (4, 3, 8, True)
# the edge shapes with the template's default tiles, and with 4 stages of full K blocks
EDGE_TILES = {"": None, "-full": WgradWgmmaTiles(4, 1, 8, False)}

if __name__ == "__main__":
    main(PROBED, DIAGNOSED, VARIANTS23, "s23_wgrad_pingpong.json", EDGE_TILES)
