"""The row-product template: what it serves and on which inputs, its geometry, the autotuner's
filter, the kernels built for one input size, and nvcc compiling every candidate of seed-b (for
any size and for seed-b's) and a few edge specs alone for sm_90 and sm_80 without spills beyond
what SPILL_BYTES allows (no GPU, no torch headers)."""
import pytest

from conv3d_codegen.autotune import Tuner, candidates, render_tiles
from conv3d_codegen.build import kernel_key
from conv3d_codegen.render_rows import (BANKS, SPILL_BYTES, RowsTiles, geometry, render_rows, rows_candidates,
                                        rows_shape_problem, supports_rows)
from conv3d_codegen.spec import ConvSpec
from conv3d_codegen.workloads import WORKLOADS

from .cubins import SM80, SM90, compile_all

SEED_B = WORKLOADS["seed-b"].spec.model_copy(update={"dtype": "bfloat16"})


@pytest.mark.parametrize("text, reason", [
    ("3x3x3 --cin 3 --cout 64 --dtype bfloat16", None),
    ("3x3x3 --cin 3 --cout 64 --dtype float16 --padding 1x1x0", None),
    ("2x4x3 --cin 4 --cout 128 --dtype bfloat16", None),                        # 32 input rows, 8 k16 steps
    ("3x3x3 --cin 3 --cout 64", "dtype float32 with precision 'ieee'"),
    ("3x3x3 --cin 3 --cout 64 --precision tf32", None),                          # K = 81 unpadded: 11 k8 steps
    ("2x4x3 --cin 4 --cout 64 --precision tf32", "K = 96"),                      # over 88 in tf32
    ("3x3x3 --cin 3 --cout 64 --dtype bfloat16 --layout ndhwc", "NCDHW only"),
    ("3x3x3 --cin 4 --cout 64 --groups 2 --dtype bfloat16", "groups=2"),
    ("3x3x3 --cin 3 --cout 64 --dtype bfloat16 --stride 2", "stride 1 and dilation 1"),
    ("3x3x3 --cin 3 --cout 64 --dtype bfloat16 --padding 1", "no padding along w"),
    ("3x5x7 --cin 3 --cout 64 --dtype bfloat16", "kw=7"),
    ("3x3x3 --cin 3 --cout 48 --dtype bfloat16", "out_channels=48"),
    ("3x3x3 --cin 3 --cout 256 --dtype bfloat16", "out_channels=256"),
    ("3x3x3 --cin 4 --cout 64 --dtype bfloat16", "36 input rows"),
])
def test_supports_rows_gives_the_reason(text, reason):
    found = supports_rows(ConvSpec.from_text(text))
    assert found is None if reason is None else reason in found


@pytest.mark.parametrize("shape, reason", [
    ((16, 3, 64, 64, 64), None),
    ((1, 3, 10, 10, 16), None),
    ((1, 3, 18, 11, 20), "input width 20"),       # not a multiple of 8
    ((1, 3, 18, 11, 72), "input width 72"),       # wider than a staged row
    ((1, 3, 9, 9, 16), "output 7x7x14"),          # 686 positions, not a multiple of 8
])
def test_rows_shape_problem_names_the_input_it_refuses(shape, reason):
    found = rows_shape_problem(SEED_B, shape)
    assert found is None if reason is None else reason in found


def test_the_autotuner_drops_row_tiles_on_inputs_they_do_not_take():
    tiles = rows_candidates(SEED_B)[0]
    assert tiles in candidates(SEED_B)
    assert Tuner.candidate_problem(SEED_B, tiles, (2, 3, 64, 64, 64)) is None
    assert "input width 20" in Tuner.candidate_problem(SEED_B, tiles, (2, 3, 64, 64, 20))


def test_tiles_are_checked_against_the_spec():
    assert "even number of rows" in RowsTiles(r=5, rw=1, blocks_per_sm=1).problem(SEED_B)
    assert "do not fit an SM" in RowsTiles(r=8, rw=1, blocks_per_sm=3).problem(SEED_B)
    with pytest.raises(ValueError, match="does not serve this spec: kw=7"):
        render_rows(WORKLOADS["seed-a"].spec.model_copy(update={"dtype": "bfloat16"}))


def test_the_geometry_of_seed_b():
    g = geometry(SEED_B, RowsTiles(r=4, rw=1, blocks_per_sm=3))
    assert g.steps == 7 and g.threads == 128                     # 27 input rows x 4 taps -> 112 of K
    assert g.in_bytes == (6 * 9 + 1) * 2 * 160                   # rows of 6 ih x 9 (ci, kd), one zero row
    assert g.out_pitch % 16 == 0 and g.out_pitch // 4 % BANKS in (12, 28) and g.out_pitch >= 2 * (4 * 64 + 8)
    assert 3 * (g.shared_bytes + 1024) <= 228 * 1024


def test_tf32_geometry_of_seed_b():
    spec = SEED_B.model_copy(update={"dtype": "float32", "precision": "tf32"})
    tiles = rows_candidates(spec)[0]
    g = geometry(spec, tiles)
    assert g.steps == 11 and g.max_steps == 11                   # 27 rows x 3 taps = 81 -> 88 of K
    assert g.in_bytes == ((tiles.r + 2) * 9 + 30 - 27) * 304     # K reaches rows 0..29: three zero rows
    assert g.out_pitch // 4 % BANKS in (8, 24) and g.out_pitch >= 4 * (tiles.r * 64 + 4)
    source = render_rows(spec, tiles)
    assert "m16n8k8.row.col.f32.tf32.tf32.f32" in source.body and "K = 88 (11 k8 tf32 steps" in source.params["product"]
    assert rows_shape_problem(spec, (1, 3, 8, 8, 12)) is None    # a multiple of 4 elements (16 bytes) in float32
    assert "multiple of 4" in rows_shape_problem(spec, (1, 3, 8, 8, 14))


def test_names_params_and_keys():
    a, b = rows_candidates(SEED_B)[:2]
    source = render_tiles(SEED_B, a)
    assert source.name == f"conv3d_fwd_rows_{SEED_B.tag}" and source.params["tiles"] == str(a)
    assert "K = 112 (7 k16 steps" in source.params["product"]
    assert render_rows(SEED_B, a, wide=True).body == source.body  # its offsets are 64-bit throughout
    assert kernel_key(source, SM90) != kernel_key(render_rows(SEED_B, b), SM90)
    assert str(RowsTiles(6, 2, 2, bulk=True)) == "rows r=6 rw=2 blocks_per_sm=2 bulk"


def test_a_kernel_for_one_input_size():
    tiles = rows_candidates(SEED_B)[0]
    sized = render_tiles(SEED_B, tiles, size=(64, 64, 64))
    assert sized.name == f"conv3d_fwd_rows_{SEED_B.tag}_64x64x64" and sized.params["input size"] == "64x64x64 only"
    assert "size=64x64x64" in sized.identity
    assert "d = 64; h = 64; w = 64; od = 62; oh = 62; ow = 62;" in sized.body
    assert "if (d != 64 || h != 64 || w != 64)" in sized.body  # the launcher refuses other sizes
    other = render_tiles(SEED_B, tiles, size=(64, 64, 56))
    assert kernel_key(sized, SM90) != kernel_key(other, SM90) != kernel_key(render_tiles(SEED_B, tiles), SM90)
    assert render_tiles(SEED_B, tiles).params["input size"] == "any (run-time sizes)"


def test_only_bulk_tiles_start_bulk_copies_and_only_on_sm90():
    bulk, plain = render_rows(SEED_B, RowsTiles(6, 2, 2, bulk=True)), render_rows(SEED_B, RowsTiles(4, 1, 3))
    assert "bulk_store(" in bulk.body and "#if __CUDA_ARCH__ >= 900" in bulk.body
    assert "bulk_store" not in plain.body


EDGE = [
    "3x3x3 --cin 3 --cout 64 --dtype float16 --padding 1x1x0 --no-bias",
    "1x1x1 --cin 3 --cout 64 --precision tf32",
    "3x1x3 --cin 2 --cout 128 --precision tf32 --padding 1x0x0",
    "1x1x1 --cin 3 --cout 64 --dtype bfloat16",
    "2x4x3 --cin 4 --cout 64 --dtype bfloat16",
    "3x3x3 --cin 1 --cout 32 --dtype bfloat16",
    "3x3x3 --cin 2 --cout 128 --dtype bfloat16",
]


def _sources():
    seeds = (SEED_B, SEED_B.model_copy(update={"dtype": "float16"}),
             SEED_B.model_copy(update={"dtype": "float32", "precision": "tf32"}))
    workload = [render_rows(spec, t, size=size) for spec in seeds for t in rows_candidates(spec) for size in (None, (64, 64, 64))]
    edge = [render_rows(ConvSpec.from_text(t)) for t in EDGE]
    tf32 = workload[-2 * len(rows_candidates(seeds[-1])):][:2]
    return [(s, SM90) for s in workload + edge] + [(s, SM80) for s in workload[:2] + tf32 + edge]


@pytest.fixture(scope="module")
def reports():
    return compile_all(_sources())


@pytest.mark.slow
def test_every_variant_compiles_for_sm90_and_sm80_without_spills(reports):
    tf32 = SEED_B.model_copy(update={"dtype": "float32", "precision": "tf32"})
    assert len(reports) == 4 * len(rows_candidates(SEED_B)) + 2 * len(rows_candidates(tf32)) + 2 * len(EDGE) + 4
    for source, target, report in reports:
        where = (source.name, source.params["tiles"], target.arch, report)
        allowed = next((b for t, b in SPILL_BYTES.items() if str(t) == source.params["tiles"]), 0)
        assert report.registers > 0, where
        assert max(report.spill_store_bytes, report.spill_load_bytes, report.stack_bytes) <= allowed, where
