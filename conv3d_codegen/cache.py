"""The on-disk kernel cache: one folder per key, published atomically, built once.

Layout under the root:
  <name>/              one entry: what the build step made, plus meta.json, written last
  .tmp/                entries being built; renamed into place only when complete
  .locks/<name>.lock   per-name flock; the kernel drops it when its holder dies
  failed/<name>/       the last failed build of a name, kept for its source and log

A reader trusts an entry only if meta.json is there, names the expected key and the
sha256 of every file still matches, so a half-written, killed or altered build is never
used: the next caller rebuilds it under the lock.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("conv3d_codegen")

ENV_VAR = "CONV3D_CODEGEN_CACHE"
META = "meta.json"


def default_cache_dir() -> Path:
    """$CONV3D_CODEGEN_CACHE; else the project's cache/ when running from a writable source
    checkout; else the per-user cache directory. Never relative to the working directory."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser().resolve()
    project = Path(__file__).resolve().parent.parent / "cache"
    if (project / "README.md").is_file() and os.access(project, os.W_OK):
        return project
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "conv3d-codegen"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Entry:
    path: Path
    meta: dict

    def file(self, role: str) -> Path:
        return self.path / self.meta["files"][role]["path"]


@dataclass
class CacheStats:
    builds: int = 0      # build steps this object ran
    disk_hits: int = 0   # entries found complete on disk


@dataclass
class KernelCache:
    root: Path = field(default_factory=default_cache_dir)
    stats: CacheStats = field(default_factory=CacheStats)

    def __post_init__(self):
        self.root = Path(self.root)

    def failed_path(self, name: str) -> Path:
        return self.root / "failed" / name

    def lookup(self, name: str, key: str) -> Entry | None:
        """The complete, intact entry for `key`, or None."""
        meta_path = self.root / name / META
        try:
            meta = json.loads(meta_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            log.warning("cache entry %s has unreadable metadata (%s); it will be rebuilt", name, err)
            return None
        if meta.get("key") != key:
            return None
        entry = Entry(self.root / name, meta)
        for role, recorded in meta.get("files", {}).items():
            try:
                intact = _sha256(entry.file(role)) == recorded["sha256"]
            except OSError:
                intact = False
            if not intact:
                log.warning("cache entry %s: %s %s is missing or altered since it was built; "
                            "it will be rebuilt", name, role, recorded["path"])
                return None
        return entry

    def get_or_build(self, name: str, key: str, build: Callable[[Path], dict]) -> Entry:
        """The entry for `key`, built by `build(folder)` if no intact one exists.

        `build` fills an empty folder and returns {"files": {role: relative path}, "info": {...}}.
        Processes asking for the same name at once build it once; the others wait on the lock
        and then find the entry.
        """
        if (entry := self.lookup(name, key)) is not None:
            self.stats.disk_hits += 1
            return entry
        with self._locked(name):
            if (entry := self.lookup(name, key)) is not None:  # built while we waited
                self.stats.disk_hits += 1
                return entry
            return self._build(name, key, build)

    def _build(self, name: str, key: str, build: Callable[[Path], dict]) -> Entry:
        tmp_root = self.root / ".tmp"
        for leftover in tmp_root.glob(f"{name}.*"):  # from builds that died; we hold the lock
            shutil.rmtree(leftover, ignore_errors=True)
        tmp = tmp_root / f"{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            made = build(tmp)
            files = {role: {"path": rel, "sha256": _sha256(tmp / rel)} for role, rel in made["files"].items()}
        except Exception:
            failed = self.failed_path(name)
            shutil.rmtree(failed, ignore_errors=True)
            failed.parent.mkdir(parents=True, exist_ok=True)
            os.rename(tmp, failed)
            raise
        except BaseException:  # interrupted: nothing worth keeping
            shutil.rmtree(tmp, ignore_errors=True)
            raise

        final = self.root / name
        if final.exists():  # stale or damaged: move it aside first, rename cannot replace a folder
            stale = tmp_root / f"{name}.stale.{uuid.uuid4().hex[:8]}"
            os.rename(final, stale)
            shutil.rmtree(stale, ignore_errors=True)
        os.rename(tmp, final)
        meta = {"key": key, "name": name, "files": files, "info": made.get("info", {}),
                "created": time.time()}
        _write_atomically(final / META, json.dumps(meta, indent=2, sort_keys=True))
        self.stats.builds += 1
        return Entry(final, meta)

    @contextlib.contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        locks = self.root / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        with open(locks / f"{name}.lock", "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)  # released by the kernel if this process dies
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def entries(self) -> list[Entry]:
        """Every complete entry, for listing."""
        found = []
        for meta_path in sorted(self.root.glob(f"*/{META}")):
            try:
                found.append(Entry(meta_path.parent, json.loads(meta_path.read_text())))
            except (OSError, ValueError):
                continue
        return found


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
