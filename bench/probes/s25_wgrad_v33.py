"""Session 25 probe: v33, seed-a's wgmma wgrad kernel (bf16) with the builders' input rows asked for by warp 8 (the
grad_out producer) instead of thread 0 of the builders, against v29's kernel rendered from its template (--old PATH, as
s25_wgrad_prep) in one process, in the tuner's configurations and two more. Runs s22_wgrad_build's checks and timings.
(Run 8 timed v34, v33 with the zeroing warp waiting for each row's BUILT before READY; its template is
.scratch-only, described in bench/NOTES.md.)

    PYTHONPATH=. python3 bench/probes/s25_wgrad_v33.py OUT_DIR --old PATH"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from s22_wgrad_build import main  # noqa: E402
from s25_wgrad_prep import v29  # noqa: E402

PROBED = [(4, 3, 8, True), (8, 1, 8, True), (4, 1, 8, False), (6, 2, 8, True), (4, 3, 6, True)]
DIAGNOSED = (4, 3, 8, True)
EDGE_TILES = {"": None}

if __name__ == "__main__":
    main(PROBED, DIAGNOSED, {}, "s25_wgrad_v33.json", EDGE_TILES, v29)
