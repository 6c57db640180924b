"""Session 12 probe 2: does the tensor-core template gain what the row template gained from
compile-time sizes (bench/probes/s12_rows_parts.py: 0.320 -> 0.288 ms on seed-b bf16)?

    PYTHONPATH=. python3 bench/probes/s12_mma_const.py OUT_DIR

Every mma_candidates() tile choice of seed-b tf32, seed-a bf16 and seed-a tf32, built as it ships
and with the input's spatial sizes and the tiles per sample fixed at the row's (the batch, the tile
count and the divisors stay run-time values), checked against float64 torch and timed beside torch
(try_mma's run_row: CUDA events, median, L2 flushed). A diagnostic, not a kernel of the package."""
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from try_mma import build_entries, header, time_and_write, work_of  # noqa: E402
from conv3d_codegen.build import Target  # noqa: E402
from conv3d_codegen.render import wide_offsets  # noqa: E402
from conv3d_codegen.render_mma import mma_candidates, render_mma  # noqa: E402

ROWS = [("seed-b", "tf32"), ("seed-a", "bfloat16"), ("seed-a", "tf32")]
SIGNATURE = "int n, int d, int h, int w, int od, int oh, int ow, index_t tiles_per_n, index_t tiles,\n    Divisor by_ow, Divisor by_oh) {\n"


def fixed_sizes(body: str, shape: tuple, out: tuple, tiles_per_n: int) -> str:
    assert body.count(SIGNATURE) == 1
    (d, h, w), (od, oh, ow) = shape[2:], out
    fixed = f"  d = {d}; h = {h}; w = {w}; od = {od}; oh = {oh}; ow = {ow}; tiles_per_n = {tiles_per_n};\n"
    return body.replace(SIGNATURE, SIGNATURE + fixed)


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    target = Target.for_device()
    plan = []
    for name, dtype in ROWS:
        work = work_of(name, dtype)
        spec, shape = work.spec, work.input_shape
        osize = spec.output_size(*shape[2:])
        for tiles in mma_candidates(spec):
            src = render_mma(spec, tiles, wide_offsets(spec, shape))
            if tiles.a_from == "shared":  # tiles of TL lines x TW positions (the launcher's count)
                lines = tiles.block_m // tiles.tile_w
                per_n = -(-(osize[0] * osize[1]) // lines) * -(-osize[2] // tiles.tile_w)
            else:
                per_n = -(-(osize[0] * osize[1] * osize[2]) // tiles.block_m)
            plan.append((name, dtype, f"{tiles}", src))
            plan.append((name, dtype, f"{tiles} FIXED", src.edited("fixed", fixed_sizes(src.body, shape, osize, per_n))))
    entries = build_entries(plan, target, Path(tempfile.mkdtemp(prefix="conv3d-s12-mma-")), no_ptxas=True)
    time_and_write(entries, header("Tensor-core template with fixed sizes", target), out, "s12_mma_const")


if __name__ == "__main__":
    main()
