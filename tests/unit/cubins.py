"""Emitted kernels compiled alone with nvcc, no GPU needed: the targets the unit tests compile
for, and a parallel compile that skips the test where nvcc is missing."""
import dataclasses
from concurrent.futures import ThreadPoolExecutor

import pytest

from conv3d_codegen.build import Target, compile_cubin, nvcc_path

SM90 = Target(arch="sm_90", torch_version="2.11.0", cuda_version="13.0.88")
SM80 = dataclasses.replace(SM90, arch="sm_80")


def compile_all(jobs: list) -> list:
    """(source, target, ptxas report) of every (source, target) job, two compiles at a time."""
    if nvcc_path() is None:
        pytest.skip("nvcc not found: set CUDA_HOME or put nvcc on PATH")
    with ThreadPoolExecutor(2) as pool:
        found = list(pool.map(lambda job: compile_cubin(*job), jobs))
    return [(source, target, report) for (source, target), report in zip(jobs, found)]
