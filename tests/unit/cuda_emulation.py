"""Running an emitted kernel on the CPU: the source rendered with emulate=True is compiled by g++
against cuda_emulator.h (next to this file) into a shared library, and its own C launcher is
called through ctypes on CPU tensors. See cuda_emulator.h for what is emulated and checked.

For the templates that support it (render_mma_staged, render_wgrad_mma); x86-64 Linux only (the emulator switches
thread stacks in assembly)."""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import torch

from conv3d_codegen.render import Source

HERE = Path(__file__).resolve().parent


def cuda_include() -> Path | None:
    """The CUDA toolkit's include folder (for cuda_bf16.h and the runtime's types), or None."""
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        homes.append(str(Path(os.path.realpath(nvcc)).parent.parent))
    for home in homes:
        if home and (Path(home) / "include" / "cuda_bf16.h").exists():
            return Path(home) / "include"
    return None


def unavailable() -> str | None:
    """Why kernels cannot be emulated here, or None."""
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        return f"the CUDA emulator runs on x86-64 Linux, not {platform.system()} {platform.machine()}"
    if shutil.which("g++") is None:
        return "g++ not found"
    if cuda_include() is None:
        return "the CUDA headers (cuda_bf16.h) were not found: set CUDA_HOME"
    return None


class EmulationError(RuntimeError):
    """The emulator found a fault: out-of-bounds or misaligned access, deadlock."""


@dataclass
class EmulatedKernel:
    source: Source
    library: ctypes.CDLL

    def __call__(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor,
                 args: dict[str, int], sms: int = 2, blocks_per_sm: int = 1, eager_copies: bool = False,
                 extra: tuple[torch.Tensor, ...] = ()) -> None:
        """Run the launcher on CPU tensors (contiguous) with a grid of sms x blocks_per_sm blocks
        (fewer if there are fewer tiles); cp.async lands when issued (eager) or when waited for.
        The four tensors are the entry point's pointers in order (a wgrad kernel's: x, grad_out,
        grad_bias, grad_weight); `extra` are other tensors it may touch (a workspace)."""
        lib = self.library
        lib.emu_reset()
        lib.emu_configure(sms, blocks_per_sm, int(eager_copies))
        for t in (x, weight, bias, out, *extra):
            if t is not None:
                assert t.device.type == "cpu" and t.is_contiguous()
                lib.emu_register(ctypes.c_void_p(t.data_ptr()), ctypes.c_size_t(t.numel() * t.element_size()))
        values = [args[a] for a in self.source.arg_names]
        launch = getattr(lib, self.source.entry)
        launch.argtypes = [ctypes.c_void_p] * 4 + [ctypes.POINTER(ctypes.c_longlong), ctypes.c_int, ctypes.c_void_p]
        launch.restype = ctypes.c_int
        code = launch(x.data_ptr(), weight.data_ptr(), None if bias is None else bias.data_ptr(), out.data_ptr(),
                      (ctypes.c_longlong * len(values))(*values), len(values), None)
        error = lib.emu_error().decode()
        if code or error:
            raise EmulationError(f"{self.source.name}: launch returned {code}: {error}")


def build(source: Source, folder: Path) -> EmulatedKernel:
    """Compile an emulate=True source into `folder` (once per source text) and load it."""
    text = source.text("emulated")
    digest = hashlib.sha256((text + (HERE / "cuda_emulator.h").read_text()).encode()).hexdigest()[:12]
    library = folder / f"{source.name}_{digest}.so"
    if not library.exists():
        cpp = library.with_suffix(".cpp")
        cpp.write_text(text)
        done = subprocess.run(["g++", "-std=c++20", "-O1", "-w", "-fPIC", "-shared", f"-I{cuda_include()}",
                               f"-I{HERE}", str(cpp), "-o", str(library)], capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"g++ failed on {cpp}:\n{done.stderr[-4000:]}")
    lib = ctypes.CDLL(str(library))
    lib.emu_error.restype = ctypes.c_char_p
    lib.emu_register.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    lib.emu_configure.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    return EmulatedKernel(source, lib)
