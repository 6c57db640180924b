"""A process that asks a KernelCache for one entry, built by a stand-in build step.

    python cache_worker.py ROOT NAME KEY SECONDS

The stand-in build appends this pid to ROOT/../builds.log, sleeps SECONDS (a slow nvcc),
and writes a file; the worker prints that file's content once the entry is ready.
"""
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from conv3d_codegen.cache import KernelCache  # noqa: E402


def stand_in_build(folder: Path, log: Path, seconds: float) -> dict:
    with open(log, "a") as f:
        f.write(f"{os.getpid()}\n")
    (folder / "started").write_text("")
    time.sleep(seconds)
    (folder / "lib.so").write_text(f"built by {os.getpid()}")
    return {"files": {"library": "lib.so"}, "info": {"builder": os.getpid()}}


if __name__ == "__main__":
    root, name, key, seconds = Path(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4])
    entry = KernelCache(root).get_or_build(name, key, lambda f: stand_in_build(f, root.parent / "builds.log", seconds))
    print(entry.file("library").read_text())
