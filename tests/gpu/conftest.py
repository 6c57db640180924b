"""GPU tests: skipped, saying why, where there is no CUDA GPU. One fresh cache per session,
into which every spec of the matrix is built up front, in parallel (builds dominate)."""
import os
import time
from pathlib import Path

import pytest
import torch

from conv3d_codegen.cache import KernelCache
from conv3d_codegen.dispatch import Dispatcher, set_default_dispatcher

from .matrix import CASES

NO_GPU = "no CUDA GPU: torch.cuda.is_available() is False"


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        for item in items:
            if "tests/gpu" in str(item.fspath):
                item.add_marker(pytest.mark.skip(reason=NO_GPU))


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory):
    """Fresh for each session; CONV3D_TEST_CACHE names one to reuse (for a run under
    compute-sanitizer, with the kernels built beforehand outside it)."""
    if os.environ.get("CONV3D_TEST_CACHE"):
        return Path(os.environ["CONV3D_TEST_CACHE"])
    return tmp_path_factory.mktemp("kernel-cache")


@pytest.fixture(scope="session")
def dispatcher(cache_root) -> Dispatcher:
    dispatcher = Dispatcher(KernelCache(cache_root))
    started = time.perf_counter()
    built = dispatcher.prebuild(case.spec for case in CASES)
    failures = {spec.tag: err for spec, err in built.items() if isinstance(err, Exception)}
    assert not failures, failures
    print(f"\nbuilt {len(built)} kernels in {time.perf_counter() - started:.1f} s "
          f"({dispatcher.cache.stats.builds} builds)")
    return dispatcher


@pytest.fixture(scope="session", autouse=True)
def current_dispatcher(dispatcher):
    """The session's dispatcher is the process's current one, so conv3d(), Conv3d and every
    backward pass (which uses the dispatcher current when it runs) build into the session cache."""
    previous = set_default_dispatcher(dispatcher)
    yield dispatcher
    set_default_dispatcher(previous)
