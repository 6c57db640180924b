"""Building: a rendered Source -> a shared library, with load_inline; and the cache key.

The emitted CUDA includes no torch header and exports a C entry point, so load_inline runs
with no_implicit_headers and no pybind module: a build is one nvcc call on the kernel, an
empty main.cpp and a link. `compile_cubin` compiles the same text alone with nvcc, which
works on machines without a GPU (CI) and reports registers and spills.
"""
from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .render import Source, generator_hash

# Flags of our own; load_inline adds torch's COMMON_NVCC_FLAGS (no implicit half conversions,
# relaxed constexpr) and -fPIC, -std=c++20. No fast-math: results must match torch's.
NVCC_FLAGS = ("-O3",)


class KernelBuildError(RuntimeError):
    """A kernel failed to compile. Carries what a user needs to look into it."""

    def __init__(self, name: str, identity: str, source_path: Path | None, log: str):
        super().__init__(name)
        self.name, self.identity, self.source_path, self.log = name, identity, source_path, log

    def __str__(self) -> str:
        return (f"failed to build kernel {self.name}\n  spec:   {self.identity}\n"
                f"  source: {self.source_path}\n  compiler log:\n{self.log.rstrip()}")


def nvcc_path() -> str | None:
    """The nvcc load_inline will use, found in the order torch.utils.cpp_extension looks
    (not imported here: it costs a warm load ~100 ms)."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home is None:
        on_path = shutil.which("nvcc")
        home = os.path.dirname(os.path.dirname(on_path)) if on_path else "/usr/local/cuda"
    nvcc = os.path.join(home, "bin", "nvcc")
    return nvcc if os.path.exists(nvcc) else shutil.which("nvcc")


@functools.cache
def nvcc_version() -> str:
    """nvcc's release and build, e.g. '13.0.88'; 'none' when there is no nvcc."""
    nvcc = nvcc_path()
    if nvcc is None:
        return "none"
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    found = re.search(r"V(\d+\.\d+\.\d+)", out)
    return found.group(1) if found else "unknown"


@dataclass(frozen=True)
class Target:
    """What a binary is built for and with: GPU arch and toolchain versions."""

    arch: str                       # "sm_90"
    torch_version: str = torch.__version__
    cuda_version: str = ""          # nvcc's; filled in by the constructors

    @classmethod
    def for_device(cls, device: torch.device | int | None = None) -> "Target":
        major, minor = torch.cuda.get_device_capability(device)
        return cls.for_arch(f"sm_{major}{minor}")

    @classmethod
    def for_arch(cls, arch: str) -> "Target":
        if not re.fullmatch(r"sm_\d{2,3}a?", arch):
            raise ValueError(f"arch must look like sm_80 or sm_90, got {arch!r}")
        return cls(arch=arch, cuda_version=nvcc_version())

    @property
    def flags(self) -> list[str]:
        """nvcc's flags. sm_90 builds for sm_90a, its architecture-specific target, which wgmma
        needs (render_wgmma); code for either runs on compute capability 9.0 only."""
        cc = self.arch.removeprefix("sm_")
        cc = "90a" if cc == "90" else cc
        return [*NVCC_FLAGS, f"-gencode=arch=compute_{cc},code=sm_{cc}"]


def _sha(text: str, n: int = 16) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def kernel_key(source: Source, target: Target) -> str:
    """Named parts, each a hash or version of one thing that changes the binary."""
    parts = {
        "spec": _sha(source.identity),
        "src": _sha(source.body),
        "flags": _sha(" ".join(target.flags)),
        "torch": target.torch_version,
        "cuda": target.cuda_version,
        "arch": target.arch,
        "gen": generator_hash(),
    }
    return "-".join(f"{k}={v}" for k, v in parts.items())


def library_name(source: Source, key: str) -> str:
    """Readable name plus a digest of the key: conv3d_fwd_k3x5x7_..._f32_1a2b3c4d."""
    return f"{source.name}_{_sha(key, 8)}"


def build_library(source: Source, target: Target, key: str, out_dir: Path) -> dict:
    """Compile `source` into out_dir. Returns the files made, by role and relative to out_dir,
    and facts about the build, in the form KernelCache.get_or_build expects."""
    from torch.utils.cpp_extension import load_inline

    name = library_name(source, key)
    build_dir = out_dir / "build"
    build_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        path = load_inline(name=name, cpp_sources="", cuda_sources=[source.text(key)],
                           extra_cuda_cflags=target.flags, build_directory=str(build_dir),
                           with_cuda=True, is_python_module=False, no_implicit_headers=True,
                           verbose=False)
    except Exception as err:  # load_inline raises RuntimeError with the ninja/nvcc output
        cu = build_dir / "cuda.cu"
        raise KernelBuildError(name, source.identity, cu if cu.exists() else None, str(err)) from None
    return {"files": {"library": os.path.relpath(path, out_dir), "source": "build/cuda.cu"},
            "info": {"build_seconds": round(time.perf_counter() - started, 2), "arch": target.arch,
                     "template": source.template, "identity": source.identity, "params": source.params}}


@dataclass(frozen=True)
class PtxasReport:
    registers: int
    stack_bytes: int
    spill_store_bytes: int
    spill_load_bytes: int
    shared_bytes: int
    seconds: float
    serialized_wgmma: bool = False  # ptxas's C7511-C7515: it made the wgmmas wait on each other


def compile_cubin(source: Source, target: Target, key: str = "standalone") -> PtxasReport:
    """Compile the emitted text alone with nvcc to a cubin, with the flags load_inline uses."""
    with tempfile.TemporaryDirectory(prefix="conv3d_cubin_") as tmp:
        log, seconds = _nvcc_alone(source, target, key, Path(tmp) / f"{source.name}.cubin", ["-cubin"])

    def most(pattern: str) -> int:  # over every kernel of the source (wgrad has two)
        return max((int(v) for v in re.findall(pattern, log)), default=0)

    return PtxasReport(registers=most(r"Used (\d+) registers"),
                       stack_bytes=most(r"(\d+) bytes stack frame"),
                       spill_store_bytes=most(r"(\d+) bytes spill stores"),
                       spill_load_bytes=most(r"(\d+) bytes spill loads"),
                       shared_bytes=most(r"(\d+) bytes smem"), seconds=seconds,
                       serialized_wgmma="wgmma.mma_async instructions are serialized" in log)


def compile_shared_library(source: Source, target: Target, out: Path, key: str = "standalone") -> Path:
    """The emitted text alone as a shared library, with no torch at all (tests the C ABI)."""
    _nvcc_alone(source, target, key, out, ["-shared", "-Xcompiler", "-fPIC"])
    return out


def _nvcc_alone(source: Source, target: Target, key: str, out: Path, mode: list[str]) -> tuple[str, float]:
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS

    nvcc = nvcc_path()
    if nvcc is None:
        raise KernelBuildError(source.name, source.identity, None, "nvcc not found (set CUDA_HOME)")
    cu = out.with_suffix(".cu")
    cu.write_text(source.text(key))
    cmd = [nvcc, *COMMON_NVCC_FLAGS, *target.flags, "-std=c++20", *mode, "-Xptxas", "-v", "-o", str(out), str(cu)]
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise KernelBuildError(source.name, source.identity, cu, done.stdout + done.stderr)
    return done.stdout + done.stderr, time.perf_counter() - started
