"""The autotuner's search space and its records (the timing itself runs in tests/gpu)."""
import pytest

from conv3d_codegen.autotune import Tuner, candidates
from conv3d_codegen.build import Target
from conv3d_codegen.cache import KernelCache
from conv3d_codegen.kernel import KernelLoader
from conv3d_codegen.render import Tiles, default_tiles
from conv3d_codegen.render_mma import MmaTiles, supports_mma
from conv3d_codegen.spec import ConvSpec
from conv3d_codegen.workloads import WORKLOADS

SM90 = Target(arch="sm_90", torch_version="2.11.0", cuda_version="13.0.88")


@pytest.mark.parametrize("name", list(WORKLOADS))
def test_candidates_are_valid_distinct_and_include_the_default(name):
    spec = WORKLOADS[name].spec
    found = candidates(spec)
    direct = [t for t in found if isinstance(t, Tiles)]
    assert default_tiles(spec) in direct and len(found) == len(set(found)) and 2 <= len(direct) <= 10
    assert all(t.problem(spec) is None for t in found) and all(t.cot * t.wt <= 64 for t in direct)
    # float32 'ieee' adds the tensor-core template's 3xTF32 tiles where K is short enough
    assert any(isinstance(t, MmaTiles) for t in found) == (supports_mma(spec) is None)


def test_depthwise_candidates_keep_one_channel_per_thread():
    assert {t.cot for t in candidates(WORKLOADS["depthwise"].spec) if isinstance(t, Tiles)} == {1}


def test_a_record_is_found_only_for_its_own_spec_shape_and_machine(tmp_path):
    tuner = Tuner(KernelLoader(KernelCache(tmp_path)))
    spec, shape = WORKLOADS["seed-a"].spec, (16, 3, 64, 64, 64)
    assert tuner.lookup(spec, shape, SM90, "NVIDIA H100") is None
    name, key = tuner.record_id(spec, shape, SM90, "NVIDIA H100")
    tiles = candidates(spec)[1]
    tuner.loader.cache.write_record(name, key, {"winner": str(tiles), "tiles": tiles.__dict__,
                                                "timings_ms": {str(tiles): 1.0, "torch": 2.0}, "dropped": {}})
    assert tuner.lookup(spec, shape, SM90, "NVIDIA H100").winner == tiles
    assert tuner.lookup(spec, (8, 3, 64, 64, 64), SM90, "NVIDIA H100") is None
    assert tuner.lookup(spec, shape, SM90, "NVIDIA A100") is None
    assert tuner.lookup(spec.model_copy(update={"bias": False}), shape, SM90, "NVIDIA H100") is None
    assert (tmp_path / "records" / f"{name}.json").stat().st_mode & 0o022 == 0
    assert name.startswith("autotune_k3x5x7_s1_p0_d1_g1_ci3_co64_f32_n16x3x64x64x64_")


def test_a_torch_winner_reads_back_as_none(tmp_path):
    tuner = Tuner(KernelLoader(KernelCache(tmp_path)))
    spec = ConvSpec.from_text("1x1x1 --cin 64 --cout 128")
    name, key = tuner.record_id(spec, (8, 64, 16, 32, 32), SM90, "gpu")
    tuner.loader.cache.write_record(name, key, {"winner": "torch", "tiles": None, "timings_ms": {"torch": 1.0},
                                                "dropped": {}})
    assert tuner.lookup(spec, (8, 64, 16, 32, 32), SM90, "gpu").winner is None
