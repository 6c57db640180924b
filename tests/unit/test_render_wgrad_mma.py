"""The tensor-core wgrad template: guards, names, the shared-memory layout, the wiring into the
wgrad tuner, and nvcc compiling every seed candidate alone for sm_90 and sm_80 without spills
(no GPU, no torch headers)."""
import dataclasses

import pytest

from conv3d_codegen import backward
from conv3d_codegen.autotune import TORCH
from conv3d_codegen.build import kernel_key
from conv3d_codegen.render_grad import WGRAD_ARGS, WgradTiles, wgrad_candidates
from conv3d_codegen.render_wgrad_mma import (MAX_CANDIDATES, WgradMmaTiles, _plan, default_wgrad_mma_tiles,
                                             render_wgrad_mma, supports_wgrad_mma, wgrad_mma_candidates)
from conv3d_codegen.spec import ConvSpec
from conv3d_codegen.workloads import WORKLOADS

from .cubins import SM80, SM90, compile_all

SEED_A = WORKLOADS["seed-a"].spec.model_copy(update={"dtype": "bfloat16"})
SEED_B = WORKLOADS["seed-b"].spec.model_copy(update={"dtype": "bfloat16"})
OW = {"seed-a": 58, "seed-b": 62}  # the seeds' output widths: the tuner's candidates fit them


def with_dtype(spec: ConvSpec, dtype: str) -> ConvSpec:
    if dtype == "tf32":
        return spec.model_copy(update={"dtype": "float32", "precision": "tf32"})
    return spec.model_copy(update={"dtype": dtype})


@pytest.mark.parametrize("text, reason", [
    ("3x5x7 --cin 3 --cout 64", None),  # float32 'ieee': 3xTF32
    ("1x1x9 --cin 2 --cout 8 --dilation 1x1x8 --dtype bfloat16", "over 64 columns"),
    ("3x5x7 --cin 3 --cout 64 --dtype bfloat16", None),
    ("3x3x3 --cin 3 --cout 64 --dtype float16", None),
    ("3x5x7 --cin 3 --cout 64 --precision tf32", None),
    ("3x3x3 --cin 64 --cout 64 --padding 1 --dtype bfloat16", None),            # N split over blocks
    ("3x3x3 --cin 8 --cout 8 --groups 8 --padding same --dtype bfloat16", None),  # depthwise: 1 row a group
    ("1x2x9 --cin 2 --cout 24 --padding 0x1x4 --stride 1x1x3 --dtype float16", None),
])
def test_supports_wgrad_mma_gives_the_reason(text, reason):
    found = supports_wgrad_mma(ConvSpec.from_text(text))
    assert found is None if reason is None else reason in found


def test_render_refuses_what_it_does_not_serve():
    with pytest.raises(ValueError, match="tensor-core wgrad template does not serve this spec: kernel width 9"):
        render_wgrad_mma(ConvSpec.from_text("1x1x9 --cin 2 --cout 8 --dilation 1x1x8 --dtype bfloat16"))
    with pytest.raises(ValueError, match="do not fit the spec"):
        render_wgrad_mma(SEED_A, WgradMmaTiles(warps_n=8, nt=6, owc=40))


def test_names_arguments_and_params():
    source = render_wgrad_mma(SEED_A)
    assert source.name == "conv3d_wgrad_mma_k3x5x7_s1_p0_d1_g1_ci3_co64_bf16"
    assert source.arg_names == WGRAD_ARGS and source.entry == source.name + "_launch"
    assert source.params["tiles"] == str(default_wgrad_mma_tiles(SEED_A))
    assert source.params["n"].startswith("45 input rows x 7 taps + bias -> 46 n8 tiles (8 taps a row)")
    wide = render_wgrad_mma(SEED_A, wide=True)
    assert wide.name == source.name + "_i64" and "using index_t = long long;" in wide.body
    assert "using index_t = int;" in source.body
    assert render_wgrad_mma(with_dtype(SEED_A, "tf32")).name.endswith("_tf32")


def test_tiles_are_in_the_body_so_they_change_the_key():
    a, b = wgrad_mma_candidates(SEED_A, 58)[:2]
    assert kernel_key(render_wgrad_mma(SEED_A, a), SM90) != kernel_key(render_wgrad_mma(SEED_A, b), SM90)


def test_the_emitted_source_uses_tensor_cores_and_no_atomics():
    body = render_wgrad_mma(SEED_A).body
    assert "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32" in body and "ldmatrix.sync.aligned" in body
    assert "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32" in render_wgrad_mma(with_dtype(SEED_A, "float16")).body
    tf32 = render_wgrad_mma(with_dtype(SEED_A, "tf32")).body
    assert "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32" in tf32 and "cvt.rna.tf32.f32" in tf32
    assert "SMALL = 0;" in tf32 and "a_small" not in tf32
    x3 = render_wgrad_mma(with_dtype(SEED_A, "float32"))  # 'ieee': 3xTF32, an item's sums added apart
    assert "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32" in x3.body and "SMALL = 0;" not in x3.body
    assert x3.body.count("mma(sum[mt][nt], ") == 3 and "acc[mt][nt][q] += sum[mt][nt][q];" in x3.body
    assert "3xTF32" in x3.params["mma"]
    assert "atomicAdd" not in body and "#include <torch" not in body  # a fixed order of the final sum
    assert "cudaFuncAttributeMaxDynamicSharedMemorySize" in body


def test_tiles_say_what_is_wrong():
    assert "accumulators" in WgradMmaTiles(warps_n=4, nt=12).problem(SEED_A)
    assert "owc=40" in WgradMmaTiles(warps_n=8, nt=6, owc=40).problem(SEED_A)
    assert "exceed the 8 output channels" in WgradMmaTiles(warps_n=2, nt=4, mt=2).problem(
        ConvSpec.from_text("3x3x3 --cin 4 --cout 8 --dtype bfloat16"))
    kw9 = ConvSpec.from_text("1x2x9 --cin 2 --cout 24 --padding 0x1x4 --dtype bfloat16")
    assert "not a multiple of the 2 n8 tiles" in WgradMmaTiles(warps_n=2, nt=3, mt=2).problem(kw9)
    assert "registers" in WgradMmaTiles(warps_n=8, nt=8, blocks_per_sm=2).problem(SEED_A)
    assert "1 to 16 warps" in WgradMmaTiles(warps_n=17, nt=2).problem(SEED_A)


@pytest.mark.parametrize("spec, ow", [(SEED_A, 58), (SEED_B, 62), (with_dtype(SEED_A, "tf32"), 58),
                                      (with_dtype(SEED_A, "float32"), 58), (with_dtype(SEED_B, "float32"), 62),
                                      (ConvSpec.from_text("3x3x3 --cin 4 --cout 8 --padding 1 --dtype float16"), 21),
                                      (WORKLOADS["wide"].spec.model_copy(update={"dtype": "bfloat16"}), 32)])
def test_candidates_are_a_small_valid_space(spec, ow):
    found = wgrad_mma_candidates(spec, ow)
    assert 2 <= len(found) <= MAX_CANDIDATES and len(set(found)) == len(found)
    assert all(t.problem(spec) is None for t in found)
    assert len({str(t) for t in found}) == len(found) and all(str(t).startswith("mma ") for t in found)
    assert all(t.owc == min(64, -(-ow // 16) * 16) for t in found)
    assert found[0] == default_wgrad_mma_tiles(spec, ow)


def test_seed_layouts():
    a = _plan(SEED_A, WgradMmaTiles(warps_n=8, nt=6))
    assert (a.span, a.blocks, a.rows, a.tiles, a.n_blocks, a.staged_rows) == (8, 1, 45, 46, 1, 48)
    assert (a.copies, a.e_max, a.seg_words) == (2, 7, 35)  # pairs at odd kw read the copy; kw 7 is padding
    assert a.seg_pitch % 32 == 8 and a.row_pitch % 32 == 16 and a.a_pitch % 32 == 16
    assert a.cells == 45 * 35 and (a.a_slots, a.b_slots) == (8, 7)
    b = _plan(SEED_B, WgradMmaTiles(warps_n=4, nt=4))
    assert (b.span, b.tiles, b.staged_rows, b.n_blocks) == (4, 14, 32, 1)  # two rows of 4 taps a tile
    tf32 = _plan(with_dtype(SEED_A, "tf32"), WgradMmaTiles(warps_n=8, nt=6))
    assert (tf32.copies, tf32.seg_words, tf32.a_pitch) == (1, 64 + 7, 64 * 4 + 16)
    strided = _plan(ConvSpec.from_text("3x5x7 --cin 3 --cout 16 --stride 1x1x2 --dtype bfloat16"),
                    WgradMmaTiles(warps_n=8, nt=6, mt=1))
    assert strided.row_pitch >= 2 * 2 * strided.seg_pitch and strided.e_max == 3  # two phases of two copies
    dilated = _plan(ConvSpec.from_text("3x3x3 --cin 3 --cout 16 --dilation 2 --dtype bfloat16"),
                    WgradMmaTiles(warps_n=4, nt=4, mt=1))
    assert dilated.copies == 1  # every tap offset even: pairs always aligned
    assert a.smem <= 163 * 1024 and b.smem <= 228 * 1024 // 3
    x3 = _plan(with_dtype(SEED_A, "float32"), WgradMmaTiles(warps_n=8, nt=3))  # 3xTF32: small parts after the big
    assert x3.x3 and not tf32.x3 and x3.small_bytes % 128 == 0 and x3.buffer_bytes == 2 * x3.small_bytes
    assert x3.small_bytes >= x3.a_bytes + 4 * x3.staged_rows * x3.row_pitch and tf32.small_bytes == 0
    assert "accumulators" in WgradMmaTiles(warps_n=8, nt=4).problem(with_dtype(SEED_A, "float32"))


def test_split_blocks_count_groups_and_blocks_along_m_and_n():
    assert WgradMmaTiles(warps_n=8, nt=6).split_blocks(SEED_A) == 1
    wide = ConvSpec.from_text("3x3x3 --cin 64 --cout 128 --groups 2 --padding 1 --dtype bfloat16")
    tiles = WgradMmaTiles(warps_n=8, nt=4)
    plan = _plan(wide, tiles)
    assert plan.m_blocks == 1 and plan.n_blocks == -(-plan.tiles // 32)
    assert tiles.split_blocks(wide) == 2 * plan.n_blocks
    assert WgradTiles(cot=8, tc=8, rb=45, owc=64, wt=4).split_blocks(SEED_A) == 1


def test_the_wgrad_tuner_times_both_templates():
    mine = backward.wgrad_tile_candidates(SEED_A, (2, 3, 64, 64, 64))  # any GPU: no wgmma tiles
    assert mine[:len(wgrad_candidates(SEED_A, 58))] == wgrad_candidates(SEED_A, 58)
    assert [t for t in mine if isinstance(t, WgradMmaTiles)] == wgrad_mma_candidates(SEED_A, 58)
    ieee = SEED_A.model_copy(update={"dtype": "float32"})  # 3xTF32 among the direct template's
    assert [t for t in backward.wgrad_tile_candidates(ieee, (2, 3, 64, 64, 64)) if isinstance(t, WgradMmaTiles)] \
        == wgrad_mma_candidates(ieee, 58) != []
    assert backward.render_wgrad_tiles(SEED_A, mine[-1], False).template == "conv3d_wgrad_mma.cu.j2"
    assert backward.render_wgrad_tiles(SEED_A, mine[0], False).template == "conv3d_wgrad_direct.cu.j2"


class _Cache:
    def __init__(self, record):
        self.record = record

    def read_record(self, name, key):
        return self.record


class _Dispatcher:
    def __init__(self, record):
        self.cache = _Cache(record)


@pytest.mark.parametrize("winner", [WgradMmaTiles(warps_n=8, nt=6), WgradTiles(cot=8, tc=8, rb=45, owc=64, wt=4),
                                    None])
def test_a_wgrad_record_gives_back_its_kind_of_tiles(monkeypatch, winner):
    monkeypatch.setattr(backward, "_record_id", lambda *args: ("name", "key"))
    record = {"winner": TORCH if winner is None else str(winner),
              "tiles": None if winner is None else dataclasses.asdict(winner),
              "template": None if winner is None else winner.template, "timings_ms": {TORCH: 1.0}}
    tiles, _ = backward._wgrad_record(_Dispatcher(record), SEED_A, None, SM90)
    assert tiles == (TORCH if winner is None else winner) and type(tiles) is type(tiles if winner is None else winner)
    older = dict(record, template=None) if winner is not None and isinstance(winner, WgradTiles) else None
    if older:  # records written before this template existed name no template: the direct one's
        assert backward._wgrad_record(_Dispatcher(older), SEED_A, None, SM90)[0] == winner


# Compiled alone: every candidate of the seeds in bfloat16, float16 and float32 'ieee' (3xTF32) for
# sm_90 and sm_80, tf32 for sm_90; and the default tiles of edge specs (N over several blocks, strides, dilation,
# kw > 8, groups, 64-bit offsets) for both.
EDGES = ["3x3x3 --cin 64 --cout 64 --padding 1 --dtype bfloat16",
         "3x5x7 --cin 4 --cout 16 --padding 1x2x0 --stride 1x1x2 --dtype float16",
         "1x2x9 --cin 2 --cout 24 --padding 0x1x4 --dilation 1x1x2 --no-bias --dtype bfloat16",
         "3x3x3 --cin 8 --cout 16 --groups 2 --padding same --precision tf32",
         "1x1x1 --cin 5 --cout 40 --dtype bfloat16"]


def _jobs():
    jobs = []
    for name, spec in (("seed-a", SEED_A), ("seed-b", SEED_B)):
        for dtype, targets in (("bfloat16", (SM90, SM80)), ("float16", (SM90, SM80)), ("tf32", (SM90,)),
                                ("float32", (SM90, SM80))):
            typed = with_dtype(spec, dtype)
            jobs += [(render_wgrad_mma(typed, t), target) for t in wgrad_mma_candidates(typed, OW[name])
                     for target in targets]
    edges = [render_wgrad_mma(ConvSpec.from_text(text)) for text in EDGES] + [render_wgrad_mma(SEED_A, wide=True)]
    return jobs + [(source, target) for source in edges for target in (SM90, SM80)]


@pytest.fixture(scope="module")
def reports():
    return compile_all(_jobs())


@pytest.mark.slow
def test_every_seed_candidate_compiles_for_sm90_and_sm80_without_spills(reports):
    assert len(reports) >= 2 * 2 * 2 * 4
    for source, target, report in reports:
        where = (source.name, source.params["tiles"], target.arch, report)
        assert report.registers > 0, where
        assert report.spill_store_bytes == report.spill_load_bytes == report.stack_bytes == 0, where
