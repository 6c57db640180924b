"""conv3d-gen, run as a user runs it: a separate process, checked by exit status and output."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
NO_GPU = not torch.cuda.is_available()


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "cli.py"), *args], capture_output=True, text=True,
                          cwd=REPO, timeout=300)


def test_emit_prints_the_source_without_a_gpu():
    done = cli("emit", "3x5x7 --cin 3 --cout 64")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("// ----") and "conv3d_fwd_k3x5x7_s1_p0_d1_g1_ci3_co64_f32" in done.stdout
    assert "// cache key: spec=" in done.stdout and "// kd=2 kh=4 kw=6" in done.stdout


def test_emit_takes_workload_names_line_numbers_and_the_generic_kernel():
    numbered = cli("emit", "seed-b", "-n", "--arch", "sm_80").stdout.splitlines()
    assert numbered[0].startswith("  1  // ----") and "arch=sm_80" in numbered[3]
    generic = cli("emit", "3x3x3 --cin 2 --cout 2 --dtype bf16", "--generic")
    assert "conv3d_fwd_generic_bf16" in generic.stdout and "__nv_bfloat16" in generic.stdout


@pytest.mark.parametrize("args, message", [
    (["emit", "3x3x3 --cin 3 --cout 4 --groups 2"], "in_channels must be divisible by groups"),
    (["emit", "3x3x3 --cin 3"], "the following arguments are required: --cout"),
    (["emit", "seed-a", "--arch", "hopper"], "arch must look like sm_80 or sm_90"),
    (["check", "seed-c"], "unknown workload 'seed-c'"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_bad_arguments_get_a_message_and_status_2(args, message):
    done = cli(*args)
    assert done.returncode == 2 and message in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.skipif(not NO_GPU, reason="checks the no-GPU behaviour; this machine has a GPU")
def test_build_without_a_gpu_says_so():
    done = cli("build", "seed-a")
    assert done.returncode == 2 and "no CUDA GPU present" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.skipif(not NO_GPU, reason="checks the no-GPU behaviour; this machine has a GPU")
def test_check_without_a_gpu_compiles_with_nvcc_and_says_nothing_ran():
    done = cli("check", "seed-b", "--dtypes", "float32")
    assert done.returncode == 0, done.stderr
    assert "no CUDA GPU present" in done.stdout and "nothing runs" in done.stdout
    row = next(line for line in done.stdout.splitlines() if line.startswith("conv3d_fwd_k3x3x3"))
    assert row.split()[2] == "0"  # spill bytes
