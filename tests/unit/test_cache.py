"""The on-disk cache with a stand-in build step: publishing, locking, faults, several processes."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conv3d_codegen import cache as cache_module
from conv3d_codegen.cache import KernelCache

WORKER = Path(__file__).with_name("cache_worker.py")


def build_step(calls: list, content: str = "binary"):
    def build(folder: Path) -> dict:
        calls.append(folder)
        (folder / "lib.so").write_text(content)
        return {"files": {"library": "lib.so"}, "info": {"build_seconds": 0.0}}
    return build


def worker(root: Path, seconds: float, key: str = "key1") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WORKER), str(root), "conv3d_x", key, str(seconds)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def root(tmp_path) -> Path:
    return tmp_path / "cache"


def test_first_call_builds_then_hits(root):
    calls = []
    entry = KernelCache(root).get_or_build("conv3d_x", "key1", build_step(calls))
    assert entry.file("library").read_text() == "binary" and len(calls) == 1
    again = KernelCache(root)  # a fresh object, as a new process would have
    assert again.get_or_build("conv3d_x", "key1", build_step(calls)).path == entry.path
    assert len(calls) == 1 and again.stats.builds == 0 and again.stats.disk_hits == 1


def test_an_entry_is_invisible_until_published_and_meta_comes_last(root):
    cache = KernelCache(root)

    def build(folder: Path) -> dict:
        assert cache.lookup("conv3d_x", "key1") is None and not (root / "conv3d_x").exists()
        (folder / "lib.so").write_text("binary")
        return {"files": {"library": "lib.so"}}

    entry = cache.get_or_build("conv3d_x", "key1", build)
    meta = json.loads((entry.path / "meta.json").read_text())
    assert meta["key"] == "key1" and meta["files"]["library"]["path"] == "lib.so"
    assert len(meta["files"]["library"]["sha256"]) == 64
    assert not list((root / ".tmp").iterdir())


def test_an_entry_without_meta_is_rebuilt(root):
    (root / "conv3d_x").mkdir(parents=True)
    (root / "conv3d_x" / "lib.so").write_text("half written")
    calls = []
    entry = KernelCache(root).get_or_build("conv3d_x", "key1", build_step(calls))
    assert len(calls) == 1 and entry.file("library").read_text() == "binary"


def test_an_altered_file_is_detected_and_rebuilt(root, caplog):
    calls = []
    entry = KernelCache(root).get_or_build("conv3d_x", "key1", build_step(calls))
    entry.file("library").write_text("tampered")
    assert KernelCache(root).lookup("conv3d_x", "key1") is None
    assert "library lib.so is missing or altered" in caplog.text
    assert KernelCache(root).get_or_build("conv3d_x", "key1", build_step(calls)).file("library").read_text() == "binary"
    assert len(calls) == 2


def test_an_entry_for_another_key_is_replaced(root):
    calls = []
    KernelCache(root).get_or_build("conv3d_x", "old-key", build_step(calls, "old"))
    entry = KernelCache(root).get_or_build("conv3d_x", "new-key", build_step(calls, "new"))
    assert entry.file("library").read_text() == "new" and entry.meta["key"] == "new-key"


def test_a_failed_build_publishes_nothing_keeps_its_files_and_frees_the_lock(root):
    cache = KernelCache(root)

    def failing(folder: Path) -> dict:
        (folder / "kernel.cu").write_text("broken source")
        raise RuntimeError("nvcc said no")

    with pytest.raises(RuntimeError, match="nvcc said no"):
        cache.get_or_build("conv3d_x", "key1", failing)
    assert cache.lookup("conv3d_x", "key1") is None
    assert (cache.failed_path("conv3d_x") / "kernel.cu").read_text() == "broken source"
    calls = []
    assert cache.get_or_build("conv3d_x", "key1", build_step(calls)).file("library").read_text() == "binary"


def test_several_processes_at_once_build_once(root):
    procs = [worker(root, seconds=1.0) for _ in range(8)]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    builders = (root.parent / "builds.log").read_text().split()
    assert len(builders) == 1
    assert {out.strip() for out, _ in outputs} == {f"built by {builders[0]}"}


def test_a_build_killed_midway_leaves_no_lock_and_the_next_call_rebuilds(root):
    victim = worker(root, seconds=60)
    deadline = time.monotonic() + 30
    while not list((root / ".tmp").glob("conv3d_x.*/started")):  # the build step is running
        assert time.monotonic() < deadline and victim.poll() is None, "worker never started its build"
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert KernelCache(root).lookup("conv3d_x", "key1") is None
    survivor = worker(root, seconds=0.1)
    out, err = survivor.communicate(timeout=30)  # a held lock would hang here
    assert survivor.returncode == 0, err
    assert out.strip() == f"built by {survivor.pid}"
    assert len((root.parent / "builds.log").read_text().split()) == 2
    assert not list((root / ".tmp").iterdir())  # the killed build's folder was cleared


def test_cache_dir_from_environment_then_checkout_then_user(monkeypatch, tmp_path):
    monkeypatch.setenv(cache_module.ENV_VAR, str(tmp_path / "mine"))
    assert cache_module.default_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv(cache_module.ENV_VAR)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    checkout = Path(cache_module.__file__).resolve().parent.parent / "cache"
    expected = checkout if os.access(checkout, os.W_OK) else Path.home() / ".cache" / "conv3d-codegen"
    monkeypatch.chdir(tmp_path)  # never relative to the working directory
    assert cache_module.default_cache_dir() == expected


@pytest.mark.parametrize("damage", ["truncated", "other sha256"])
def test_damaged_metadata_is_detected_and_rebuilt(root, caplog, damage):
    calls = []
    entry = KernelCache(root).get_or_build("conv3d_x", "key1", build_step(calls))
    meta_path = entry.path / "meta.json"
    if damage == "truncated":
        meta_path.write_text(meta_path.read_text()[:40])
    else:
        meta = json.loads(meta_path.read_text())
        meta["files"]["library"]["sha256"] = "0" * 64
        meta_path.write_text(json.dumps(meta))
    rebuilt = KernelCache(root).get_or_build("conv3d_x", "key1", build_step(calls))
    assert len(calls) == 2 and rebuilt.file("library").read_text() == "binary"
    assert ("unreadable metadata" if damage == "truncated" else "missing or altered") in caplog.text
