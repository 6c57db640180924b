"""The staged tensor-core template: guards, names, geometry, the autotuner's wiring, nvcc compiling
every candidate of the seed workloads' input gradients and of 'wide' (bfloat16, float16 and tf32)
for sm_90 and sm_80 without spills, and every candidate run on the CPU emulator against float64
torch (no GPU, no torch headers)."""
import dataclasses
import json
import re
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import torch.nn.functional as F

from conv3d_codegen.autotune import TILE_KINDS, Tuner, candidates, render_tiles
from conv3d_codegen.build import kernel_key
from conv3d_codegen.cache import KernelCache
from conv3d_codegen.dispatch import source_for
from conv3d_codegen.kernel import KernelLoader, launch_args
from conv3d_codegen.measure import relative_error, tolerance
from conv3d_codegen.render_grad import dgrad_spec
from conv3d_codegen.render_mma_staged import (MmaStagedTiles, default_mma_staged_tiles, estimate_cycles, geometry,
                                              mma_staged_candidates, render_mma_staged, supports_mma_staged)
from conv3d_codegen.spec import ConvSpec
from conv3d_codegen.workloads import WORKLOADS

from . import cuda_emulation
from .cubins import SM80, SM90, compile_all


def _dtype(spec: ConvSpec, dtype: str) -> ConvSpec:
    """`spec` in `dtype`; 'tf32' is float32 with precision 'tf32'."""
    if dtype == "tf32":
        return spec.model_copy(update={"dtype": "float32", "precision": "tf32"})
    return spec.model_copy(update={"dtype": dtype, "precision": "ieee"})


# The forward convolutions the input gradients of the seeds run as (backward.input_grad), and 'wide'.
DGRAD_A = dgrad_spec(_dtype(WORKLOADS["seed-a"].spec, "bfloat16"))[0]   # 64 -> 3, 3x5x7, padding 2x4x6
DGRAD_B = dgrad_spec(_dtype(WORKLOADS["seed-b"].spec, "bfloat16"))[0]   # 64 -> 3, 3x3x3, padding 2
WIDE = _dtype(WORKLOADS["wide"].spec, "bfloat16")                       # 64 -> 64, 3x3x3, padding 1
TARGETS = {"dgrad-a": DGRAD_A, "dgrad-b": DGRAD_B, "wide": WIDE}
TF32 = {name: _dtype(spec, "tf32") for name, spec in TARGETS.items()}


def test_the_targets_are_the_seed_gradients():
    assert DGRAD_A.tag == "k3x5x7_s1_p2x4x6_d1_g1_ci64_co3_bf16" and not DGRAD_A.bias
    assert DGRAD_B.tag == "k3x3x3_s1_p2_d1_g1_ci64_co3_bf16"


@pytest.mark.parametrize("text, reason", [
    ("3x5x7 --cin 64 --cout 3 --padding 2x4x6 --no-bias --dtype bfloat16", None),
    ("3x3x3 --cin 64 --cout 64 --padding 1 --dtype float16", None),
    ("3x3x3 --cin 32 --cout 48 --groups 2 --dtype bfloat16", None),              # 16 input channels per group
    ("3x3x3 --cin 64 --cout 64 --padding 1", "float32's accuracy ('ieee') is not written"),
    ("3x3x3 --cin 64 --cout 64 --padding 1 --precision tf32", None),
    ("3x3x3 --cin 64 --cout 64 --groups 8 --precision tf32", None),                 # 8 input channels per group
    ("3x3x3 --cin 12 --cout 8 --precision tf32", "multiple of 8 (a K step of tf32)"),
    ("3x5x7 --cin 3 --cout 64 --dtype bfloat16", "multiple of 16"),
    ("3x3x3 --cin 64 --cout 64 --groups 8 --dtype bfloat16", "8 input channels per group"),
    ("1x1x65 --cin 16 --cout 1 --dtype bfloat16", "kernel width 65"),
])
def test_supports_gives_the_reason(text, reason):
    found = supports_mma_staged(ConvSpec.from_text(text))
    assert found is None if reason is None else reason in found


def test_other_layouts_are_refused():
    assert "NCDHW only" in supports_mma_staged(WIDE.model_copy(update={"layout": "ndhwc"}))
    assert mma_staged_candidates(WIDE.model_copy(update={"layout": "ndhwc"})) == []


def test_render_refuses_what_it_does_not_serve():
    with pytest.raises(ValueError, match="staged tensor-core template does not serve this spec"):
        render_mma_staged(ConvSpec.from_text("3x3x3 --cin 3 --cout 8 --dtype bfloat16"))
    with pytest.raises(ValueError, match="do not fit the spec"):
        render_mma_staged(DGRAD_A, MmaStagedTiles(th=6, tw=64, mt=4, block_co=3, ck=16))


def test_tiles_are_checked_against_the_spec():
    ok = MmaStagedTiles(th=8, tw=64, mt=4, block_co=3, ck=16, blocks_per_sm=2)
    assert ok.problem(DGRAD_A) is None
    assert "ck=24" in dataclasses.replace(ok, ck=24).problem(DGRAD_A)
    assert "tw=33" in dataclasses.replace(ok, tw=33).problem(DGRAD_A)
    assert "multiple of 2 * mt" in dataclasses.replace(ok, th=6).problem(DGRAD_A)
    assert "block_co=4" in dataclasses.replace(ok, block_co=4).problem(DGRAD_A)
    assert "buffers=4" in dataclasses.replace(ok, buffers=4).problem(DGRAD_A)
    assert "accumulators" in dataclasses.replace(ok, block_co=21).problem(WIDE)       # mt=4 x 8 n8 tiles x 4
    assert "columns exceed" in MmaStagedTiles(8, 32, 2, 32, 16).problem(WIDE)          # 32 x 3 = 96 columns
    assert "warps" in MmaStagedTiles(32, 64, 2, 3, 16).problem(DGRAD_A)                # 9 runs x 8 groups
    assert "shared memory" in dataclasses.replace(ok, ck=64).problem(DGRAD_A)
    assert "ck=8 is not 16, 32 or 64" in dataclasses.replace(ok, ck=8).problem(DGRAD_A)
    assert dataclasses.replace(ok, ck=8, blocks_per_sm=1).problem(TF32["dgrad-a"]) is None
    assert "ck=4 is not 8, 16, 32 or 64" in dataclasses.replace(ok, ck=4).problem(TF32["dgrad-a"])
    # tf32 doubles the weights' bytes: dgrad-a's 3 x 5 taps x 24 columns x 68 floats leave room for one block only
    assert "shared memory" in MmaStagedTiles(4, 64, 2, 3, 8, blocks_per_sm=2).problem(TF32["dgrad-a"])
    assert "registers" in MmaStagedTiles(16, 64, 8, 3, 16, blocks_per_sm=2).problem(DGRAD_A)
    with pytest.raises(ValueError, match="do not fit the spec"):
        render_mma_staged(DGRAD_A, dataclasses.replace(ok, ck=24))


def test_register_limits_follow_the_sm_quarters():
    # 2 blocks of 9 warps: 5 warps on some quarter of the SM, 16384 / (5 x 32) -> 96 (ptxas's own cap)
    assert MmaStagedTiles(8, 64, 4, 3, 16, blocks_per_sm=2).max_registers(DGRAD_A) == 96
    assert MmaStagedTiles(8, 64, 4, 3, 16, blocks_per_sm=1).max_registers(DGRAD_A) == 168
    assert MmaStagedTiles(8, 32, 4, 16, 16, blocks_per_sm=2).max_registers(WIDE) == 168  # 2 x 5 warps


def test_the_geometry_of_seed_a_dgrad():
    tiles = MmaStagedTiles(th=8, tw=64, mt=4, block_co=3, ck=16, blocks_per_sm=2)
    g = geometry(DGRAD_A, tiles)
    # 64 outputs read 64 + 6 columns (padding 6 is even: E = 0), rounded up to 72 = 9 runs of 8
    assert (g.e, g.rw, g.rwp, g.runs, g.warps) == (0, 70, 72, 9, 9)
    assert g.rh == 8 + 4 and g.ch_pitch == 872 and g.ch_pitch % 32 == 8 and g.ch_pitch >= g.rh * g.rwp
    assert (g.n_columns, g.np, g.nt, g.n_blocks) == (21, 24, 3, 1)
    assert g.halves == tuple(range(12)) and g.live_halves == 8   # 8 rows x 5 taps read 12 staged rows
    assert g.b_pitch == 72 and g.b_bytes == 3 * 5 * 24 * 72 * 2 and g.c_pitch % 16 == 4
    assert g.ec * 7 * g.c_pitch * 4 <= g.stage_bytes and g.passes == -(-3 // g.ec)
    assert geometry(WIDE, MmaStagedTiles(8, 32, 4, 16, 16)).e == 1  # padding 1: staged columns start one early
    assert (g.es, g.k_step) == (2, 16)


def test_the_geometry_of_seed_a_dgrad_in_tf32():
    tiles = MmaStagedTiles(th=8, tw=64, mt=4, block_co=3, ck=8)
    g, g16 = geometry(TF32["dgrad-a"], tiles), geometry(DGRAD_A, dataclasses.replace(tiles, ck=16))
    assert (g.es, g.k_step) == (4, 8)
    # the same M, N, warps and staged rows as 16-bit; 4-byte elements, so no column pairs (E = 0)
    assert (g.rw, g.rwp, g.runs, g.warps, g.rh, g.ch_pitch) == (g16.rw, g16.rwp, g16.runs, g16.warps, g16.rh, g16.ch_pitch)
    assert (g.n_columns, g.np, g.nt, g.halves, g.live_halves) == (21, 24, 3, g16.halves, g16.live_halves)
    assert g.ch_pitch % 32 == 8  # floats: lanes (g, t) at t * CH_PITCH + g hit 32 distinct banks
    assert g.b_pitch == 64 + 4 and (g.b_pitch * 4) % 32 == 16  # rows an odd number of 16-byte units
    assert g.b_bytes == 3 * 5 * 24 * 68 * 4 and g.stage_bytes == 8 * g.ch_pitch * 4
    assert g.smem == g.b_bytes + 2 * g.stage_bytes and g.registers_needed > g16.registers_needed
    assert geometry(TF32["wide"], MmaStagedTiles(8, 32, 4, 16, 8)).e == 0  # padding 1: no pairs to align


def test_candidates_are_a_small_valid_space_led_by_the_default():
    for spec in list(TARGETS.values()) + [_dtype(s, d) for s in TARGETS.values() for d in ("float16", "tf32")]:
        found = mma_staged_candidates(spec)
        assert 2 <= len(found) <= 6 and found[0] == default_mma_staged_tiles(spec), spec.tag
        assert all(t.problem(spec) is None for t in found) and len(set(found)) == len(found), spec.tag
        assert {t.tw for t in found} == {32, 64}, spec.tag  # the input width is not known here
    assert mma_staged_candidates(ConvSpec.from_text("3x3x3 --cin 64 --cout 64 --padding 1")) == []
    assert mma_staged_candidates(ConvSpec.from_text("3x3x3 --cin 8 --cout 8 --precision tf32"))[0].ck == 8


def test_tf32_is_costed_above_16_bit():
    """Half the tensor-core rate and twice the shared-memory bytes per channel: the cost model
    must rank tf32's best slower than 16-bit's (it only orders candidates; the autotuner measures)."""
    for name, spec in TARGETS.items():
        tf32 = min(estimate_cycles(TF32[name], t) for t in mma_staged_candidates(TF32[name]))
        assert tf32 > 1.5 * min(estimate_cycles(spec, t) for t in mma_staged_candidates(spec)), name


def test_names_params_and_banner():
    tiles = mma_staged_candidates(DGRAD_A)[0]
    source = render_mma_staged(DGRAD_A, tiles)
    assert source.name == "conv3d_fwd_mma_staged_k3x5x7_s1_p2x4x6_d1_g1_ci64_co3_bf16"
    assert source.arg_names == ("n", "d", "h", "w", "od", "oh", "ow")
    assert source.params["tiles"] == str(tiles) and str(tiles).startswith("staged th=")
    assert source.params["gemm"].startswith(f"M = {tiles.th} rows x")
    text = source.text("spec=abc")
    banner = text[: text.index("#include")]
    assert "template:  conv3d_fwd_mma_staged.cu.j2" in banner and "cache key: spec=abc" in banner
    spec_line = next(line for line in banner.splitlines() if line.startswith("// spec:"))
    assert ConvSpec(**json.loads(spec_line.split(":", 1)[1])) == DGRAD_A


def test_wide_offsets_and_tiles_change_the_source():
    narrow, wide = render_mma_staged(WIDE), render_mma_staged(WIDE, wide=True)
    assert "using index_t = int;" in narrow.body and "using index_t = long long;" in wide.body
    assert wide.name == narrow.name + "_i64" and wide.params["offsets"] == "64-bit"
    a, b = mma_staged_candidates(WIDE)[:2]
    assert kernel_key(render_mma_staged(WIDE, a), SM90) != kernel_key(render_mma_staged(WIDE, b), SM90)


def test_the_emitted_source_names_its_taps_and_includes_no_torch():
    tiles = MmaStagedTiles(th=8, tw=64, mt=4, block_co=3, ck=32, blocks_per_sm=1)
    body = render_mma_staged(DGRAD_A, tiles).body
    assert "#include <torch" not in body and "ATen" not in body and "cuda_emulator" not in body
    assert "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32" in body
    assert "m16n8k16.row.col.f32.f16.f16.f32" in render_mma_staged(_dtype(DGRAD_A, "float16")).body
    # per K step of 16 channels: each of the 12 staged rows loaded once; 5 taps x 4 m16 tiles
    assert body.count("ldmatrix_x2_trans(hv[") == 2 * 12
    assert len(re.findall(r"mma_tile\(acc\[\d\], hv\[\d+\], hv\[\d+\], b\);  // output rows", body)) == 2 * 5 * 4
    assert "// output rows +2, +3: staged rows +4, +5" in body  # kh=2 of m16 tile 1
    assert len(re.findall(r"    \{  // kh=\d", body)) == 2 * 5
    assert "cp.async.ca.shared.global" in body and "emu::" not in body


def test_the_tf32_source_reads_a_with_32_bit_loads_and_rounds_both_operands():
    tiles = MmaStagedTiles(th=4, tw=32, mt=2, block_co=3, ck=16)
    source = render_mma_staged(TF32["dgrad-a"], tiles)
    body = source.body
    assert source.name == "conv3d_fwd_mma_staged_k3x5x7_s1_p2x4x6_d1_g1_ci64_co3_tf32"
    assert source.params["mma"].startswith("m16n8k8 tf32")
    assert "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32" in body and "m16n8k16" not in body
    assert "using elem_t = float;" in body and "cvt.rna.tf32.f32" in body
    assert "to_tf32(__ldg(wb + i))" in body  # B rounded when staged; A where it is read (ld_shared_tf32)
    # per K step of 8 channels (2 in a stage of 16): each of the 8 staged rows loaded once; 5 taps x 2 m16 tiles
    assert body.count("load_half(hv[") == 2 * 8 and "ldmatrix_x2_trans(hv[" not in body
    assert len(re.findall(r"mma_tile\(acc\[\d\], hv\[\d+\], hv\[\d+\], b\);  // output rows", body)) == 2 * 5 * 2
    assert "{  // channels 8-15 of the chunk" in body and "bool pairs" not in body
    assert f"load_b(b, b_stage + {(1 * 24 * 68 + 8) * 4});" in body  # kh=1, second K step: 4-byte elements


def test_the_autotuner_times_the_staged_candidates_and_reads_a_winner_back(tmp_path):
    assert MmaStagedTiles in TILE_KINDS
    found = candidates(DGRAD_A)
    assert set(mma_staged_candidates(DGRAD_A)) <= set(found)
    assert not any(isinstance(t, MmaStagedTiles) for t in candidates(WORKLOADS["seed-a"].spec))  # 3 channels in
    tiles = mma_staged_candidates(DGRAD_A)[1]
    assert render_tiles(DGRAD_A, tiles).template == "conv3d_fwd_mma_staged.cu.j2"
    source, reason = source_for(DGRAD_A, (16, 64, 62, 60, 58), tiles)
    assert reason is None and source.params["tiles"] == str(tiles)
    tuner = Tuner(KernelLoader(KernelCache(tmp_path)))
    shape = (16, 64, 62, 60, 58)
    name, key = tuner.record_id(DGRAD_A, shape, SM90, "NVIDIA H100")
    tuner.loader.cache.write_record(name, key, {"winner": str(tiles), "tiles": dataclasses.asdict(tiles),
                                                "template": tiles.template, "dropped": {},
                                                "timings_ms": {str(tiles): 1.0, "torch": 7.4}})
    assert tuner.lookup(DGRAD_A, shape, SM90, "NVIDIA H100").winner == tiles


# ---- nvcc: every candidate of the targets, bfloat16 and float16, sm_90 and sm_80, no spills ----

DTYPES = ("bfloat16", "float16", "tf32")


def _cubin_jobs():
    sources = [render_mma_staged(spec, t) for base in TARGETS.values() for spec in (_dtype(base, d) for d in DTYPES)
               for t in mma_staged_candidates(spec)]
    sources.append(render_mma_staged(WIDE, mma_staged_candidates(WIDE)[0], wide=True))
    sources.append(render_mma_staged(TF32["wide"], mma_staged_candidates(TF32["wide"])[0], wide=True))
    return [(s, target) for s in sources for target in (SM90, SM80)]


@pytest.fixture(scope="module")
def reports():
    return compile_all(_cubin_jobs())


@pytest.mark.slow
def test_every_candidate_compiles_for_sm90_and_sm80_without_spills(reports):
    assert len(reports) == 2 * (2 + sum(len(mma_staged_candidates(_dtype(s, d))) for s in TARGETS.values()
                                        for d in DTYPES))
    for source, target, report in reports:
        where = (source.name, source.params["tiles"], target.arch, report)
        assert report.registers > 0, where
        assert report.spill_store_bytes == report.spill_load_bytes == report.stack_bytes == 0, where


# ---- the CPU emulator: every candidate against float64 torch ----

def _case(spec: ConvSpec, shape, tiles: MmaStagedTiles, **run):
    return pytest.param(spec, shape, tiles, run, id=f"{spec.tag}-{shape}-{'-'.join(str(tiles).split()[1:])}"
                        + "".join(f"-{k}{v}" for k, v in run.items()))


EMULATED = (
    # Every candidate of the targets on small inputs (w even: cp.async); the seeds' gradients also
    # with w odd (2-byte loads) and several blocks, 'wide' also with cp.async landing eagerly.
    [_case(DGRAD_A, (1, 64, 3, 9, 20), t) for t in mma_staged_candidates(DGRAD_A)]
    + [_case(DGRAD_A, (2, 64, 2, 7, 19), t, sms=3, eager_copies=True) for t in mma_staged_candidates(DGRAD_A)[:2]]
    + [_case(DGRAD_B, (1, 64, 3, 11, 22), t, sms=1) for t in mma_staged_candidates(DGRAD_B)]
    + [_case(WIDE, (1, 64, 3, 6, 34), t, eager_copies=True) for t in mma_staged_candidates(WIDE)]
    + [_case(_dtype(DGRAD_A, "float16"), (1, 64, 2, 6, 40), mma_staged_candidates(_dtype(DGRAD_A, "float16"))[0])]
    # tf32: every candidate of dgrad-a, the first of each other target, several blocks, eager copies.
    + [_case(TF32["dgrad-a"], (1, 64, 3, 9, 20), t) for t in mma_staged_candidates(TF32["dgrad-a"])]
    + [_case(TF32["dgrad-a"], (2, 64, 2, 7, 19), mma_staged_candidates(TF32["dgrad-a"])[1], sms=3, eager_copies=True)]
    + [_case(TF32["dgrad-b"], (1, 64, 3, 11, 22), t, sms=1) for t in mma_staged_candidates(TF32["dgrad-b"])[:2]]
    + [_case(TF32["wide"], (1, 64, 3, 6, 34), mma_staged_candidates(TF32["wide"])[0], eager_copies=True)]
)

EDGES = [  # spec, input shape: channel counts 16/32/64 in, 3/8/24/64 out, stride, dilation, groups, bias
    ("3x3x3 --cin 16 --cout 8 --padding 1 --dtype bfloat16", (2, 16, 3, 5, 7)),
    ("3x3x3 --cin 32 --cout 24 --stride 2 --padding 1 --dtype float16", (1, 32, 5, 9, 30)),
    ("3x3x5 --cin 32 --cout 3 --dilation 2 --padding 2x1x4 --no-bias --dtype bfloat16", (1, 32, 6, 8, 25)),
    ("3x3x3 --cin 64 --cout 24 --groups 2 --padding 1 --dtype bfloat16", (1, 64, 3, 5, 12)),
    ("1x1x1 --cin 64 --cout 64 --stride 1x2x2 --dtype float16", (1, 64, 2, 6, 18)),
    ("2x4x3 --cin 16 --cout 5 --padding same --dilation 1x2x1 --dtype bfloat16", (2, 16, 4, 7, 9)),
    # tf32: 8 input channels (one K step), odd sizes, stride, dilation along h and w, groups, bias or none
    ("3x3x3 --cin 8 --cout 8 --padding 1 --precision tf32", (2, 8, 3, 5, 7)),
    ("3x3x3 --cin 24 --cout 24 --stride 2 --padding 1 --precision tf32", (1, 24, 5, 9, 31)),
    ("3x3x5 --cin 32 --cout 3 --dilation 2 --padding 2x1x4 --no-bias --precision tf32", (1, 32, 6, 8, 25)),
    ("3x3x3 --cin 16 --cout 8 --stride 1x2x2 --dilation 1x1x2 --padding 1x1x2 --precision tf32", (1, 16, 3, 8, 41)),
    ("3x3x3 --cin 32 --cout 24 --groups 2 --padding 1 --precision tf32", (1, 32, 3, 5, 12)),
    ("3x3x3 --cin 64 --cout 64 --groups 8 --padding 1 --no-bias --precision tf32", (1, 64, 2, 5, 11)),
    ("2x4x3 --cin 16 --cout 5 --padding same --dilation 1x2x1 --precision tf32", (2, 16, 4, 7, 9)),
    ("1x1x1 --cin 64 --cout 64 --stride 1x2x2 --precision tf32", (1, 64, 2, 6, 18)),
]

# tf32 with every stage depth (ck) and both pipelines, two blocks along N (8 channels, 4 per block).
TF32_CK_SPEC = ConvSpec.from_text("3x3x3 --cin 64 --cout 8 --padding 1 --precision tf32")
TF32_CK = [MmaStagedTiles(th=2, tw=32, mt=1, block_co=4, ck=ck, buffers=3 if ck == 16 else 2) for ck in (8, 16, 32, 64)]


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    if (why := cuda_emulation.unavailable()) is not None:
        pytest.skip(why)
    folder = tmp_path_factory.mktemp("emulated")
    sources = {}
    for param in EMULATED:
        spec, shape, tiles, _ = param.values
        sources[(spec, tiles, False)] = render_mma_staged(spec, tiles, emulate=True)
    for text, _ in EDGES:
        spec = ConvSpec.from_text(text)
        for tiles in mma_staged_candidates(spec)[:2]:
            sources[(spec, tiles, False)] = render_mma_staged(spec, tiles, emulate=True)
    for tiles in TF32_CK:
        sources[(TF32_CK_SPEC, tiles, False)] = render_mma_staged(TF32_CK_SPEC, tiles, emulate=True)
    for spec in (WIDE, TF32["dgrad-b"]):
        sources[(spec, mma_staged_candidates(spec)[0], True)] = render_mma_staged(
            spec, mma_staged_candidates(spec)[0], wide=True, emulate=True)
    with ThreadPoolExecutor(2) as pool:
        built = list(pool.map(lambda s: cuda_emulation.build(s, folder), sources.values()))
    return dict(zip(sources, built))


def _tf32(t: torch.Tensor) -> torch.Tensor:
    """float32 rounded to tf32 as cvt.rna.tf32.f32 does (nearest, ties away from zero; finite values)."""
    return ((t.view(torch.int32) + 0x1000) & ~0x1FFF).view(torch.float32)


def _check(kernel, spec: ConvSpec, shape, seed: int = 0, rounded_operands: bool = False, **run):
    """The kernel's output against float64 torch within tolerance(spec); with rounded_operands
    (tf32), against float64 torch on the operands rounded to tf32, within 1e-5: the kernel must
    round both operands to nearest, not truncate them."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=generator).to(spec.torch_dtype)
    weight = (torch.randn(spec.weight_shape, generator=generator)
              / (spec.in_per_group * spec.kernel_volume) ** 0.5).to(spec.torch_dtype)
    bias = torch.randn(spec.out_channels, generator=generator).to(spec.torch_dtype) if spec.bias else None
    out = torch.full((shape[0], spec.out_channels, *spec.output_size(*shape[2:])), float("nan"), dtype=spec.torch_dtype)
    kernel(x, weight, bias, out, launch_args(spec, shape), **run)
    if rounded_operands:
        x, weight = _tf32(x), _tf32(weight)
    ref = F.conv3d(x.double(), weight.double(), None if bias is None else bias.double(), **spec.functional_args())
    err, bar = relative_error(out, ref), 1e-5 if rounded_operands else tolerance(spec)
    assert err <= bar, f"relative error {err:.2e} over {bar:.0e} (NaN: unwritten output)"


@pytest.mark.slow
@pytest.mark.parametrize("spec, shape, tiles, run", EMULATED)
def test_emulated_candidates_match_torch(emulated, spec, shape, tiles, run):
    _check(emulated[(spec, tiles, False)], spec, shape, **run)


@pytest.mark.slow
@pytest.mark.parametrize("text, shape", EDGES)
def test_emulated_edge_cases_match_torch(emulated, text, shape):
    spec = ConvSpec.from_text(text)
    for i, tiles in enumerate(mma_staged_candidates(spec)[:2]):
        _check(emulated[(spec, tiles, False)], spec, shape, seed=i, sms=1 + i, eager_copies=bool(i))


@pytest.mark.slow
def test_emulated_64_bit_offsets_match_torch(emulated):
    _check(emulated[(WIDE, mma_staged_candidates(WIDE)[0], True)], WIDE, (1, 64, 2, 5, 33), sms=1)
    spec = TF32["dgrad-b"]
    _check(emulated[(spec, mma_staged_candidates(spec)[0], True)], spec, (1, 64, 2, 5, 33), sms=1)


@pytest.mark.slow
@pytest.mark.parametrize("tiles", TF32_CK, ids=lambda t: f"ck{t.ck}-buffers{t.buffers}")
def test_emulated_tf32_stage_depths_match_torch(emulated, tiles):
    _check(emulated[(TF32_CK_SPEC, tiles, False)], TF32_CK_SPEC, (1, 64, 3, 6, 21), sms=2, eager_copies=tiles.ck == 32)


@pytest.mark.slow
def test_emulated_tf32_rounds_both_operands_to_nearest(emulated):
    """Against float64 on the operands rounded to tf32 the error is float32 accumulation only
    (~1e-7); an operand truncated instead of rounded, or read from the wrong lane, shows."""
    for spec, tiles in [(TF32_CK_SPEC, TF32_CK[1]), (TF32["dgrad-a"], mma_staged_candidates(TF32["dgrad-a"])[0])]:
        _check(emulated[(spec, tiles, False)], spec, (1, 64, 3, 6, 21), sms=1, rounded_operands=True)


@pytest.mark.slow
def test_the_emulator_catches_a_missing_wait(emulated, tmp_path):
    """The emulator is worth trusting only if it fails a kernel that reads a stage before its
    copies land: the same source with the wait for the current stage weakened."""
    tiles = mma_staged_candidates(DGRAD_B)[0]
    source = render_mma_staged(DGRAD_B, tiles, emulate=True)
    broken = dataclasses.replace(source, body=source.body.replace(
        "cp_async_wait<BUFFERS - 2>();  // this thread's", "cp_async_wait<BUFFERS - 1>();  // this thread's"))
    assert broken.body != source.body
    with pytest.raises(AssertionError, match="relative error"):
        _check(cuda_emulation.build(broken, tmp_path), DGRAD_B, (1, 64, 3, 11, 22))
