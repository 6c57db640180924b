"""The cache key, and nvcc compiling every template variant alone (no GPU, no torch headers)."""
import ctypes
import dataclasses
import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from conv3d_codegen.build import (KernelBuildError, Target, compile_cubin, compile_shared_library, kernel_key,
                                  library_name, nvcc_path)
from conv3d_codegen.cache import Entry
from conv3d_codegen.kernel import Kernel
from conv3d_codegen.render import Tiles, generator_hash, render_direct, render_generic, templates_dir
from conv3d_codegen.render_grad import default_wgrad_tiles, dgrad_spec, render_wgrad, wgrad_candidates
from conv3d_codegen.spec import ConvSpec

SEED_A = ConvSpec.from_text("3x5x7 --cin 3 --cout 64")
SEED_B = ConvSpec.from_text("3x3x3 --cin 3 --cout 64")
SM90 = Target(arch="sm_90", torch_version="2.11.0", cuda_version="13.0.88")


def test_same_input_same_key():
    assert kernel_key(render_direct(SEED_A), SM90) == kernel_key(render_direct(SEED_A), SM90)


def test_key_joins_named_parts():
    key = kernel_key(render_direct(SEED_A), SM90)
    names = [part.split("=")[0] for part in key.split("-")]
    assert names == ["spec", "src", "flags", "torch", "cuda", "arch", "gen"]
    assert f"gen={generator_hash()}" in key and "arch=sm_90" in key and "cuda=13.0.88" in key


@pytest.mark.parametrize("change", [dict(groups=3), dict(bias=False), dict(dtype="bfloat16"),
                                   dict(precision="tf32"), dict(padding="same"), dict(layout="ndhwc")])
def test_changing_the_spec_changes_the_key(change):
    other = SEED_A.model_copy(update=change)
    assert kernel_key(render_direct(other), SM90) != kernel_key(render_direct(SEED_A), SM90)


def test_changing_tiles_flags_or_toolchain_changes_the_key():
    base = kernel_key(render_direct(SEED_A), SM90)
    assert kernel_key(render_direct(SEED_A, Tiles(cot=4, wt=4, block=128, cic=3)), SM90) != base
    for change in [dict(arch="sm_80"), dict(torch_version="2.13.0"), dict(cuda_version="13.1.0")]:
        assert kernel_key(render_direct(SEED_A), dataclasses.replace(SM90, **change)) != base


def test_changing_one_template_line_changes_the_generator_hash(tmp_path):
    same, edited = tmp_path / "same", tmp_path / "edited"
    shutil.copytree(templates_dir(), same)
    shutil.copytree(templates_dir(), edited)
    path = edited / "conv3d_fwd_direct.cu.j2"
    path.write_text(path.read_text().replace("constexpr int BLOCK", "constexpr int  BLOCK", 1))
    assert generator_hash(same) == generator_hash()
    assert generator_hash(edited) != generator_hash()


def test_library_name_is_readable_plus_key_digest():
    key = kernel_key(render_direct(SEED_A), SM90)
    name = library_name(render_direct(SEED_A), key)
    assert name.startswith("conv3d_fwd_k3x5x7_s1_p0_d1_g1_ci3_co64_f32_") and len(name.rsplit("_", 1)[1]) == 8


def test_target_refuses_a_malformed_arch():
    with pytest.raises(ValueError, match="arch must look like sm_80 or sm_90, got '90'"):
        Target.for_arch("90")


# Every template, each dtype, and the geometry features the direct template specializes on.
MATRIX = [
    "3x5x7 --cin 3 --cout 64",
    "3x5x7 --cin 3 --cout 64 --dtype bfloat16",
    "3x3x3 --cin 3 --cout 64 --dtype float16",
    "3x3x3 --cin 64 --cout 64 --padding 1",                       # input channels in chunks
    "5x3x3 --cin 32 --cout 64 --stride 2 --padding 1",
    "3x3x3 --cin 8 --cout 8 --stride 1x2x3 --padding 2x1x0 --dilation 2 --no-bias",
    "3x3x3 --cin 64 --cout 64 --groups 64 --padding same --dtype bfloat16",  # depthwise
    "1x1x1 --cin 64 --cout 128",
    "7x1x1 --cin 6 --cout 4 --groups 2 --padding same",
    "2x4x3 --cin 4 --cout 4 --padding same --dilation 1x3x2",        # asymmetric 'same'
    "7x7x7 --cin 2 --cout 16 --padding 3",
]
# The NDHWC (channels_last_3d) variants of the direct template: the matrix but for its two
# slowest compiles (seed-a in bfloat16, 7x7x7), whose NDHWC row code is the same as others'.
MATRIX_CL = [t + " --layout ndhwc" for t in MATRIX if t not in (MATRIX[1], MATRIX[-1])]


@pytest.fixture(scope="module")
def reports():
    if nvcc_path() is None:
        pytest.skip("nvcc not found: set CUDA_HOME or put nvcc on PATH")
    sources = [render_direct(ConvSpec.from_text(t)) for t in MATRIX]
    sources += [render_direct(ConvSpec.from_text(MATRIX[3]), wide=True)]  # 64-bit offsets
    sources += [render_generic(dtype) for dtype in ("float32", "float16", "bfloat16")]
    sources += [render_direct(ConvSpec.from_text(t)) for t in MATRIX_CL]
    sources += [render_generic(dtype, "ndhwc") for dtype in ("float32", "float16", "bfloat16")]
    sources += [render_direct(dgrad_spec(SEED_A)[0])]  # the gradient of seed-a's input: 64 -> 3 channels
    sources += [render_wgrad(ConvSpec.from_text(t)) for t in MATRIX]
    sources += [render_wgrad(ConvSpec.from_text(MATRIX[3]), wide=True)]
    sources += [render_wgrad(spec, t) for spec, ow in ((SEED_A, 58), (SEED_B, 62)) for t in wgrad_candidates(spec, ow)
                if t != default_wgrad_tiles(spec)]  # every tile choice autotuning may pick on the seeds
    with ThreadPoolExecutor(2) as pool:
        return dict(zip((f"{s.name} [{s.params.get('tiles', '')}]" for s in sources), pool.map(lambda s: compile_cubin(s, SM90), sources)))


@pytest.mark.slow
def test_every_variant_compiles_to_sm90_without_spills(reports):
    assert len(reports) >= 2 * len(MATRIX) + 6 + 16 + len(MATRIX_CL) + 3  # candidates equal to a matrix entry count once
    for name, report in reports.items():
        assert report.registers > 0, name  # ptxas reported on the kernel
        assert report.spill_store_bytes == report.spill_load_bytes == report.stack_bytes == 0, (name, report)
        # wgrad runs one block per multiprocessor and may use more registers per thread
        assert report.registers <= 128 or "generic" in name or "wgrad" in name, (name, report)


def test_compile_errors_carry_the_log():
    broken = dataclasses.replace(render_generic("float32"), body="this is not CUDA;\n")
    if nvcc_path() is None:
        pytest.skip("nvcc not found: set CUDA_HOME or put nvcc on PATH")
    with pytest.raises(KernelBuildError) as err:
        compile_cubin(broken, SM90)
    assert "conv3d_fwd_generic_f32" in str(err.value) and "error" in err.value.log


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the entry point where no GPU answers")
def test_the_c_entry_point_links_alone_and_reports_cuda_errors(tmp_path):
    """The ctypes binding Kernel uses, against a library nvcc built with no torch at all."""
    if nvcc_path() is None:
        pytest.skip("nvcc not found: set CUDA_HOME or put nvcc on PATH")
    source = render_direct(ConvSpec.from_text("3x3x3 --cin 3 --cout 8"))
    library = compile_shared_library(source, SM90, tmp_path / "kernel.so")
    entry = Entry(tmp_path, {"files": {"library": {"path": "kernel.so"}}})
    kernel = Kernel(source, "conv3d_test", entry)
    args = (ctypes.c_longlong * 7)(1, 5, 5, 5, 3, 3, 3)
    code = kernel._launch(None, None, None, None, args, 7, None)
    assert code != 0  # no GPU: the runtime says so instead of crashing
    assert kernel._error_string(code).decode() != ""
    assert kernel._launch(None, None, None, None, args, 6, None) == 1  # wrong argument count: cudaErrorInvalidValue
    assert library.exists()
