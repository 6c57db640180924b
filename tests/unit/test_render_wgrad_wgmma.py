"""The wgmma wgrad template (seed-a's weight gradient in 16-bit types and tf32): what it serves and on
which inputs, where the tuner offers it, the layout of its Hankel blocks and tf32 strips (checked
element by element against the input each product column must read), the splits tf32 needs, and nvcc
compiling it alone for sm_90 (built as sm_90a) without spills or serialized wgmmas, and refusing
sm_80 (no GPU, no torch headers)."""
import math

import pytest

from conv3d_codegen import backward
from conv3d_codegen.build import KernelBuildError, compile_cubin
from conv3d_codegen.render import SHARED_BYTES_PER_BLOCK_SM90
from conv3d_codegen.render_wgrad_mma import WgradMmaTiles
from conv3d_codegen.render_wgrad_wgmma import (CONFIGS, HANKEL_ROWS, TF32_MAX_ROWS, TF32_STRIP_ROWS, WgradWgmmaTiles,
                                               plan, render_wgrad_wgmma, supports_wgrad_wgmma, wgrad_wgmma_candidates,
                                               wgrad_wgmma_shape_problem)
from conv3d_codegen.spec import ConvSpec
from conv3d_codegen.workloads import WORKLOADS

from .cubins import SM80, SM90, compile_all

SEED_A = WORKLOADS["seed-a"].spec.model_copy(update={"dtype": "bfloat16"})
SEED_A_TF32 = WORKLOADS["seed-a"].spec.model_copy(update={"dtype": "float32", "precision": "tf32"})
SHAPE_A = (16, 3, 64, 64, 64)
# the GPU test's edge shapes (tests/gpu/test_wgrad_wgmma.py)
EDGES = [
    (ConvSpec.from_text("3x5x7 --cin 2 --cout 16 --padding 1x2x1 --dtype bfloat16"), (2, 2, 6, 20, 48)),
    (ConvSpec.from_text("3x3x3 --cin 4 --cout 64 --padding 1x1x1 --dtype bfloat16"), (2, 4, 5, 16, 32)),
    (ConvSpec.from_text("2x3x8 --cin 2 --cout 24 --dtype float16 --no-bias"), (3, 2, 5, 10, 64)),
    (ConvSpec.from_text("3x7x7 --cin 2 --cout 32 --padding 1x0x0 --dtype bfloat16"), (2, 2, 5, 14, 64)),
]
TF32_EDGES = [(spec.model_copy(update={"dtype": "float32", "precision": "tf32"}), shape) for spec, shape in EDGES]


@pytest.mark.parametrize("text, reason", [
    ("3x5x7 --cin 3 --cout 64 --dtype bfloat16", None),                  # seed-a
    ("3x3x3 --cin 3 --cout 64 --dtype float16", None),                   # seed-b's shape
    ("3x5x7 --cin 3 --cout 64 --dtype float32", "float32 as tf32 (precision='tf32')"),
    ("3x5x7 --cin 3 --cout 64 --dtype float32 --precision tf32", None),
    ("3x5x9 --cin 3 --cout 64 --dtype bfloat16", "kernel width 9"),
    ("3x5x7 --cin 3 --cout 128 --dtype bfloat16", "out_channels=128"),
    ("3x5x7 --cin 3 --cout 64 --dtype bfloat16 --padding 1x2x3", "padding 3 along w"),
    ("1x5x7 --cin 1 --cout 64 --dtype bfloat16", "at least 2 input planes"),
    ("3x5x7 --cin 8 --cout 64 --dtype bfloat16", "columns a warpgroup"),
    ("3x5x7 --cin 3 --cout 64 --dtype bfloat16 --stride 2", "stride 1 and dilation 1"),
    ("3x5x7 --cin 3 --cout 63 --dtype bfloat16 --groups 3", "groups=3"),
    ("3x5x7 --cin 3 --cout 64 --dtype bfloat16 --layout ndhwc", "NCDHW only"),
])
def test_supports_wgrad_wgmma_gives_the_reason(text, reason):
    found = supports_wgrad_wgmma(ConvSpec.from_text(text))
    assert found is None if reason is None else reason in found, found


@pytest.mark.parametrize("shape, reason", [
    (SHAPE_A, None),                       # 60 x 58 planes, rows starting 0, 4, 8 or 12 bytes into a piece
    ((1, 3, 10, 12, 60), "input width 60"),  # not a multiple of 8
    ((1, 3, 64, 63, 64), "output planes of 59x58"),  # 3422 elements: not a multiple of 16 bytes
    ((1, 3, 10, 12, 69), "input width 69"),
])
def test_shape_problem_names_the_input_it_refuses(shape, reason):
    if reason is None:  # tf32: 16-byte pieces of 4 elements
        assert wgrad_wgmma_shape_problem(SEED_A_TF32, shape) is None
        assert "multiple of 4 in float32" in wgrad_wgmma_shape_problem(SEED_A_TF32, (1, 3, 10, 12, 62))
    found = wgrad_wgmma_shape_problem(SEED_A, shape)
    assert found is None if reason is None else reason in found, found
    # an output row 63 wide (plane a multiple of 8: 8 rows) starts up to 7 elements in: 70 > 64
    wide = ConvSpec.from_text("1x3x2 --cin 2 --cout 8 --dtype bfloat16")
    assert "output width 63" in wgrad_wgmma_shape_problem(wide, (1, 2, 1, 10, 64))


def test_the_tuner_offers_the_wgmma_tiles_on_sm90_for_the_inputs_they_take():
    on_h100 = backward.wgrad_tile_candidates(SEED_A, SHAPE_A, "sm_90")
    assert [t for t in on_h100 if isinstance(t, WgradWgmmaTiles)] == [WgradWgmmaTiles(*c) for c in CONFIGS]
    assert on_h100[:-3] == backward.wgrad_tile_candidates(SEED_A, SHAPE_A, "sm_80")
    assert any(isinstance(t, WgradMmaTiles) for t in on_h100)
    assert not any(isinstance(t, WgradWgmmaTiles) for t in backward.wgrad_tile_candidates(SEED_A, (1, 3, 64, 63, 64), "sm_90"))
    sources = backward.wgrad_sources(SEED_A, SHAPE_A, "sm_90")
    assert [s.template for s in sources[-3:]] == ["conv3d_wgrad_wgmma.cu.j2"] * 3
    assert sources[-1].name.endswith("_64x64x64")


def test_seed_a_plan():
    p = plan(SEED_A, WgradWgmmaTiles(), 58)
    assert (p.np0, p.np1) == (5, 4)           # 9 planes (ci, kd)
    assert p.piece_ns == (8, 160, 200)         # 5 kh x 4 and 5 planes x 8 columns, and the bias's 8
    assert p.off_max == 6  # 58 x oh mod 8: 0, 2, 4, 6
    assert (p.ring, p.raws) == (6, 8)          # KH + 1 input rows a ring, 8 copied ahead
    assert (p.rows_lo, p.hankel_rows) == (1, 13)  # tight: rows 1 .. 13, what starts 0 .. 6 and KW = 7 read
    assert (plan(SEED_A, WgradWgmmaTiles(tight=False), 58).rows_lo,
            plan(SEED_A, WgradWgmmaTiles(tight=False), 58).hankel_rows) == (0, HANKEL_ROWS)  # every start
    assert "constexpr int RLO = 1, HROWS = 13;" in render_wgrad_wgmma(SEED_A, size=SHAPE_A[2:]).body
    assert p.shared_bytes <= SHARED_BYTES_PER_BLOCK_SM90
    assert (p.consumer_registers, p.producer_registers) == (168, 88)  # 2 x 128 x 168 + 2 x 128 x 88 = 65,536


@pytest.mark.parametrize("tight", [False, True])
@pytest.mark.parametrize("spec, shape", [(SEED_A, SHAPE_A)] + EDGES)
def test_every_window_reads_the_input_its_column_needs(spec, shape, tight):  # (16-bit types)
    """Block row r of K block b (r from 0, of HROWS) holds the input at 8 b + j + (r + RLO) - 7 - PW (j < 8): built
    from the three 16-byte pieces kb - 1 .. kb + 1 at element e = r + RLO + 1 - PW on. A row starting off into its
    piece reads, for column kw < KW, the 8 rows from 7 - off - RLO: at K = ow + off it must find the input at
    ow + kw - PW."""
    ow = spec.output_size(*shape[2:])[2]
    _, oh, _ = spec.output_size(*shape[2:])
    kw_, pw = spec.kernel_size[2], spec.pad_before[2]
    p = plan(spec, WgradWgmmaTiles(tight=tight), ow)
    rows, lo = p.hankel_rows, p.rows_lo
    assert rows % 2 == 1  # a warp's stores of 8 K blocks (LBO = 16 x odd) on distinct banks
    assert len({(b * rows) % 8 for b in range(8)}) == 8
    for r in range(rows):
        e = r + lo + 1 - pw
        assert 0 <= e and e // 2 + 4 <= 12  # the words it takes (one more where e is odd) are among the 12 loaded
    offs = {h * ow % 8 for h in range(oh)}
    assert max(offs) == p.off_max
    for off in offs:
        first = 7 - off - lo
        for kw in range(kw_):
            r = first + kw
            assert 0 <= r < rows
            for k in range(off, off + ow):  # K = ow + off
                b, j = divmod(k, 8)
                assert 8 * b + j + (r + lo) - 7 - pw == (k - off) + kw - pw


def test_seed_a_tf32_plan_and_splits():
    p = plan(SEED_A_TF32, WgradWgmmaTiles(4, 3, 8, True), 58)
    assert p.off_max == 2  # 58 x oh mod 4: 0, 2
    assert (p.rows_lo, p.hankel_rows) == (5, 69)  # strip rows 5 .. 73: start 2's first column to K block 15's column 6
    assert p.piece_ns == (8, 160, 200) and p.shared_bytes <= SHARED_BYTES_PER_BLOCK_SM90
    assert plan(SEED_A_TF32, WgradWgmmaTiles(4, 1, 8, False), 58).hankel_rows == TF32_STRIP_ROWS
    assert [str(t) for t in wgrad_wgmma_candidates(SEED_A_TF32)] == ["wgmma stages=4 ring=kh+3 raws=8 tight",
                                                                      "wgmma stages=4 ring=kh+1 raws=8"]
    src = render_wgrad_wgmma(SEED_A_TF32, size=SHAPE_A[2:])  # the default tiles: the first that fits
    assert "m64n200k8.f32.tf32.tf32" in src.body and "CU_TENSOR_MAP_DATA_TYPE_FLOAT32" in src.body
    assert f"> {TF32_MAX_ROWS}) return" in src.body  # the launcher refuses too few splits
    t = WgradWgmmaTiles(4, 3, 8, True)
    assert [t.min_splits(SEED_A_TF32, 59520), t.min_splits(SEED_A_TF32, 1024)] == [59, 1]
    assert t.min_splits(SEED_A, 59520) == 1  # 16 bits: any
    assert any(isinstance(c, WgradWgmmaTiles) for c in backward.wgrad_tile_candidates(SEED_A_TF32, SHAPE_A, "sm_90"))


@pytest.mark.parametrize("tight", [False, True])
@pytest.mark.parametrize("spec, shape", [(SEED_A_TF32, SHAPE_A)] + TF32_EDGES)
def test_every_tf32_window_reads_the_input_its_column_needs(spec, shape, tight):
    """Strip row t (stored at t - RLO, of HROWS) holds the input at t - 7 - PW + j (j < 4), raw elements t + 1 - PW
    .. t + 4 - PW of the copied row (80 from w = -8). A row starting off into its piece reads, for K block b (K = 4 b
    + j) and column kw < KW, strip row 4 b + 7 - off + kw (the descriptor's start 7 - off, LBO 4 rows): at K = ow + off
    it must find the input at ow + kw - PW."""
    _, oh, ow = spec.output_size(*shape[2:])
    kw_, pw = spec.kernel_size[2], spec.pad_before[2]
    p = plan(spec, WgradWgmmaTiles(4, 1, 8, tight), ow)
    lo, rows = p.rows_lo, p.hankel_rows
    assert rows % 2 == 1 and lo + 1 - pw >= 0 and lo + rows - 1 + 4 - pw <= 79  # odd; within the copied row
    offs = {h * ow % 4 for h in range(oh)}
    assert max(offs) == p.off_max
    for off in offs:
        for kw in range(kw_):
            for k in range(off, off + ow):
                b, j = divmod(k, 4)
                t = 4 * b + 7 - off + kw
                assert lo <= t < lo + rows
                assert t - 7 - pw + j == (k - off) + kw - pw


def test_a_render_needs_the_input_size_and_folds_it():
    with pytest.raises(ValueError, match="built for one input size"):
        render_wgrad_wgmma(SEED_A)
    with pytest.raises(ValueError, match="input width 60"):
        render_wgrad_wgmma(SEED_A, size=(10, 12, 60))
    src = render_wgrad_wgmma(SEED_A, size=SHAPE_A[2:])
    assert src.name.endswith("_64x64x64") and "m64n200k16.f32.bf16.bf16" in src.body
    assert "m64n160k16.f32.bf16.bf16" in src.body and "m64n8k16.f32.bf16.bf16" in src.body
    assert "constexpr int DO = 62, HO = 60, WO = 58;" in src.body
    assert "m64n8k16" not in render_wgrad_wgmma(EDGES[2][0], size=EDGES[2][1][2:]).body  # no bias
    assert backward.render_wgrad_tiles(SEED_A, WgradWgmmaTiles(4, 1, 8, False), False, SHAPE_A[2:]).body == \
        render_wgrad_wgmma(SEED_A, WgradWgmmaTiles(4, 1, 8, False), size=SHAPE_A[2:]).body


@pytest.fixture(scope="module")
def reports():
    sources = [render_wgrad_wgmma(SEED_A, t, size=SHAPE_A[2:]) for t in wgrad_wgmma_candidates(SEED_A)]
    sources += [render_wgrad_wgmma(spec, tiles, size=shape[2:])
                for spec, shape in EDGES for tiles in (WgradWgmmaTiles(), WgradWgmmaTiles(4, 1, 8, False))]
    sources += [render_wgrad_wgmma(SEED_A_TF32, t, size=SHAPE_A[2:]) for t in wgrad_wgmma_candidates(SEED_A_TF32)]
    sources += [render_wgrad_wgmma(spec, WgradWgmmaTiles(4, 1, 8, True), size=shape[2:]) for spec, shape in TF32_EDGES]
    return compile_all([(source, SM90) for source in sources])


def test_every_variant_compiles_for_sm90a_without_spills_or_serialized_wgmmas(reports):
    for source, target, report in reports:
        where = f"{source.name} for {target.arch}: {report}"
        assert not report.serialized_wgmma, where
        assert max(report.spill_store_bytes, report.spill_load_bytes, report.stack_bytes) == 0, where


def test_it_refuses_to_compile_for_other_gpus():
    with pytest.raises(KernelBuildError, match="build it for sm_90a"):
        compile_cubin(render_wgrad_wgmma(SEED_A, size=SHAPE_A[2:]), SM80)


def test_shared_memory_of_each_candidate_fits_where_it_is_offered():
    for t in wgrad_wgmma_candidates(SEED_A):
        assert t.shape_problem(SEED_A, SHAPE_A) is None
        p = plan(SEED_A, t, 58)
        slots = 5 + t.ring + 4  # the ring and the copy of its first KH - 1 slots
        assert p.shared_bytes == (1024 + t.stages * 8192 + slots * 9 * 8 * p.hankel_rows * 16 + 1024
                                  + t.raws * 1536 + 8 * (3 * t.stages + 2 * t.raws + 2 * p.ring))
        assert p.shared_bytes <= SHARED_BYTES_PER_BLOCK_SM90
    assert math.prod(SEED_A.weight_shape) == 64 * 3 * 3 * 5 * 7
    # a ring of KH + 2 with 6 stages fits seed-a's rows only with tight blocks: its shape problem says so
    assert "exceed" in WgradWgmmaTiles(6, 2, 8, False).shape_problem(SEED_A, SHAPE_A)
    assert WgradWgmmaTiles(6, 2, 8, True).shape_problem(SEED_A, SHAPE_A) is None
    assert "stages 2 to 8" in WgradWgmmaTiles(9).problem(SEED_A)
