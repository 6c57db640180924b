"""The cache under hostile or broken conditions, all real: other owners, loose permissions,
a root that cannot exist, writes past a file-size limit; and the loader's fallbacks."""
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conv3d_codegen.build import Target, compile_shared_library, nvcc_path
from conv3d_codegen.cache import CacheUnusable, KernelCache
from conv3d_codegen.kernel import KernelLoader
from conv3d_codegen.render import render_direct
from conv3d_codegen.spec import ConvSpec

from .test_cache import build_step

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="giving a folder to another user needs root")
OTHER_UID = 12345


def test_fresh_cache_folders_are_private_even_under_a_loose_umask(tmp_path):
    old = os.umask(0o002)
    try:
        entry = KernelCache(tmp_path / "cache").get_or_build("conv3d_x", "key1", build_step([]))
    finally:
        os.umask(old)
    assert (tmp_path / "cache").stat().st_mode & 0o777 == 0o700
    for path in [entry.path, *entry.path.rglob("*")]:
        assert path.stat().st_mode & 0o022 == 0, path


def test_a_root_others_can_write_is_refused(tmp_path):
    root = tmp_path / "cache"
    root.mkdir()
    root.chmod(0o777)
    with pytest.raises(CacheUnusable, match=r"writable by group and others \(mode 777\).*chmod go-w"):
        KernelCache(root).get_or_build("conv3d_x", "key1", build_step([]))
    assert list(root.iterdir()) == []


@ROOT_ONLY
def test_a_root_someone_else_owns_is_refused(tmp_path):
    root = tmp_path / "cache"
    root.mkdir(mode=0o700)
    os.chown(root, OTHER_UID, OTHER_UID)
    with pytest.raises(CacheUnusable, match=f"belongs to uid {OTHER_UID}, not to this user"):
        KernelCache(root).get_or_build("conv3d_x", "key1", build_step([]))


def test_an_entry_others_can_write_is_refused_and_rebuilt(tmp_path, caplog):
    cache, calls = KernelCache(tmp_path / "cache"), []
    entry = cache.get_or_build("conv3d_x", "key1", build_step(calls))
    entry.file("library").chmod(0o666)
    again = KernelCache(tmp_path / "cache").get_or_build("conv3d_x", "key1", build_step(calls))
    assert "refused" in caplog.text and "lib.so is writable by group and others" in caplog.text
    assert len(calls) == 2 and again.file("library").stat().st_mode & 0o022 == 0


@ROOT_ONLY
def test_an_entry_someone_else_owns_is_refused_and_rebuilt(tmp_path, caplog):
    cache, calls = KernelCache(tmp_path / "cache"), []
    entry = cache.get_or_build("conv3d_x", "key1", build_step(calls))
    os.chown(entry.file("library"), OTHER_UID, OTHER_UID)
    KernelCache(tmp_path / "cache").get_or_build("conv3d_x", "key1", build_step(calls))
    assert f"belongs to uid {OTHER_UID}" in caplog.text and len(calls) == 2


def test_a_root_that_cannot_exist_is_unusable(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(CacheUnusable, match="cannot be used: .*Not a directory"):
        KernelCache(blocker / "cache").get_or_build("conv3d_x", "key1", build_step([]))


FULL_DISK = """
import resource, signal, sys
sys.path.insert(0, {repo!r})
from conv3d_codegen.cache import CacheUnusable, KernelCache
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)       # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
def build(folder):
    (folder / "lib.so").write_bytes(b"x" * 65536)  # a library bigger than the space left
    return {{"files": {{"library": "lib.so"}}}}
try:
    KernelCache({root!r}).get_or_build("conv3d_x", "key1", build)
except CacheUnusable as err:
    print("CacheUnusable:", err)
"""


def test_writes_failing_for_lack_of_space_make_the_cache_unusable(tmp_path):
    code = FULL_DISK.format(repo=str(Path(__file__).resolve().parents[2]), root=str(tmp_path / "cache"))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "CacheUnusable: cache directory" in done.stdout and "File too large" in done.stdout
    assert KernelCache(tmp_path / "cache").lookup("conv3d_x", "key1") is None


def nvcc_alone(source, target, key, folder: Path) -> dict:
    """A real build step that needs no GPU and no CUDA torch: nvcc makes the library alone."""
    compile_shared_library(source, target, folder / "kernel.so", key)
    return {"files": {"library": "kernel.so"}}


@pytest.fixture
def source():
    if nvcc_path() is None:
        pytest.skip("nvcc not found: set CUDA_HOME or put nvcc on PATH")
    return render_direct(ConvSpec.from_text("1x1x1 --cin 2 --cout 4"))


def test_the_loader_falls_back_to_a_private_temporary_cache(tmp_path, source, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    loader = KernelLoader(KernelCache(blocker / "cache"), fallback=KernelCache(tmp_path / "fallback"),
                          build=nvcc_alone)
    with caplog.at_level(logging.WARNING, logger="conv3d_codegen"):
        kernel = loader.load(source, Target.for_arch("sm_90"))
        loader.load(render_direct(ConvSpec.from_text("1x1x1 --cin 2 --cout 8")), Target.for_arch("sm_90"))
    assert kernel.entry.path.parent == tmp_path / "fallback"
    assert [r.getMessage().count("using") for r in caplog.records] == [1]  # said once


def test_with_no_usable_cache_the_loader_says_so(tmp_path, source):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    loader = KernelLoader(KernelCache(blocker / "one"), fallback=KernelCache(blocker / "two"), build=nvcc_alone)
    with pytest.raises(CacheUnusable, match="two cannot be used"):
        loader.load(source, Target.for_arch("sm_90"))
