"""Session 24 probe: seed-a's wgmma wgrad kernel (bf16, v24's template) in configurations beside the tuner's: fewer
copied input rows ahead (raws), a fifth stage where raws make room for it, three stages with a ring of KH + 4. Runs
s22_wgrad_build's checks and timings (edge shapes against float64, seed-a on 2 samples, median_ms).

    PYTHONPATH=. python3 bench/probes/s24_wgrad_configs.py OUT_DIR"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from s22_wgrad_build import main  # noqa: E402

# (stages, ring, raws, tight): the tuner's first, then the others (each fits seed-a's 227 KB)
PROBED = [(4, 3, 8, True), (4, 3, 4, True), (4, 3, 6, True), (5, 3, 3, True), (3, 3, 8, True), (3, 4, 4, True)]
DIAGNOSED = (4, 3, 8, True)
EDGE_TILES = {"": None}

if __name__ == "__main__":
    main(PROBED, DIAGNOSED, {}, "s24_wgrad_configs.json", EDGE_TILES)
