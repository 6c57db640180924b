"""conv3d-gen, run as a user runs it: a separate process, checked by exit status and output."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conv3d_codegen.cache import KernelCache

from .test_cache import build_step

REPO = Path(__file__).resolve().parents[2]
NO_GPU = not torch.cuda.is_available()
GPU_ONLY_BEHAVIOUR = pytest.mark.skipif(not NO_GPU, reason="checks the no-GPU behaviour; this machine has a GPU")


def cli(*args: str, cache: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if cache is not None:
        env["CONV3D_CODEGEN_CACHE"] = str(cache)
    return subprocess.run([sys.executable, str(REPO / "cli.py"), *args], capture_output=True, text=True,
                          cwd=REPO, timeout=300, env=env)


def test_emit_prints_the_source_without_a_gpu():
    done = cli("emit", "3x5x7 --cin 3 --cout 64")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("// ----") and "conv3d_fwd_k3x5x7_s1_p0_d1_g1_ci3_co64_f32" in done.stdout
    assert "// cache key: spec=" in done.stdout and "// kd=2 kh=4 kw=6" in done.stdout


def test_show_numbers_lines_and_colours_only_a_terminal():
    shown = cli("show", "seed-b", "--arch", "sm_80").stdout.splitlines()
    assert shown[0].startswith("  1  // ----") and "arch=sm_80" in shown[3] and "\033[" not in "".join(shown)
    generic = cli("show", "3x3x3 --cin 2 --cout 2 --dtype bf16", "--generic")
    assert "conv3d_fwd_generic_bf16" in generic.stdout and "__nv_bfloat16" in generic.stdout


def test_highlighting_marks_comments_keywords_and_directives():
    sys.path.insert(0, str(REPO))
    from cli import highlight
    assert highlight("  const int x = 1;  // a note") == "  \033[1mconst\033[0m \033[1mint\033[0m x = 1;  \033[2m// a note\033[0m"
    assert highlight("#include <cuda_runtime.h>").startswith("\033[36m#include")


def fake_entries(root: Path):
    cache = KernelCache(root)
    for name, tiles in [("conv3d_fwd_k3x3x3_old", "cot=8 wt=4 block=128 cic=3"),
                        ("conv3d_fwd_k3x3x3_new", "cot=16 wt=4 block=128 cic=3")]:
        spec = '{"bias":true,"dilation":[1,1,1],"dtype":"float32","groups":1,"in_channels":3,"kernel_size":[3,3,3],' \
               '"layout":"ncdhw","out_channels":64,"padding":[0,0,0],"precision":"ieee","stride":[1,1,1]}'

        def build(folder, tiles=tiles, spec=spec):
            made = build_step([], "x" * 4096)(folder)
            return {**made, "info": {"identity": spec, "params": {"tiles": tiles}}}
        cache.get_or_build(name, name + "-key", build)
    cache.write_record("autotune_x", "k", {"spec": spec, "shape": [16, 3, 64, 64, 64],
                                           "winner": "cot=16 wt=4 block=128 cic=3"})
    os.utime(root / "conv3d_fwd_k3x3x3_old" / "meta.json", (1, 1))
    return cache


def test_list_shows_kernels_sizes_dates_and_autotune_winners(tmp_path):
    fake_entries(tmp_path / "cache")
    done = cli("list", cache=tmp_path / "cache")
    assert done.returncode == 0, done.stderr
    assert "2 kernels" in done.stdout and "3x3x3 --cin 3 --cout 64" in done.stdout
    data = json.loads(cli("list", "--json", cache=tmp_path / "cache").stdout)
    winners = {k["kernel"]: k["autotune winner for"] for k in data["kernels"]}
    assert winners == {"conv3d_fwd_k3x3x3_new": "16x3x64x64x64", "conv3d_fwd_k3x3x3_old": "-"}
    assert cli("list", cache=tmp_path / "empty").stdout.startswith(f"cache {tmp_path / 'empty'}: 0 kernels")


def test_show_prints_a_cached_kernel_by_name(tmp_path):
    cache = KernelCache(tmp_path / "cache")
    cache.get_or_build("conv3d_named", "k", lambda f: ((f / "cuda.cu").write_text("// the source\n"),
                                                       {"files": {"source": "cuda.cu"}})[1])
    assert cli("show", "conv3d_named", cache=tmp_path / "cache").stdout == "1  // the source\n"


def test_show_takes_the_last_used_of_a_shared_prefix_and_needs_a_source(tmp_path):
    cache = KernelCache(tmp_path / "cache")
    for name in ("conv3d_fwd_k1_aaaa", "conv3d_fwd_k1_bbbb"):
        cache.get_or_build(name, "k", lambda f, name=name: ((f / "cuda.cu").write_text(f"// {name}\n"),
                                                             {"files": {"source": "cuda.cu"}})[1])
    (cache.root / "conv3d_fwd_k1_aaaa" / "last_used").touch()  # built first, used last
    done = cli("show", "conv3d_fwd_k1", cache=cache.root)
    assert done.stdout == "1  // conv3d_fwd_k1_aaaa\n"
    assert "2 cached kernels start with conv3d_fwd_k1; showing the last used, conv3d_fwd_k1_aaaa" in done.stderr
    fake_entries(tmp_path / "other")
    done = cli("show", "conv3d_fwd_k3x3x3_old", cache=tmp_path / "other")
    assert done.returncode == 2 and "has no source recorded" in done.stderr


def test_show_prefers_the_autotune_winner_of_a_shared_prefix(tmp_path):
    cache = fake_entries(tmp_path / "cache")  # "new" won the autotuning record; "old" was used last
    for entry in cache.entries():
        (entry.path / "cuda.cu").write_text(f"// {entry.name}\n")
        meta = json.loads((entry.path / "meta.json").read_text())
        meta["files"]["source"] = {"path": "cuda.cu", "sha256": ""}
        (entry.path / "meta.json").write_text(json.dumps(meta))
    (cache.root / "conv3d_fwd_k3x3x3_old" / "last_used").touch()
    done = cli("show", "conv3d_fwd_k3x3x3", cache=cache.root)
    assert done.stdout == "1  // conv3d_fwd_k3x3x3_new\n"
    assert "showing an autotune winner, conv3d_fwd_k3x3x3_new" in done.stderr


def test_prune_removes_least_recently_used_first_and_clean_empties(tmp_path):
    cache = fake_entries(tmp_path / "cache")
    (cache.root / "conv3d_fwd_k3x3x3_new" / "last_used").touch()  # used now; "old" never was
    done = cli("prune", "--max-size", "6K", "--json", cache=cache.root)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["removed"] == ["conv3d_fwd_k3x3x3_old"]
    assert [e.name for e in cache.entries()] == ["conv3d_fwd_k3x3x3_new"]
    done = cli("clean", "--json", cache=cache.root)
    assert json.loads(done.stdout)["removed"] == 1 and cache.entries() == [] and cache.records() == []


def test_doctor_reports_and_flags_an_unsafe_cache(tmp_path):
    done = cli("doctor", "--json", cache=tmp_path / "cache")
    report = json.loads(done.stdout)
    assert report["cache"]["path"] == str(tmp_path / "cache") and "torch" in report and "nvcc" in report
    assert done.returncode == (0 if report["problems"] == [] else 1)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache").chmod(0o777)
    done = cli("doctor", cache=tmp_path / "cache")
    assert done.returncode == 1 and "PROBLEM   cache refused" in done.stdout and "writable by group and others" in done.stdout
    assert f"cache     {tmp_path / 'cache'}, exists True, owner_uid" in done.stdout


@pytest.mark.parametrize("args, message", [
    (["emit", "3x3x3 --cin 3 --cout 4 --groups 2"], "in_channels must be divisible by groups"),
    (["emit", "3x3x3 --cin 3"], "the following arguments are required: --cout"),
    (["emit", "seed-a", "--arch", "hopper"], "arch must look like sm_80 or sm_90"),
    (["check", "seed-c"], "unknown workload 'seed-c'"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["build"], "nothing to build: give specs, --file or --model"),
    (["build", "seed-a", "--autotune"], "--autotune needs --model"),
    (["build", "--model", "tests.unit.models_for_tests:small_cnn"], "--model needs --input-shape"),
    (["build", "--model", "tests.unit.models_for_tests", "--input-shape", "1,3,8,8,8"], "package.module:factory"),
    (["build", "--model", "no.such.module:f", "--input-shape", "1,3,8,8,8"], "cannot load model factory"),
    (["build", "--model", "tests.unit.models_for_tests:NOT_A_FACTORY", "--input-shape", "1,3,8,8,8"],
     "is not callable"),
    (["build", "--file", "/nonexistent/specs.json"], "cannot read /nonexistent/specs.json"),
    (["verify", "seed-a", "--input-shape", "1,3,8,8"], "an input shape is N,C,D,H,W"),
    (["prune", "--max-size", "lots"], "a size is a number with K, M, G or T"),
])
def test_bad_arguments_get_a_message_and_status_2(args, message):
    done = cli(*args)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_spec_files_in_json_and_yaml_are_read_and_checked(tmp_path):
    (tmp_path / "specs.json").write_text(json.dumps(["seed-a", {"in_channels": 4, "out_channels": 8, "kernel_size": 3}]))
    (tmp_path / "bad.json").write_text(json.dumps([{"in_channels": 3, "out_channels": 8, "kernel_size": 3, "groups": 2}]))
    (tmp_path / "specs.yaml").write_text("- 3x3x3 --cin 3 --cout 8\n- {in_channels: 2, out_channels: 2, kernel_size: 1}\n")
    (tmp_path / "notalist.json").write_text("{}")
    sys.path.insert(0, str(REPO))
    from cli import specs_from_file, UsageError
    assert len(specs_from_file(tmp_path / "specs.json")) == 2
    with pytest.raises(UsageError, match="must hold a list"):
        specs_from_file(tmp_path / "notalist.json")
    done = cli("build", "--file", str(tmp_path / "bad.json"))
    assert done.returncode == 2 and "in_channels must be divisible by groups" in done.stderr
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed")
    assert [s.in_channels for s in specs_from_file(tmp_path / "specs.yaml")] == [3, 2] and yaml


@GPU_ONLY_BEHAVIOUR
@pytest.mark.parametrize("args", [["build", "seed-a"], ["verify", "seed-a", "--input-shape", "1,3,8,8,8"],
                                  ["bench", "seed-a", "--input-shape", "1,3,8,8,8"]])
def test_gpu_commands_without_a_gpu_say_so(args):
    done = cli(*args)
    assert done.returncode == 2 and "no CUDA GPU present" in done.stderr and "Traceback" not in done.stderr


@GPU_ONLY_BEHAVIOUR
def test_build_model_finds_every_conv_before_it_needs_a_gpu():
    done = cli("build", "--model", "tests.unit.models_for_tests:small_cnn", "--input-shape", "2,3,9,10,11")
    assert "tests.unit.models_for_tests:small_cnn: 3 conv3d calls, 3 specs" in done.stderr
    assert done.returncode == 2 and "no CUDA GPU present" in done.stderr


@GPU_ONLY_BEHAVIOUR
def test_check_without_a_gpu_compiles_with_nvcc_and_says_nothing_ran():
    done = cli("check", "seed-b", "--dtypes", "float32")
    assert done.returncode == 0, done.stderr
    assert "no CUDA GPU present" in done.stdout and "nothing runs" in done.stdout
    row = next(line for line in done.stdout.splitlines() if line.startswith("conv3d_fwd_k3x3x3"))
    assert row.split()[2] == "0"  # spill bytes
