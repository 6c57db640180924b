"""Session 10 probe: the tensor-core forward's output tile leaving by bulk copies (sm_90) against
the warps' own stores, same candidates, same process.

    PYTHONPATH=. python3 bench/probes/s10_bulk_stores.py OUT_DIR [--warps-first]

Each global-A candidate of the seed rows is built twice: as the template emits it ("bulk": on
sm_90, one cp.async.bulk per channel of a tile where the output takes whole 16-byte vectors) and
with that branch switched off in the source ("warps": the stores of every earlier version).
Both are checked against float64 torch and timed by try_mma's run_row, next to each other, bulk
first (or, with --warps-first, warps first: a second run in the other order shows drift)."""
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from try_mma import build_entries, header, time_and_write, work_of  # noqa: E402
from conv3d_codegen.build import Target  # noqa: E402
from conv3d_codegen.render import wide_offsets  # noqa: E402
from conv3d_codegen.render_mma import mma_candidates, render_mma  # noqa: E402

BULK_BRANCH = "      if (whole_vectors) {\n        // Each channel's positions of the tile"


def warps_variant(source):
    """The same kernel with the bulk-copy branch (one per epilogue pass) never taken, under its own name."""
    assert BULK_BRANCH in source.body, "the template's bulk branch moved: update the probe"
    body = source.body.replace(BULK_BRANCH, BULK_BRANCH.replace("whole_vectors", "false"))
    return source.edited("warps", body)


def main() -> None:
    out, warps_first = Path(sys.argv[1]), "--warps-first" in sys.argv[2:]
    out.mkdir(parents=True, exist_ok=True)
    target = Target.for_device()
    title = header("Forward tile stores: bulk copies against the warps' stores", target)
    plan = []
    for name in ("seed-b", "seed-a"):
        for dtype in ("bfloat16", "tf32", "float32"):
            work = work_of(name, dtype)
            wide = wide_offsets(work.spec, work.input_shape)
            for tiles in [t for t in mma_candidates(work.spec) if t.a_from == "global"]:
                source = render_mma(work.spec, tiles, wide)
                pair = [(name, dtype, f"{tiles} bulk", source), (name, dtype, f"{tiles} warps", warps_variant(source))]
                plan += pair[::-1] if warps_first else pair
    entries = build_entries(plan, target, Path(tempfile.mkdtemp(prefix="conv3d-s10-bulk-")), no_ptxas=True)
    time_and_write(entries, title, out, "s10_bulk_stores" + ("_warps_first" if warps_first else ""))


if __name__ == "__main__":
    main()
