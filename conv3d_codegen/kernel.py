"""Loaded kernels: a library from the cache, called through ctypes on torch's current stream."""
from __future__ import annotations

import ctypes
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from .build import KernelBuildError, Target, build_library, kernel_key, library_name
from .cache import CacheUnusable, Entry, KernelCache, fallback_cache_dir
from .render import OUTPUT_ALIGNMENT, Source
from .spec import ConvSpec

log = logging.getLogger("conv3d_codegen")


def launch_args(spec: ConvSpec, input_shape: torch.Size | tuple[int, ...]) -> dict[str, int]:
    """Every run-time value any template may take, by the names in render.*_ARGS."""
    n, _, d, h, w = input_shape
    od, oh, ow = spec.output_size(d, h, w)
    kd, kh, kw = spec.kernel_size
    sd, sh, sw = spec.stride
    pd, ph, pw = spec.pad_before
    dd, dh, dw = spec.dilation
    return dict(n=n, ci=spec.in_channels, co=spec.out_channels, d=d, h=h, w=w, od=od, oh=oh, ow=ow,
                kd=kd, kh=kh, kw=kw, sd=sd, sh=sh, sw=sw, pd=pd, ph=ph, pw=pw, dd=dd, dh=dh, dw=dw,
                groups=spec.groups, has_bias=int(spec.bias))


class Kernel:
    """One built kernel. Call it with CUDA tensors and a preallocated output: the input `x`
    and `out` dense in the kernel's memory format (`memory_format`: contiguous for 'ncdhw'
    kernels, channels_last_3d for 'ndhwc' ones, whose output must also be 16-byte aligned for
    vector stores), the other two contiguous.

    An `x` or `out` of the other format still gives the right result, through copies: `x` is
    converted, and the kernel writes a temporary that is copied into `out`. The op passes the
    kernel's format, so only callers that do not (a tuner that makes every input contiguous)
    pay for them."""

    def __init__(self, source: Source, name: str, entry: Entry):
        self.source, self.name, self.entry = source, name, entry
        self._lib = ctypes.CDLL(str(entry.file("library")))
        self._launch = getattr(self._lib, source.entry)
        self._launch.argtypes = [ctypes.c_void_p] * 4 + [ctypes.POINTER(ctypes.c_longlong),
                                                         ctypes.c_int, ctypes.c_void_p]
        self._launch.restype = ctypes.c_int
        self._error_string = self._lib.conv3d_codegen_error_string
        self._error_string.argtypes, self._error_string.restype = [ctypes.c_int], ctypes.c_char_p

    @property
    def memory_format(self) -> torch.memory_format:
        return self.source.memory_format

    def __call__(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 out: torch.Tensor, args: dict[str, int]) -> torch.Tensor:
        for t in (x, weight, out) + ((bias,) if bias is not None else ()):
            if not t.is_cuda:
                raise ValueError(f"{self.name}: tensors must be CUDA tensors, got one on {t.device}")
        for t in (weight,) + ((bias,) if bias is not None else ()):
            if not t.is_contiguous():
                raise ValueError(f"{self.name}: the weight and bias tensors must be contiguous")
        fmt = self.memory_format
        x = x.contiguous(memory_format=fmt)
        aligned = self.source.layout == "ncdhw" or out.data_ptr() % OUTPUT_ALIGNMENT == 0
        if not (out.is_contiguous(memory_format=fmt) and aligned):
            return out.copy_(self(x, weight, bias, torch.empty_like(out, memory_format=fmt), args))
        self._launch_on(x, weight, bias, out, args)
        return out

    def _launch_on(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor,
                   args: dict[str, int]) -> None:
        values = [args[a] for a in self.source.arg_names]
        with torch.cuda.device(x.device):
            code = self._launch(x.data_ptr(), weight.data_ptr(),
                                bias.data_ptr() if bias is not None else None, out.data_ptr(),
                                (ctypes.c_longlong * len(values))(*values), len(values),
                                torch.cuda.current_stream(x.device).cuda_stream)
        if code:
            raise RuntimeError(f"{self.name}: launch failed with CUDA error {code}: "
                               f"{self._error_string(code).decode()}")

    def __repr__(self) -> str:
        return f"Kernel({self.name}, template={self.source.template})"


BuildStep = Callable[[Source, Target, str, Path], dict]


@dataclass
class KernelLoader:
    """Source -> Kernel: in-process memo, then the disk cache, then a build.

    If the cache directory cannot be used (read-only, full, unsafe), the loader warns once
    and continues with `fallback`, a private cache in the temporary directory; if that fails
    too, CacheUnusable reaches the dispatcher, which runs torch instead.
    """

    cache: KernelCache
    fallback: KernelCache | None = None
    build: BuildStep = build_library

    def __post_init__(self):
        self._memo: dict[str, Kernel] = {}
        self._lock = threading.Lock()
        if self.fallback is None and self.cache.root != fallback_cache_dir():
            self.fallback = KernelCache(fallback_cache_dir())

    def find(self, source: Source, target: Target) -> Kernel | None:
        """The kernel if it is loaded or intact in the cache; never builds."""
        key = kernel_key(source, target)
        if (kernel := self._memo.get(key)) is not None:
            return kernel
        try:
            entry = self.cache.lookup(library_name(source, key), key)
        except OSError:
            entry = None
        if entry is None:
            return None
        self.cache.stats.disk_hits += 1
        return self._remember(key, Kernel(source, library_name(source, key), entry))

    def load(self, source: Source, target: Target) -> Kernel:
        key = kernel_key(source, target)
        if (kernel := self._memo.get(key)) is not None:
            return kernel
        name = library_name(source, key)
        try:
            entry = self.cache.get_or_build(name, key, lambda folder: self.build(source, target, key, folder))
        except KernelBuildError as err:
            err.source_path = self.cache.failed_path(name) / "build" / "cuda.cu"  # where it was kept
            raise
        except CacheUnusable as err:
            if self.fallback is None:
                raise
            log.warning("%s; using %s instead", err, self.fallback.root)
            self.cache, self.fallback = self.fallback, None  # for the rest of this process
            return self.load(source, target)
        return self._remember(key, Kernel(source, name, entry))

    def _remember(self, key: str, kernel: Kernel) -> Kernel:
        self.cache.touch(kernel.entry)
        with self._lock:
            return self._memo.setdefault(key, kernel)

    def load_many(self, sources: list[Source], target: Target, workers: int | None = None,
                  progress: Callable[[Kernel | Exception], None] | None = None) -> list[Kernel | Exception]:
        """Load or build many sources at once; each build is an nvcc process, so they overlap.
        `progress` is called with each result as it comes."""
        def one(source: Source) -> Kernel | Exception:
            try:
                result = self.load(source, target)
            except Exception as err:  # a failed build is a result here; the caller decides
                result = err
            if progress is not None:
                progress(result)
            return result

        with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
            return list(pool.map(one, sources))
