"""Session 24 probe: seed-a's wgmma wgrad kernel (bf16), v27: v24 with the ring's mirrored slots copied by the bulk
copy engine (shared memory to shared memory) where the builders stored them twice, in the tuner's configurations and
others, and with its parts switched off one at a time. Runs s22_wgrad_build's checks and timings (edge shapes against
float64, seed-a on 2 samples, median_ms) on these sources.

    PYTHONPATH=. python3 bench/probes/s24_wgrad_mirror.py OUT_DIR [--ncu] [--only NAME,NAME]

Its template is commit f2472c1's (runs 9-10 of bench/NOTES.md, session 24), not the repository's (v24): check that
commit's template and render_wgrad_wgmma.py out to run it."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from s23_wgrad_pingpong import EDGE_TILES, PROBED, VARIANTS23  # noqa: E402
from s22_wgrad_build import main  # noqa: E402

# diagnostics, each computing a wrong result: session 23's (no bias product, no block stores, nothing zeroed, grad_out
# copied only into the first stages), no mirror copies (nor waits for them), and the products alone
VARIANTS27 = {k: VARIANTS23[k] for k in ("nobias", "nobuild", "nozero", "notma")}
VARIANTS27["nocopy"] = [
    ("      if (slot < KH - 1 && count_in(", "      if (false && count_in("),
    ("      if (r.w % R + kh >= R) mbar_wait(mirrored", "      if (false) mbar_wait(mirrored"),
    ("      if (j % R < KH - 1) mbar_wait(mirrored", "      if (false) mbar_wait(mirrored")]
VARIANTS27["product"] = VARIANTS23["product"]
DIAGNOSED = (4, 3, 8, True)

if __name__ == "__main__":
    main(PROBED, DIAGNOSED, VARIANTS27, "s24_wgrad_mirror.json", EDGE_TILES)
