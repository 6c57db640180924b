"""Session 12 probe 3: tile choices of the tensor-core template beyond mma_candidates() for seed-b
tf32, built for seed-b's size as the dispatcher builds them, checked and timed beside torch
(try_mma's run_row), to see whether one clears the forward issue's 5x cuDNN (<= 0.53 ms).

    PYTHONPATH=. python3 bench/probes/s12_mma_tiles.py OUT_DIR

A diagnostic, not a kernel of the package."""
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from try_mma import build_entries, header, time_and_write, work_of  # noqa: E402
from conv3d_codegen.build import Target  # noqa: E402
from conv3d_codegen.render import wide_offsets  # noqa: E402
from conv3d_codegen.render_mma import MmaTiles, mma_candidates, render_mma  # noqa: E402

EXTRA = [MmaTiles(128, 64, 4, 1, 3), MmaTiles(128, 64, 4, 1, 5), MmaTiles(64, 64, 4, 1, 6), MmaTiles(64, 64, 4, 1, 8),
         MmaTiles(64, 64, 2, 1, 8), MmaTiles(64, 64, 2, 1, 12), MmaTiles(192, 64, 4, 1, 3), MmaTiles(96, 64, 2, 1, 6),
         MmaTiles(128, 64, 2, 1, 6), MmaTiles(128, 64, 2, 1, 8), MmaTiles(256, 64, 4, 1, 3)]


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    target = Target.for_device()
    work = work_of("seed-b", "tf32")
    spec, shape = work.spec, work.input_shape
    plan = []
    for tiles in [t for t in mma_candidates(spec) if t.a_from == "global"] + EXTRA:
        if (problem := tiles.problem(spec)) is not None:
            print(f"skipped {tiles}: {problem}", flush=True)
            continue
        plan.append(("seed-b", "tf32", str(tiles), render_mma(spec, tiles, wide_offsets(spec, shape), shape[2:])))
    entries = build_entries(plan, target, Path(tempfile.mkdtemp(prefix="conv3d-s12-tiles-")))
    time_and_write(entries, header("Tensor-core tiles for seed-b tf32, built for its size", target), out, "s12_mma_tiles")


if __name__ == "__main__":
    main()
