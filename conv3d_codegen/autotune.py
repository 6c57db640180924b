"""Autotuning: for one spec and input shape, build a few tile configurations of the direct
template, verify and time each on the real shape next to torch, and keep the winner as a
record in the cache (keyed by spec, shape, GPU, toolchain and generator), so the search
runs once per machine. A candidate that fails to build or to verify is dropped with its
reason; torch is always a candidate, so the choice is never slower than torch.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .build import Target
from .cache import CacheUnusable
from .kernel import KernelLoader, launch_args
from .measure import median_ms, relative_error, tolerance
from .render import Source, Tiles, default_tiles, fitting_cic, generator_hash, render_direct, wide_offsets
from .render_depthwise import DepthwiseTiles, depthwise_candidates, render_depthwise, supports_depthwise
from .render_mma import MmaTiles, mma_candidates, render_mma, supports_mma
from .render_mma_staged import MmaStagedTiles, mma_staged_candidates, render_mma_staged, supports_mma_staged
from .render_rows import RowsTiles, render_rows, rows_candidates, supports_rows
from .render_slots import SlotsTiles, render_slots, slots_candidates, supports_slots
from .render_wgmma import HOPPER_ARCHES, WgmmaTiles, render_wgmma, supports_wgmma, wgmma_candidates
from .spec import ConvSpec

log = logging.getLogger("conv3d_codegen")

TORCH = "torch"
TORCH_MARGIN = 0.98  # a candidate must beat torch's time by 2% (more than the timing noise) to win
TIMING = dict(warmup=5, reps=10, min_total_ms=25.0)


AnyTiles = Tiles | MmaTiles | DepthwiseTiles | MmaStagedTiles | RowsTiles | WgmmaTiles | SlotsTiles
TILE_KINDS = (Tiles, MmaTiles, DepthwiseTiles, MmaStagedTiles, RowsTiles, WgmmaTiles, SlotsTiles)  # a record names its winner's kind by its template


def render_tiles(spec: ConvSpec, tiles: AnyTiles | None = None, wide: bool = False,
                 size: tuple[int, int, int] | None = None) -> Source:
    """The forward source of `tiles`: the tensor-core, staged tensor-core, row-product (mma.sync or
    wgmma), rotating-slots, depthwise or direct template's. `size` (the input's d, h, w) specializes
    the tensor-core and row-product templates on it, and the rotating-slots template needs it; the
    others take any size."""
    if isinstance(tiles, MmaTiles):
        return render_mma(spec, tiles, wide, size)
    if isinstance(tiles, MmaStagedTiles):
        return render_mma_staged(spec, tiles, wide)
    if isinstance(tiles, DepthwiseTiles):
        return render_depthwise(spec, tiles, wide)
    if isinstance(tiles, RowsTiles):
        return render_rows(spec, tiles, wide, size)
    if isinstance(tiles, WgmmaTiles):
        return render_wgmma(spec, tiles, wide, size)
    if isinstance(tiles, SlotsTiles):
        return render_slots(spec, tiles, wide, size)
    return render_direct(spec, tiles, wide)


def candidates(spec: ConvSpec, arch: str | None = None) -> list[AnyTiles]:
    """The search space on a GPU of `arch` (Target.arch; None: any GPU): the direct template's
    tiles, then the tensor-core template's where it applies (float16, bfloat16, and float32 with
    precision 'tf32'), then the depthwise template's where it applies (groups == in_channels),
    then the staged tensor-core template's (float16, bfloat16, 16 or more input channels per
    group), then the row-product template's (float16, bfloat16 and float32 'tf32', few input
    channels, stride 1; render_rows.supports_rows), then on sm_90 only the wgmma row-product
    template's (float16, bfloat16, few input channels, 5 or 7 taps along w; render_wgmma) and the
    rotating-slots template's (float16, bfloat16, few output channels, input channels a multiple of
    16: dgrad on a 3-channel input; render_slots)."""
    return (direct_candidates(spec) + (mma_candidates(spec) if supports_mma(spec) is None else [])
            + (depthwise_candidates(spec) if supports_depthwise(spec) is None else [])
            + (mma_staged_candidates(spec) if supports_mma_staged(spec) is None else [])
            + (rows_candidates(spec) if supports_rows(spec) is None else [])
            + (wgmma_candidates(spec) if arch in HOPPER_ARCHES and supports_wgmma(spec) is None else [])
            + (slots_candidates(spec) if arch in HOPPER_ARCHES and supports_slots(spec) is None else []))


def direct_candidates(spec: ConvSpec) -> list[Tiles]:
    """Output channels x outputs per thread, at most 64 accumulators."""
    cots = [c for c in (16, 12, 8, 6, 4, 3, 2, 1) if spec.out_per_group % c == 0][:3]
    found = {default_tiles(spec)}
    for cot in cots:
        for wt in (2, 4, 8, 16):  # 16 only for few channels per thread (dgrad of a 3-channel input)
            if cot * wt <= 64:
                tiles = Tiles(cot=cot, wt=wt, block=128, cic=fitting_cic(spec, cot, wt))
                if tiles.problem(spec) is None:
                    found.add(tiles)
    return sorted(found, key=lambda t: (t.cot, t.wt, t.block, t.cic))


@dataclass(frozen=True)
class Choice:
    winner: AnyTiles | None              # None: torch is fastest
    timings_ms: dict[str, float]         # every candidate's median time; inf where dropped
    dropped: dict[str, str]              # candidate -> why it was dropped

    @property
    def label(self) -> str:
        return TORCH if self.winner is None else str(self.winner)


class Tuner:
    """Looks up and produces autotuning records through a loader and its cache."""

    def __init__(self, loader: KernelLoader):
        self.loader = loader

    @staticmethod
    def record_id(spec: ConvSpec, shape: tuple[int, ...], target: Target, device_name: str,
                  op: str = "") -> tuple[str, str]:
        """The record's file name and key; `op` names a pass other than the forward ('wgrad')."""
        key = "-".join(([op] if op else []) + [spec.canonical_json(), "x".join(map(str, shape)), target.arch,
                                               target.torch_version, target.cuda_version, device_name,
                                               generator_hash()])
        digest = hashlib.sha256(key.encode()).hexdigest()[:8]
        return f"autotune_{op + '_' if op else ''}{spec.tag}_n{'x'.join(map(str, shape))}_{digest}", key

    def lookup(self, spec: ConvSpec, shape: tuple[int, ...], target: Target, device_name: str) -> Choice | None:
        record = self.loader.cache.read_record(*self.record_id(spec, shape, target, device_name))
        if record is None:
            return None
        kind = next((k for k in TILE_KINDS if k.template == record.get("template")), Tiles)
        winner = None if record["winner"] == TORCH else kind(**record["tiles"])
        return Choice(winner, record["timings_ms"], record["dropped"])

    @staticmethod
    def candidate_problem(spec: ConvSpec, tiles: AnyTiles, input_shape: tuple[int, ...]) -> str | None:
        """Why tune() drops `tiles` before building them, for inputs of `input_shape` (None: it
        builds them): the tiles' own problem, fewer outputs along w than a thread computes, or
        an input the template does not take (the tiles' shape_problem, where they have one)."""
        if problem := tiles.problem(spec):
            return problem
        ow = spec.output_size(*input_shape[2:])[2]
        if ow < getattr(tiles, "wt", 1):
            return f"output width {ow} < wt"
        shape_problem = getattr(tiles, "shape_problem", None)
        return shape_problem(spec, input_shape) if shape_problem else None

    def tune(self, spec: ConvSpec, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
             target: Target, torch_call: Callable[[], torch.Tensor], tiles: list[AnyTiles] | None = None) -> Choice:
        """Time every candidate (default: candidates(spec, target.arch)) and torch on these tensors."""
        started = time.perf_counter()
        tiles = list(candidates(spec, target.arch) if tiles is None else tiles)
        timings, dropped, kernels = {}, {}, {}
        for t in list(tiles):
            if problem := self.candidate_problem(spec, t, tuple(x.shape)):
                dropped[str(t)] = f"tiles: {problem}"
                tiles.remove(t)

        wide, size = wide_offsets(spec, tuple(x.shape)), tuple(x.shape[2:])
        built = self.loader.load_many([render_tiles(spec, t, wide, size) for t in tiles], target)
        for t, result in zip(tiles, built):
            if isinstance(result, Exception):
                dropped[str(t)] = f"build: {str(result).splitlines()[0]}"
            else:
                kernels[t] = result

        with torch.no_grad():
            x, weight = x.contiguous(memory_format=spec.memory_format), weight.contiguous()
            bias = bias.contiguous() if bias is not None else None
            ref = F.conv3d(x[:1].double(), weight.double(), None if bias is None else bias.double(),
                           **spec.functional_args())
            args = launch_args(spec, x.shape)
            out = torch.empty((x.shape[0], spec.out_channels, *spec.output_size(*x.shape[2:])),
                              dtype=x.dtype, device=x.device, memory_format=spec.memory_format)
            for t, kernel in kernels.items():
                out.fill_(float("nan"))
                kernel(x, weight, bias, out, args)
                err = relative_error(out[:1], ref)
                if not err <= tolerance(spec):
                    dropped[str(t)] = f"verify: relative error {err:.2e} over {tolerance(spec):.0e}"
                    continue
                timings[str(t)] = median_ms(lambda: kernel(x, weight, bias, out, args), **TIMING)
            timings[TORCH] = median_ms(torch_call, **TIMING)
        best = settle(spec, timings, dropped)
        winner = None if best == TORCH else next(t for t in kernels if str(t) == best)
        keep(self.loader.cache, self.record_id(spec, tuple(x.shape), target, torch.cuda.get_device_name(x.device)),
             spec, x, winner, timings, dropped, started)
        return Choice(winner, timings, dropped)


def buildable_sources(spec: ConvSpec, input_shape: tuple[int, ...], arch: str | None) -> list[Source]:
    """The sources tune() builds for inputs of `input_shape` on a GPU of `arch`: every candidate
    that Tuner.candidate_problem lets through, rendered for that input (to build them ahead)."""
    wide, size = wide_offsets(spec, tuple(input_shape)), tuple(input_shape[2:])
    return [render_tiles(spec, t, wide, size) for t in candidates(spec, arch)
            if Tuner.candidate_problem(spec, t, tuple(input_shape)) is None]


def settle(spec: ConvSpec, timings: dict[str, float], dropped: dict[str, str], op: str = "") -> str:
    """The winning label: the fastest candidate if it beats torch by the margin, else torch.
    Dropped candidates are timed as infinite, with their reason logged."""
    for label, why in dropped.items():
        timings[label] = math.inf
        log.info("autotune %s%s: dropped %s (%s)", op and op + " ", spec.tag, label, why)
    best = min(timings, key=timings.get)
    return TORCH if timings[best] > TORCH_MARGIN * timings[TORCH] else best


def keep(cache, record_id: tuple[str, str], spec: ConvSpec, x: torch.Tensor, winner, timings: dict[str, float],
         dropped: dict[str, str], started: float, op: str = "") -> None:
    """Write the record of a tuning (a cache that cannot be written only loses the record)."""
    label = TORCH if winner is None else str(winner)
    try:
        cache.write_record(*record_id, {
            "spec": spec.canonical_json(), "shape": list(x.shape), "winner": label,
            "tiles": dataclasses.asdict(winner) if winner is not None else None,
            "template": winner.template if winner is not None else None,
            "timings_ms": {k: v if math.isfinite(v) else None for k, v in timings.items()},
            "dropped": dropped, "device": torch.cuda.get_device_name(x.device),
            "seconds": round(time.perf_counter() - started, 1)})
    except CacheUnusable as err:
        log.warning("autotune %s%s: the winner is not kept (%s)", op and op + " ", spec.tag, err)
    log.info("autotune %s%s on %s: %s (%.3f ms; torch %.3f ms)", op and op + " ", spec.tag, tuple(x.shape),
             label, timings[label], timings[TORCH])


def timings_text(timings: dict[str, float | None]) -> str:
    """torch's time and the best candidate's, for a plan's reason."""
    finite = {k: v for k, v in timings.items() if k != TORCH and v is not None and math.isfinite(v)}
    best = min(finite, key=finite.get, default=None)
    return f"torch {timings[TORCH]:.3f} ms" + (f", best candidate {best} {finite[best]:.3f} ms" if best else "")
