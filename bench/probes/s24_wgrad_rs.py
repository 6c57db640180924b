"""Session 24 probe: seed-a's wgmma wgrad kernel (bf16) with A in registers (ldmatrix once a row, the outside columns
zeroed there, no zeroing warp), in the tuner's configurations and others, and with its parts switched off one at a
time. Runs s22_wgrad_build's checks and timings (edge shapes against float64, seed-a on 2 samples, median_ms).

    PYTHONPATH=. python3 bench/probes/s24_wgrad_rs.py OUT_DIR [--ncu] [--only NAME,NAME]

Its templates are not the repository's (v24, A from shared memory, is): runs 2-5 were on commit 4607da1's (the window
as KH wgmmas a k16 step, one a ring slot, no mirrored slots; configurations PROBED_KH, without "nomirror": it had no
mirror), run 8 on commit 9c27e31's (v26: the window one wgmma over the mirrored ring, as v24, in pieces of at most
128 columns). Check out the template (and render_wgrad_wgmma.py, common.cuh.j2) of that commit to run it.
s24_wgmma_split.py measured the products alone in each form first (bench/NOTES.md, session 24)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from s21_wgrad_wgmma import VARIANTS  # noqa: E402
from s22_wgrad_build import VARIANTS22, main  # noqa: E402

from conv3d_codegen.render_wgrad_wgmma import WgradWgmmaTiles  # noqa: E402

# diagnostics, each computing a wrong result: no bias product, no block stores, grad_out's rows copied only into the
# first STAGES stages, and the products alone (none of these)
VARIANTS24 = {"nobias": [("      if constexpr (C::BIASED) wgmma(c.bacc", "      if constexpr (false) wgmma(c.bacc")],
              "nobuild": VARIANTS22["nobuild"], "notma": VARIANTS["notma"], "nomirror": VARIANTS22["nomirror"]}
VARIANTS24["product"] = VARIANTS24["nobuild"] + VARIANTS24["notma"] + VARIANTS24["nobias"]
# (stages, ring, raws, tight): v24's tuner's three and a ring of KH + 2 (run 8); runs 2-5 had more stages or slots,
# which fitted with no slot mirrored
PROBED = [(4, 3, 8, True), (8, 1, 8, True), (4, 1, 8, False), (6, 2, 8, True)]
PROBED_KH = [(4, 3, 8, True), (8, 1, 8, True), (4, 1, 8, False), (8, 3, 8, True), (6, 4, 8, True), (8, 2, 8, True)]
DIAGNOSED = (4, 3, 8, True)
# the edge shapes with the template's default tiles, and with 4 stages of full K blocks
EDGE_TILES = {"": None, "-full": WgradWgmmaTiles(4, 1, 8, False)}

if __name__ == "__main__":
    main(PROBED, DIAGNOSED, VARIANTS24, "s24_wgrad_rs.json", EDGE_TILES)
