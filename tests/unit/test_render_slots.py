"""The rotating-slots template (dgrad on a 3-channel input): what it serves and on which inputs, on
which GPUs the tuner offers it, its geometry and weight lists (float32's too), and nvcc compiling
seed-a's and seed-b's dgrad (float32 forms too: tf32 and 3xTF32, in passes, with one stage and by the copy engine; 16-bit
forms by the copy engine too) and a few edge specs alone for sm_90 (built as sm_90a) without spills and without ptxas serializing the
wgmmas, and refusing to compile for sm_80 (no GPU, no torch headers)."""
import pytest

from conv3d_codegen.autotune import Tuner, buildable_sources, candidates, render_tiles
from conv3d_codegen.build import KernelBuildError, compile_cubin
from conv3d_codegen.render_grad import dgrad_spec
from conv3d_codegen.render_slots import (SlotsTiles, core_registers, geometry, render_slots, slots_candidates,
                                         slots_shape_problem, supports_slots, tma_shape_problem)
from conv3d_codegen.spec import ConvSpec
from conv3d_codegen.workloads import WORKLOADS

from .cubins import SM80, SM90, compile_all


def dgrad_of(workload: str, dtype: str = "bfloat16") -> tuple[ConvSpec, tuple[int, int, int]]:
    """The dgrad convolution of a seed workload and its input's size (grad_out's d, h, w)."""
    w = WORKLOADS[workload]
    spec = w.spec.model_copy(update={"dtype": dtype})
    return dgrad_spec(spec)[0], spec.output_size(*w.input_shape[2:])


DGRAD_A, SIZE_A = dgrad_of("seed-a")
DGRAD_B, SIZE_B = dgrad_of("seed-b")


@pytest.mark.parametrize("text, reason", [
    ("3x5x7 --cin 64 --cout 3 --padding 2x4x6 --dtype bfloat16", None),      # seed-a's dgrad
    ("3x3x3 --cin 64 --cout 3 --padding 2 --dtype float16", None),           # seed-b's
    ("1x3x3 --cin 128 --cout 2 --padding 0x1x1 --dtype bfloat16 --no-bias", None),
    ("3x3x3 --cin 64 --cout 3 --padding 2 --dtype float32 --precision tf32", None),  # seed-b's, tf32
    ("3x3x3 --cin 64 --cout 3 --padding 2 --dtype float32", None),                   # and 3xTF32
    ("3x3x3 --cin 8 --cout 3 --padding 1 --dtype float32", None),                    # one k8 step
    ("3x3x3 --cin 12 --cout 3 --dtype float32", "multiple of 8 in float32"),
    ("3x5x7 --cin 64 --cout 3 --padding 2x4x6 --dtype float32 --precision tf32", None),  # seed-a's: 3 passes
    ("3x5x7 --cin 64 --cout 3 --padding 2x4x6 --dtype float32", None),
    ("3x5x7 --cin 80 --cout 3 --dtype bfloat16 --padding 2x4x6", "3 x 80 input channels"),
    ("1x1x1 --cin 200 --cout 3 --dtype float32 --precision tf32", "1 x 200 input channels: the rotating-slots template "
                                                                  "holds taps along d x in_channels / 8 = 25 A fragments"),
    ("3x5x7 --cin 64 --cout 3 --padding 2x4x6 --dtype bfloat16 --layout ndhwc", "NCDHW only"),
    ("3x5x7 --cin 64 --cout 4 --groups 2 --dtype bfloat16", "groups=2"),
    ("3x5x7 --cin 64 --cout 3 --dtype bfloat16 --stride 2", "stride 1 and dilation 1"),
    ("3x5x7 --cin 64 --cout 3 --dtype bfloat16 --padding 3x4x6", "below the kernel's size"),
    ("3x5x7 --cin 48 --cout 3 --dtype bfloat16 --padding 2x4x6", None),
    ("3x5x7 --cin 40 --cout 3 --dtype bfloat16", "in_channels=40: the rotating-slots template needs a multiple of 16"),
    ("3x5x7 --cin 80 --cout 3 --dtype bfloat16", "15 A fragments"),
    ("3x5x7 --cin 64 --cout 4 --dtype bfloat16", "N = 144"),
])
def test_supports_slots_gives_the_reason(text, reason):
    found = supports_slots(ConvSpec.from_text(text))
    assert found is None if reason is None else reason in found


def test_uneven_padding_is_refused():
    spec = ConvSpec.from_text("3x4x3 --cin 16 --cout 2 --padding same --dtype bfloat16")  # kh 4: 1 before, 2 after
    assert spec.pad_before != spec.pad_after and "same padding on both sides" in supports_slots(spec)


@pytest.mark.parametrize("shape, reason", [
    ((16, 64, 62, 60, 58), None),
    ((1, 64, 5, 7, 2), None),
    ((1, 64, 5, 7, 57), "input width 57"),     # odd: rows are copied in 4-byte pieces
    ((1, 64, 5, 7, 66), "input width 66"),     # over one M tile
    ((1, 64, 5, 7, 62), "output width 68"),    # over the sums' 64 positions
])
def test_slots_shape_problem_names_the_input_it_refuses(shape, reason):
    found = slots_shape_problem(DGRAD_A, shape)
    assert found is None if reason is None else reason in found


def test_the_tuner_offers_the_slots_tiles_on_sm90_only():
    assert SlotsTiles() in candidates(DGRAD_A, "sm_90") and SlotsTiles() in candidates(DGRAD_A, "sm_90a")
    for arch in ("sm_80", "sm_86", "sm_100", None):
        assert SlotsTiles() not in candidates(DGRAD_A, arch)
    assert Tuner.candidate_problem(DGRAD_A, SlotsTiles(), (2, 64, 62, 60, 58)) is None
    assert "input width 66" in Tuner.candidate_problem(DGRAD_A, SlotsTiles(), (2, 64, 62, 60, 66))
    assert "planes=3" in SlotsTiles(planes=3).problem(DGRAD_A)


def test_more_planes_a_block_are_offered_where_their_registers_fit():
    """A warpgroup holds planes / 2 accumulator sets of N / 2 and the A fragments of planes / 2 + kd - 1 input
    planes: seed-a's N = 112 fits 2 planes a block, and 4 staged by the copy engine (its consumers hold 232 registers
    and A needs no ldmatrix addresses), seed-b's N = 32 all of 2 to 8, each also staged by the copy engine."""
    assert [(p, core_registers(DGRAD_A, p)) for p in (2, 4, 6)] == [(2, 56 + 48), (4, 112 + 64), (6, 168 + 48)]  # 6: one tap a pass
    assert slots_candidates(DGRAD_A) == [SlotsTiles(2), SlotsTiles(2, tma=True), SlotsTiles(4, tma=True)]
    assert "176 registers a thread of accumulators and A fragments, at most 160" in SlotsTiles(4).problem(DGRAD_A)
    assert "216 registers" in SlotsTiles(6, tma=True).problem(DGRAD_A) and "at most 176 (staged by the copy engine)" in \
        SlotsTiles(6, tma=True).problem(DGRAD_A)
    assert slots_candidates(DGRAD_B) == [SlotsTiles(p) for p in (2, 4, 6, 8)] + [SlotsTiles(p, tma=True) for p in (2, 4, 6, 8)]
    assert [t for t in candidates(DGRAD_B, "sm_90") if isinstance(t, SlotsTiles)] == slots_candidates(DGRAD_B)
    # a block stages planes + kd - 1 input planes a row
    assert geometry(DGRAD_B, 8).stage_bytes == 10 * 64 * 144 and geometry(DGRAD_B, 8).shared_bytes <= 227 * 1024
    src = render_slots(DGRAD_B, SlotsTiles(8), size=SIZE_B)
    assert "constexpr int P = 4;" in src.body and "(od + 2 * P - 1) / (2 * P)" in src.body
    assert "8 output planes, 10 input planes staged" in src.params["threads"]


def test_the_geometry_of_the_seeds_dgrad():
    a, b = geometry(DGRAD_A), geometry(DGRAD_B)
    assert (a.slot, a.ncol, a.list_rows) == (21, 112, 21 * 4 + 112)   # 105 columns of 112; windows at 21 r, r < 5
    assert a.weight_bytes == 3 * 4 * 2 * 196 * 16 and a.stage_bytes == 4 * 64 * 144
    assert a.shared_bytes == 75264 + 2 * 36864 + 4 * 21 * 68 * 4 <= 227 * 1024
    assert (b.slot, b.ncol, b.list_rows) == (9, 32, 9 * 2 + 32)       # 27 columns of 32


def test_float32_takes_twice_the_bytes_and_3xtf32_two_lists():
    """tf32: k8 steps of 4-byte elements, so the lists (16-byte rows of 4 channels) and the staged rows (72
    floats) take twice the bytes of bf16's; 'ieee' (3xTF32) holds the weights' big and small parts, and on
    seed-b then fits with one completed-slot buffer a warpgroup (RAWN = 1) instead of two."""
    tf32 = dgrad_of("seed-b", "float32")[0].model_copy(update={"precision": "tf32"})
    ieee = dgrad_of("seed-b", "float32")[0]
    g, gi = geometry(tf32), geometry(ieee)
    assert g.weight_bytes == 3 * 8 * 2 * 50 * 16 == 2 * geometry(DGRAD_B).weight_bytes and g.stage_bytes == 4 * 64 * 288
    assert (g.raws, g.shared_bytes) == (4, 38400 + 2 * 73728 + 4 * 9 * 68 * 4)
    assert gi.weight_bytes == 2 * g.weight_bytes and gi.raws == 2 and gi.shared_bytes == 76800 + 2 * 73728 + 2 * 2448
    assert geometry(ieee.model_copy(update={"in_channels": 16})).raws == 4  # where four fit, four
    assert core_registers(tf32, 2) == 16 + 4 * 3 * 8
    # one stage: one pass; and each staged by the copy engine too
    assert slots_candidates(tf32) == [SlotsTiles(2), SlotsTiles(4), SlotsTiles(4, stages=1), SlotsTiles(2, tma=True),
                                      SlotsTiles(4, tma=True), SlotsTiles(4, 1, True)]
    assert (g.taps, g.passes) == (3, 1) and (geometry(tf32, 4).taps, geometry(tf32, 4).passes) == (1, 3)  # 270 KB in one
    body, ieee_body = render_slots(tf32, size=SIZE_B).body, render_slots(ieee, size=SIZE_B).body
    assert "m64n32k8.f32.tf32.tf32" in body and "p, 1, 1;" in body and "cvt.rna.tf32.f32" in body
    assert "constexpr int RAWN = 2;" in body and "constexpr int RAWN = 1;" in ieee_body
    assert "cp.async.ca.shared.global [%0], [%1], 8;" in body and "ldmatrix" not in body
    assert "load_plane<true>(a[j], here, j, lane, wg, wq, off);" in ieee_body and "load_plane<true>(a[j]" not in body
    assert "(tf32) x 3 (3xTF32)" in render_slots(ieee, size=SIZE_B).params["product"]


def test_where_the_lists_of_every_tap_do_not_fit_the_kernel_runs_in_passes():
    """seed-a's dgrad in float32: the lists of its 3 taps along d take 150 KB in tf32 (301 KB in 3xTF32) beside two
    stages of 4 planes (147 KB), so the kernel takes one tap a pass, 3 passes, each staging 2 planes for 2."""
    for precision, lists in (("tf32", 8 * 2 * 196 * 16), ("ieee", 2 * 8 * 2 * 196 * 16)):
        spec = dgrad_of("seed-a", "float32")[0].model_copy(update={"precision": precision})
        g = geometry(spec)
        assert (g.taps, g.passes, g.raws, g.weight_bytes, g.stage_bytes) == (1, 3, 4, lists, 2 * 64 * 288)
        assert core_registers(spec, 2) == 56 + 4 * 1 * 8
        # tf32's lists of all 3 taps fit beside one stage (SlotsTiles.stages), 3xTF32's do not; tf32's are offered
        # staged by the copy engine too (3xTF32's are not)
        tf32 = ([SlotsTiles(2, stages=1), SlotsTiles(2, tma=True), SlotsTiles(2, 1, True), SlotsTiles(4, tma=True)]
                if precision == "tf32" else [])
        assert slots_candidates(spec) == [SlotsTiles(2)] + tf32
        src = render_slots(spec, size=SIZE_A)
        assert "constexpr int KDT = 1;" in src.body and "for (int pass = 0; pass < PASSES; ++pass)" in src.body
        assert "2 output planes, 2 input planes staged; 3 passes of 1 taps along d" in src.params["threads"]
    assert (geometry(DGRAD_A).taps, geometry(DGRAD_A).passes) == (3, 1)  # bf16: one pass


def test_one_stage_fits_seed_a_tf32_in_one_pass():
    """One stage of 64-float swizzled rows leaves the lists of all 3 taps room (150 KB + 64 KB + two completed-slot
    buffers, 227,488 bytes of 232,448); 72-float rows would not (236 KB). 16-bit types keep two stages."""
    spec = dgrad_of("seed-a", "float32")[0].model_copy(update={"precision": "tf32"})
    g = geometry(spec, 2, stages=1)
    assert (g.taps, g.passes, g.stages, g.swizzle, g.row_stride, g.raws) == (3, 1, 1, True, 256, 2)
    assert g.shared_bytes == 150528 + 4 * 64 * 256 + 2 * 21 * 68 * 4 == 227488 <= 227 * 1024
    assert core_registers(spec, 2, stages=1) == 56 + 4 * 3 * 8
    assert "float32 only, not bfloat16" in SlotsTiles(2, stages=1).problem(DGRAD_A)
    assert "stages=3" in SlotsTiles(2, stages=3).problem(spec)
    src = render_slots(spec, SlotsTiles(2, stages=1), size=SIZE_A)
    assert "constexpr int STAGES = 1;" in src.body and "constexpr int SWZ = 8;" in src.body
    assert "constexpr int KDT = 3;" in src.body and "one row at a time" in src.params["threads"]
    assert "constexpr int STAGES = 2;" in render_slots(spec, size=SIZE_A).body
    assert "constexpr int SWZ = 0;" in render_slots(spec, size=SIZE_A).body
    assert str(SlotsTiles(2, stages=1)) == "slots planes=2 stages=1" and str(SlotsTiles(2)) == "slots planes=2"


def test_the_swizzled_rows_keep_loads_and_copies_on_distinct_banks():
    """The template's addresses in a 64-float row with position p of channel c at p ^ 8 (c mod 4), and in a 72-float
    row unswizzled: a warp's 8-byte A loads (lane: channel t = lane % 4 plus a multiple of 4, positions 16 wq + 2 g and
    its next, g = lane / 4) fall on distinct banks in each half-warp (an 8-byte access is served a half-warp at a time),
    and a warp's copies (channel w + 8 k, lane l: positions 2 l, 2 l + 1) map the row's positions one to one into it,
    each pair on adjacent words. The completed slots' 8-byte stores (column 2 t + e of 8, positions 16 wq + 2 g) do too."""
    def word(row, c, p, swz):
        return c * row + (p ^ (swz * (c % 4)))

    def distinct_pairs(words):
        return len({w % 32 for w0 in words for w in (w0, w0 + 1)}) == 2 * len(words)
    for row, swz in ((64, 8), (72, 0)):
        for wq in range(4):
            for base in (0, 4, 12, 60):  # channels 8 c + 4 h of the warp's plane
                for half in (range(16), range(16, 32)):
                    words = [word(row, base + lane % 4, 16 * wq + 2 * (lane // 4), swz) for lane in half]
                    assert all(w % 2 == 0 for w in words) and distinct_pairs(words), (row, wq, base)
    for half in (range(16), range(16, 32)):
        for jn in range(3):
            assert distinct_pairs([(8 * jn + 2 * (lane % 4)) * 68 + 16 * 1 + 2 * (lane // 4) for lane in half])
    for warp in range(8):
        for k in range(8):
            c = warp + 8 * k
            words = [word(64, c, 2 * lane, 8) for lane in range(32)]
            assert all(word(64, c, 2 * lane + 1, 8) == w + 1 for lane, w in enumerate(words))
            assert sorted(w + e for w in words for e in (0, 1)) == list(range(64 * c, 64 * c + 64))


def test_the_copy_engine_stages_tf32_rows_with_one_stage():
    """tma (tf32 with one stage): seed-a's takes 68-float rows, 128 bytes to align the stages and two mbarriers a
    staged plane (231,776 bytes of 232,448), and a producer warpgroup (384 threads); the tuner is offered every tf32
    choice staged by it too; inputs whose planes are not a multiple of 16 bytes, and 3xTF32, are refused with the reason."""
    spec = dgrad_of("seed-a", "float32")[0].model_copy(update={"precision": "tf32"})
    g = geometry(spec, 2, stages=1, tma=True)
    assert (g.taps, g.passes, g.swizzle, g.tma, g.row_stride, g.staged) == (3, 1, False, True, 272, 4)
    assert g.shared_bytes == 150528 + 4 * 64 * 272 + 2 * 21 * 68 * 4 + 128 + 4 * 16 == 231776 <= 227 * 1024
    assert SlotsTiles(2, 1, True) in slots_candidates(spec)
    assert "float32 only, not bfloat16" in SlotsTiles(2, 1, True).problem(DGRAD_A)
    assert "not float32 with precision 'ieee' (3xTF32)" in SlotsTiles(2, 1, True).problem(
        spec.model_copy(update={"precision": "ieee"}))
    assert "at most 256 channel rows" in SlotsTiles(2, 1, True).problem(spec.model_copy(update={"in_channels": 264}))
    assert tma_shape_problem(spec, (2, 64, 62, 60, 58)) is None  # 3,480 floats a plane
    assert "13x58" in SlotsTiles(2, 1, True).shape_problem(spec, (2, 64, 10, 13, 58))
    assert SlotsTiles(2, 1).shape_problem(spec, (2, 64, 10, 13, 58)) is None
    with pytest.raises(ValueError, match="h x w a multiple of 4"):
        render_slots(spec, SlotsTiles(2, 1, True), size=(10, 13, 58))
    src = render_slots(spec, SlotsTiles(2, 1, True), size=SIZE_A)
    assert "constexpr bool TMA = true;" in src.body and "cp.async.bulk.tensor.4d" in src.body
    assert "CU_TENSOR_MAP_SWIZZLE_NONE" in src.body and "cp.async.ca" not in src.body and "constexpr int KSPAN = PERMUTED ? 2 : 1;" in src.body
    assert "CU_TENSOR_MAP_DATA_TYPE_FLOAT32" in src.body and "constexpr bool PERMUTED = TMA && E == 4;" in src.body
    assert src.params["threads"].startswith("384: 2 output planes, 4 input planes staged, one row at a time by the copy engine")
    assert str(SlotsTiles(2, 1, True)) == "slots planes=2 stages=1 tma" and "constexpr int THREADS = TMA ? 384 : 256;" in src.body
    assert "constexpr bool TMA = false;" in render_slots(spec, SlotsTiles(2, 1), size=SIZE_A).body


def test_the_copy_engines_rows_keep_the_a_loads_on_distinct_banks():
    """With tma a staged row is the copy engine's box: channel c's 68 floats at 272 c bytes, position p at p + off (off =
    2 on rows that start 8 bytes into a 16-byte piece), and a k8 step's K columns t and t + 4 are its channels 2 t and
    2 t + 1 (the weight lists' order too). A half-warp's 8-byte A loads (lane: t = lane % 4, positions 16 wq + 2 g + off
    and its next, g = lane / 4) fall on distinct banks for either off, and read inside the channel's row (p + off < 68)."""
    for off in (0, 2):
        for wq in range(4):
            for channel in (0, 1, 8, 9, 56, 57, 64 + 8, 3 * 64 + 57):  # 64 j + 8 c + h: plane j, K step c, column half h
                for half in (range(16), range(16, 32)):
                    words = []
                    for lane in half:
                        s = 16 * wq + 2 * (lane // 4) + off
                        assert s + 1 < 68
                        w = (channel + 2 * (lane % 4)) * 68 + s
                        words += [w, w + 1]
                    assert words[0] % 2 == 0 and len({w % 32 for w in words}) == 32, (off, wq, channel)


def test_the_copy_engine_stages_16_bit_rows_with_two_stages():
    """tma in bfloat16 and float16: seed-a's keeps two stages, of 64-element rows swizzled by the engine (1024 bytes to
    align the stages, a buffer and two mbarriers a staged plane and stage: 164,800 bytes); its boxes start on 16-byte
    pieces (8 elements), so input planes must be a multiple of 8 elements (seed-b's 62 x 62 is not), and a row starting
    up to 6 elements in must fit 64 (width 62 does not, 60 and 58 do); A comes by 32-bit loads and byte permutes, not
    ldmatrix."""
    g = geometry(DGRAD_A, 2, tma=True)
    assert (g.taps, g.passes, g.stages, g.tma, g.row_stride, g.staged, g.align) == (3, 1, 2, True, 128, 4, 1024)
    assert g.shared_bytes == geometry(DGRAD_A).shared_bytes - 2 * 4 * 64 * 16 + 1024 + 2 * 4 * 16 == 164800
    assert SlotsTiles(2, tma=True).problem(DGRAD_A) is None and "float32 only" in SlotsTiles(2, 1, True).problem(DGRAD_A)
    assert SlotsTiles(2, tma=True).shape_problem(DGRAD_A, (2, 64, *SIZE_A)) is None  # 3,480 elements a plane
    assert "62x62: staging bfloat16 by the copy engine needs h x w a multiple of 8" in SlotsTiles(2, tma=True).shape_problem(
        DGRAD_B, (2, 64, *SIZE_B))
    assert "input width 62: staging bfloat16 by the copy engine takes rows of 64 elements, which a row starting 6" in \
        SlotsTiles(2, tma=True).shape_problem(DGRAD_B, (2, 64, 10, 8, 62))
    assert all(SlotsTiles(2, tma=True).shape_problem(DGRAD_B, (2, 64, 10, 8, w)) is None for w in (58, 60, 16))
    for spec, kind in ((DGRAD_A, "BFLOAT16"), (dgrad_of("seed-a", "float16")[0], "FLOAT16")):
        src = render_slots(spec, SlotsTiles(2, tma=True), size=SIZE_A)
        assert f"CU_TENSOR_MAP_DATA_TYPE_{kind}" in src.body and "constexpr bool TMA = true;" in src.body
        assert "CU_TENSOR_MAP_SWIZZLE_128B" in src.body and "constexpr int RS = 128;" in src.body
        assert "prmt.b32" in src.body and "ld.shared.b32" in src.body and "cp.async.ca" not in src.body
        assert "load_plane(uint32_t (&aj)[KS][4], uint32_t stage, int j, int lane, int wg, int wq, int off)" in src.body
        assert src.params["threads"].startswith("384: 2 output planes, 4 input planes staged by the copy engine")
    assert "prmt.b32" not in render_slots(DGRAD_A, size=SIZE_A).body


def test_the_16_bit_a_loads_from_the_copy_engines_rows_fall_on_distinct_banks():
    """A 16-bit staged row is 128 bytes, swizzled by the engine: byte a of a 1024-aligned buffer lands at a ^ 16 ((a /
    128) mod 8). Position p sits at p + off, off = (h x w) mod 8 of the row's first element: 0, 2, 4 or 6 on seed-a's
    rows of 58. Lane (t = lane % 4, g = lane / 4) of warp wq loads the 32-bit word of positions 16 wq + 2 g, + 1 of
    channel 16 c + 8 h + 2 t (and of the channel after) at the template's address, row + (b ^ 16 (r mod 8)): where the
    engine put it (inside the row's 128 bytes), on 4-byte boundaries, and a warp's 32 loads on 32 distinct banks, for
    every off and every width the copy engine takes."""
    def swizzled(a):
        return a ^ (a >> 7 & 7) << 4

    assert sorted({hi * 58 % 8 for hi in range(60)}) == [0, 2, 4, 6]
    for width in (58, 60, 56, 30, 16, 20):
        for off in sorted({hi * width % 8 for hi in range(8)}):
            for wq in range(4):
                for row0 in (0, 8, 16, 48, 64 + 16, 3 * 64 + 48):  # 64 j + 16 c + 8 h: plane j, K step c, half h
                    for odd in (0, 1):
                        got = []
                        for lane in range(32):
                            t, g = lane % 4, lane // 4
                            r, b = row0 + 2 * t + odd, (16 * wq + 2 * g + off) * 2
                            got.append(at := r * 128 + (b ^ (32 * t + 16 * odd)))
                            assert at % 4 == 0 and (16 * wq + 2 * g >= width or at == swizzled(r * 128 + b)), (width, off)
                        assert len({a // 4 % 32 for a in got}) == 32, (width, off, wq, row0, odd)


def test_what_is_built_ahead_leaves_out_the_tiles_an_input_refuses():
    """buildable_sources (the dispatcher's and the benchmarks' builds ahead of tuning) renders the candidates tune()
    keeps: seed-b's bf16 dgrad (planes of 62 x 62 elements) gets no copy-engine form, seed-a's (60 x 58) gets both."""
    tiles_b = [s.params["tiles"] for s in buildable_sources(DGRAD_B, (16, 64, *SIZE_B), "sm_90")]
    tiles_a = [s.params["tiles"] for s in buildable_sources(DGRAD_A, (16, 64, *SIZE_A), "sm_90")]
    assert "slots planes=8" in tiles_b and not any("tma" in t for t in tiles_b)
    assert {"slots planes=2", "slots planes=2 tma", "slots planes=4 tma"} <= set(tiles_a)
    assert len(tiles_b) == len([t for t in candidates(DGRAD_B, "sm_90")
                                if Tuner.candidate_problem(DGRAD_B, t, (16, 64, *SIZE_B)) is None])


def test_every_window_puts_each_tap_row_in_its_slot():
    """Row hi's window starts at list row SLOT r, r = -(hi + PH) mod KH, and list row i holds kh = -(i // SLOT)
    mod KH: slot s then takes kh = (hi + PH - s) mod KH, the tap that carries input row hi to output row h = s
    (mod KH), h = hi + PH - kh. The template's arithmetic, checked for every row position and slot."""
    for kh_size, ph in [(5, 4), (3, 2), (3, 0), (1, 0), (4, 1)]:
        for hi in range(2 * kh_size + 3):
            r = (-(hi + ph)) % kh_size
            for s in range(kh_size):
                kh = (-(r + s)) % kh_size
                h = hi + ph - kh
                assert 0 <= kh < kh_size and h % kh_size == s and hi + ph - kh_size + 1 <= h <= hi + ph


def test_a_render_needs_the_input_size_and_folds_it():
    with pytest.raises(ValueError, match="built for one input size"):
        render_slots(DGRAD_A)
    with pytest.raises(ValueError, match="input width 66"):
        render_slots(DGRAD_A, size=(10, 10, 66))
    src = render_slots(DGRAD_A, size=SIZE_A)
    assert src.name.endswith("_62x60x58") and "m64n112k16.f32.bf16.bf16" in src.body
    assert "constexpr int DI = 62, HI = 60, WI = 58;" in src.body and "DO = 64, HO = 64, WO = 64;" in src.body
    flushed = [h for h in range(64)
               if f"write_row<{h % 5}>(acc[p], raw0 + (({h} * P + p) & (RAWN - 1)) * RAW, bias, y, cn, d0 + wg * P + p, {h}," in src.body]
    assert flushed == [60, 61, 62, 63]  # the output rows after the last input row's (59)
    assert "m64n32k16.f32.f16.f16" in render_slots(dgrad_of("seed-b", "float16")[0], size=SIZE_B).body
    assert render_tiles(DGRAD_A, SlotsTiles(), size=SIZE_A).body == src.body
    assert "constexpr int HPAD = 60;" in src.body and "constexpr int HPAD = 63;" in render_slots(DGRAD_B, size=SIZE_B).body
    # kh 1 and one input row: two rows are walked (the kernel stages two rows ahead), the second all zeros
    assert "constexpr int HPAD = 2;" in render_slots(ConvSpec.from_text("1x1x3 --cin 16 --cout 2 --dtype bfloat16"),
                                                     size=(3, 1, 16)).body


def _sources():
    return [render_slots(spec, size=size) for spec, size in [
        (DGRAD_A, SIZE_A),
        (DGRAD_B, SIZE_B),
        (ConvSpec.from_text("3x5x7 --cin 32 --cout 3 --dtype float16"), (8, 13, 64)),        # no padding: rows h < 0
        (ConvSpec.from_text("1x3x3 --cin 128 --cout 2 --padding 0x1x1 --dtype bfloat16 --no-bias"), (3, 5, 8)),
        (ConvSpec.from_text("3x3x5 --cin 48 --cout 4 --padding 1x1x2 --dtype bfloat16"), (4, 7, 16)),  # N = 64 of 60
        (ConvSpec.from_text("1x1x3 --cin 16 --cout 2 --dtype float16"), (3, 1, 16)),  # kh 1, one input row
    ]] + [render_slots(DGRAD_B, SlotsTiles(planes), size=SIZE_B) for planes in (4, 8)] + [
        render_slots(dgrad_of("seed-b", "float32")[0].model_copy(update={"precision": precision}), size=SIZE_B)
        for precision in ("tf32", "ieee")] + [  # ieee: 255 registers, one completed-slot buffer a warpgroup
        render_slots(dgrad_of("seed-a", "float32")[0], size=SIZE_A)] + [  # 3 passes of one tap along d
        render_slots(dgrad_of("seed-a", "float32")[0].model_copy(update={"precision": "tf32"}), SlotsTiles(2, stages=1),
                     size=SIZE_A),  # one stage, all taps in one pass
        render_slots(dgrad_of("seed-b", "float32")[0], SlotsTiles(4, stages=1), size=SIZE_B)] + [  # 3xTF32, 4 planes
        render_slots(dgrad_of("seed-a", "float32")[0].model_copy(update={"precision": "tf32"}), SlotsTiles(2, 1, True),
                     size=SIZE_A),  # staged by the copy engine
        render_slots(dgrad_of("seed-b", "float32")[0].model_copy(update={"precision": "tf32"}), SlotsTiles(4, 1, True),
                     size=SIZE_B),
        render_slots(dgrad_of("seed-b", "float32")[0].model_copy(update={"precision": "tf32"}), SlotsTiles(2, tma=True),
                     size=SIZE_B),  # two stages
        render_slots(DGRAD_A, SlotsTiles(2, tma=True), size=SIZE_A),  # bf16: A by 32-bit loads and byte permutes
        render_slots(DGRAD_A, SlotsTiles(4, tma=True), size=SIZE_A),  # 176 registers of accumulators and fragments
        render_slots(dgrad_of("seed-a", "float32")[0].model_copy(update={"precision": "tf32"}), SlotsTiles(4, tma=True),
                     size=SIZE_A),  # tf32, 4 planes in 3 passes
        render_slots(dgrad_of("seed-b", "float16")[0], SlotsTiles(8, tma=True), size=(62, 60, 56))]


@pytest.fixture(scope="module")
def reports():
    return compile_all([(source, SM90) for source in _sources()])


def test_every_variant_compiles_for_sm90a_without_spills_or_serialized_wgmmas(reports):
    for source, target, report in reports:
        where = f"{source.name} for {target.arch}: {report}"
        assert report.registers <= 255 and not report.serialized_wgmma, where
        assert max(report.spill_store_bytes, report.spill_load_bytes, report.stack_bytes) == 0, where


def test_it_refuses_to_compile_for_other_gpus():
    with pytest.raises(KernelBuildError, match="build it for sm_90a"):
        compile_cubin(render_slots(DGRAD_A, size=SIZE_A), SM80)
