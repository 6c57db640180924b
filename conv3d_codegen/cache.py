"""The on-disk kernel cache: one folder per key, published atomically, built once.

Layout under the root:
  <name>/              one entry: what the build step made, plus meta.json, written last
  .tmp/                entries being built; renamed into place only when complete
  .locks/<name>.lock   per-name flock; the kernel drops it when its holder dies
  failed/<name>/       the last failed build of a name, kept for its source and log

A reader trusts an entry only if meta.json is there, names the expected key and the
sha256 of every file still matches, so a half-written, killed or altered build is never
used: the next caller rebuilds it under the lock.

The cache holds native code that gets loaded, so a root or entry that someone else owns
or that group or others can write is refused; everything the cache creates is private.
Any OS failure (read-only, full, missing) surfaces as one error, CacheUnusable.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import stat
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("conv3d_codegen")

ENV_VAR = "CONV3D_CODEGEN_CACHE"
META = "meta.json"


class CacheUnusable(RuntimeError):
    """The cache directory cannot be used: not writable, full, or not safe to load code from."""


def unsafe(path: Path) -> str | None:
    """Why code under `path` must not be trusted: someone else owns it, or others can write it."""
    st = path.lstat()
    if st.st_uid != os.geteuid():
        return f"{path} belongs to uid {st.st_uid}, not to this user (uid {os.geteuid()})"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{path} is writable by {'group and others' if st.st_mode & stat.S_IWOTH else 'its group'} " \
               f"(mode {stat.S_IMODE(st.st_mode):o})"
    return None


def fallback_cache_dir() -> Path:
    """A private cache in the temporary directory, for when the configured one cannot be used."""
    import tempfile
    return Path(tempfile.gettempdir()) / f"conv3d-codegen-{os.geteuid()}"


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

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def size(self) -> int:
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())

    @property
    def last_used(self) -> float:
        """When a process last loaded it (or when it was built)."""
        try:
            return (self.path / "last_used").stat().st_mtime
        except OSError:
            return self.meta.get("created", 0.0)


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
        for path in [entry.path, meta_path] + [entry.file(role) for role in meta.get("files", {})]:
            try:
                reason = unsafe(path)
            except OSError:
                reason = None  # missing: the sha256 check below says so
            if reason:
                log.warning("cache entry %s refused: %s; it will be rebuilt", name, reason)
                return None
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
        and then find the entry. Raises CacheUnusable if the root cannot be used.
        """
        try:
            self.ensure_root()
            if (entry := self.lookup(name, key)) is not None:
                self.stats.disk_hits += 1
                return entry
            with self._locked(name):
                if (entry := self.lookup(name, key)) is not None:  # built while we waited
                    self.stats.disk_hits += 1
                    return entry
                return self._build(name, key, build)
        except OSError as err:
            raise CacheUnusable(f"cache directory {self.root} cannot be used: {err}") from err

    def ensure_root(self) -> None:
        """Create the root privately if missing; refuse it if it is not safe to load code from."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        if (reason := unsafe(self.root)) is not None:
            raise CacheUnusable(f"refusing cache directory: {reason}. It holds native code that gets "
                                f"loaded; use a directory only you can write (chmod go-w, or set {ENV_VAR}).")

    def _build(self, name: str, key: str, build: Callable[[Path], dict]) -> Entry:
        tmp_root = self.root / ".tmp"
        tmp_root.mkdir(mode=0o700, exist_ok=True)
        for leftover in tmp_root.glob(f"{name}.*"):  # from builds that died; we hold the lock
            shutil.rmtree(leftover, ignore_errors=True)
        tmp = tmp_root / f"{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        tmp.mkdir(mode=0o700)
        try:
            made = build(tmp)
            _make_private(tmp)
            files = {role: {"path": rel, "sha256": _sha256(tmp / rel)} for role, rel in made["files"].items()}
        except Exception:
            self._keep_failed(name, tmp)
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

    def _keep_failed(self, name: str, tmp: Path) -> None:
        """Keep a failed build's folder for its source and log; best effort (the disk may be full)."""
        failed = self.failed_path(name)
        try:
            shutil.rmtree(failed, ignore_errors=True)
            failed.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.rename(tmp, failed)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)

    @contextlib.contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        locks = self.root / ".locks"
        locks.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(locks / f"{name}.lock", "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)  # released by the kernel if this process dies
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def touch(self, entry: Entry) -> None:
        """Mark an entry used now (for `conv3d-gen list` and prune); best effort."""
        try:
            (entry.path / "last_used").touch()
        except OSError:
            pass

    def read_record(self, name: str, key: str) -> dict | None:
        """A small result kept beside the kernels (an autotuning winner), if it is for `key`."""
        path = self.root / "records" / f"{name}.json"
        try:
            record = json.loads(path.read_text())
            return record if record.get("key") == key and unsafe(path) is None else None
        except (OSError, ValueError):
            return None

    def write_record(self, name: str, key: str, data: dict) -> None:
        try:
            self.ensure_root()
            (self.root / "records").mkdir(mode=0o700, exist_ok=True)
            _write_atomically(self.root / "records" / f"{name}.json",
                              json.dumps({"key": key, **data}, indent=2, sort_keys=True))
        except OSError as err:
            raise CacheUnusable(f"cache directory {self.root} cannot be used: {err}") from err

    def entries(self) -> list[Entry]:
        """Every complete entry, for listing."""
        found = []
        for meta_path in sorted(self.root.glob(f"*/{META}")):
            try:
                found.append(Entry(meta_path.parent, json.loads(meta_path.read_text())))
            except (OSError, ValueError):
                continue
        return found

    def records(self) -> list[dict]:
        found = []
        for path in sorted(self.root.glob("records/*.json")):
            try:
                found.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
        return found

    def remove(self, name: str) -> None:
        """Delete one entry, under its lock, so no process reads it half deleted."""
        with self._locked(name):
            gone = self.root / ".tmp" / f"{name}.removed.{uuid.uuid4().hex[:8]}"
            gone.parent.mkdir(mode=0o700, exist_ok=True)
            os.rename(self.root / name, gone)  # loaders see it vanish at once; then delete at leisure
            shutil.rmtree(gone, ignore_errors=True)

    def prune(self, max_bytes: int) -> list[Entry]:
        """Delete the least recently used entries until the kernels take at most max_bytes."""
        entries = sorted(self.entries(), key=lambda e: e.last_used)
        total, removed = sum(e.size for e in entries), []
        for entry in entries:
            if total <= max_bytes:
                break
            total -= entry.size
            self.remove(entry.name)
            removed.append(entry)
        return removed

    def clean(self) -> int:
        """Delete every entry, record, failed build and leftover; returns the bytes freed.
        Lock files stay: deleting one a process holds would let a second builder in."""
        freed = 0
        for entry in self.entries():
            freed += entry.size
            self.remove(entry.name)
        for folder in ("records", "failed", ".tmp"):
            path = self.root / folder
            if path.exists():
                freed += sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
                shutil.rmtree(path, ignore_errors=True)
        return freed


def _make_private(folder: Path) -> None:
    """No group or other write bit on anything a build made (a umask of 002 would leave them)."""
    for path in [folder, *folder.rglob("*")]:
        if not path.is_symlink():
            path.chmod(stat.S_IMODE(path.stat().st_mode) & ~(stat.S_IWGRP | stat.S_IWOTH))


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
