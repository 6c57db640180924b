"""Gradients of conv3d: of the input (dgrad), of the weight (wgrad) and of the bias.

`input_grad` and `weight_grad` are what the autograd formula of the op calls.

- dgrad at stride 1 is the forward convolution `render_grad.dgrad_spec` describes, of
  grad_out with the flipped weight; it goes through the dispatcher like any forward call
  (the same kernels, autotuning, modes and strict mode). At stride > 1 (and with uneven
  padding) dgrad_phases splits it by output phase into stride-1 convolutions, each taking
  only the taps that reach its phase; autotuning times the split against torch's dgrad.
- wgrad (with the bias) runs the wgrad template: every block sums its share of the output
  positions into a workspace, a second kernel adds the shares in a fixed order. The result
  is the same on every run, so torch.use_deterministic_algorithms(True) needs nothing more.

Where no generated kernel applies, torch's convolution_backward computes the gradient, in
the spec's precision; the reason is logged once (and is an error in strict mode).
"""
from __future__ import annotations

import logging
import math
import time
import weakref
from concurrent.futures import Future
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .build import KernelBuildError, Target
from .cache import CacheUnusable
from .dispatch import (Dispatcher, FallbackError, PlanMemos, Revisable, _in_background, capturing, cudnn_precision,
                       strict_enabled)
from .autotune import TIMING, TORCH, Tuner, keep, settle, timings_text
from .kernel import Kernel, launch_args
from .measure import median_ms, relative_error, tolerance
from .render import wide_offsets
from .render_grad import (WgradTiles, default_wgrad_tiles, dgrad_spec, render_wgrad, supports_wgrad,
                          wgrad_candidates)
from .render_wgmma import HOPPER_ARCHES
from .render_wgrad_mma import WgradMmaTiles, render_wgrad_mma, supports_wgrad_mma, wgrad_mma_candidates
from .render_wgrad_wgmma import WgradWgmmaTiles, render_wgrad_wgmma, supports_wgrad_wgmma, wgrad_wgmma_candidates
from .spec import ConvSpec

log = logging.getLogger("conv3d_codegen")


# ---- grad of the input ----------------------------------------------------------------

def flipped_weight(spec: ConvSpec, weight: torch.Tensor) -> torch.Tensor:
    """w'[g*cig + i][o][k] = w[g*cog + o][i][K-1-k]: the weight of the dgrad convolution."""
    g, cog, cig = spec.groups, spec.out_per_group, spec.in_per_group
    return (weight.reshape(g, cog, cig, *spec.kernel_size).transpose(1, 2).flip(3, 4, 5)
            .reshape(spec.in_channels, cog, *spec.kernel_size).contiguous())


def input_grad(dispatcher: Dispatcher, spec: ConvSpec, grad_out: torch.Tensor, weight: torch.Tensor,
               input_shape: tuple[int, ...]) -> torch.Tensor:
    """Gradient of the input (shape `input_shape`, contiguous) given grad_out and the weight:
    one stride-1 convolution where dgrad_spec gives one, else split by output phase
    (dgrad_phases: stride > 1, uneven padding, padding past the kernel's reach)."""
    dspec, _ = dgrad_spec(spec)
    if dspec is not None:
        grad_out, w = grad_out.contiguous(), flipped_weight(spec, weight)
        plan = dispatcher.plan_for(dspec, grad_out, w, None)
        if plan.kernel is not None:
            out = grad_out.new_empty(input_shape)
            return plan.kernel(grad_out, w, None, out, launch_args(dspec, grad_out.shape))
        with cudnn_precision(spec.precision, grad_out.dtype):  # what autotuning measured, if it chose torch
            return F.conv3d(grad_out, w, None, **dspec.functional_args()).contiguous()
    from .dgrad_phases import phase_input_grad  # here: dgrad_phases builds on this module
    return phase_input_grad(dispatcher, spec, grad_out, weight, input_shape)


# ---- grad of the weight and the bias -----------------------------------------------------

@dataclass(frozen=True)
class WgradPlan(Revisable):
    kernel: Kernel | None   # None: torch
    reason: str | None      # why torch
    tiles: "AnyWgradTiles | None" = None
    pending: Future | None = None  # async mode: the background build
    tuned: bool = False     # torch chosen by timing: not a fallback
    provisional: bool = False  # made during CUDA graph capture: decided again after it


_wgrad_plans: PlanMemos[WgradPlan] = PlanMemos()  # per dispatcher, by device, dtype, input shape and spec


def weight_grad(dispatcher: Dispatcher, spec: ConvSpec, grad_out: torch.Tensor, x: torch.Tensor,
                need_weight: bool = True, need_bias: bool = True) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients of the weight and the bias (None where not needed, or the spec has no bias)."""
    need_bias = need_bias and spec.bias
    if not need_weight:  # the bias alone: a sum over everything but the channels
        return None, (grad_out.sum((0, 2, 3, 4), dtype=torch.float32).to(grad_out.dtype) if need_bias else None)
    plan = _wgrad_plan(dispatcher, spec, x, grad_out)
    if plan.kernel is None:
        weight = x.new_empty(spec.weight_shape)  # convolution_backward reads only its shape here
        _, grad_w, grad_b = torch_grads(spec, grad_out, x, weight, (False, True, need_bias))
        return grad_w, grad_b
    return _run_wgrad(plan, spec, grad_out.contiguous(), x.contiguous(), need_bias)


def _run_wgrad(plan: WgradPlan, spec: ConvSpec, grad_out: torch.Tensor, x: torch.Tensor, need_bias: bool):
    tiles = plan.tiles
    splits = wgrad_splits(spec, tiles, x, grad_out.shape[2:])
    workspace = torch.empty(splits * (math.prod(spec.weight_shape) + (spec.out_channels if spec.bias else 0)),
                            dtype=torch.float32, device=x.device)
    grad_w = x.new_empty(spec.weight_shape)
    grad_b = x.new_empty(spec.out_channels) if need_bias else None
    args = launch_args(spec, x.shape) | {"splits": splits, "workspace": workspace.data_ptr()}
    plan.kernel(x, grad_out, grad_b, grad_w, args)
    return grad_w, grad_b


AnyWgradTiles = WgradTiles | WgradMmaTiles | WgradWgmmaTiles
WGRAD_KINDS = (WgradTiles, WgradMmaTiles, WgradWgmmaTiles)  # a record names its winner's kind by its template


def wgrad_splits(spec: ConvSpec, tiles: AnyWgradTiles, x: torch.Tensor, out_size) -> int:
    """Blocks along the reduction: enough for the tiles' blocks per multiprocessor (two for the
    direct template's), and at least the tiles' least (the wgmma template's tf32 bounds the rows a
    block sums). It depends only on the shapes and the GPU, so the order of the final sum (and the
    result) is fixed."""
    od, oh, ow = out_size
    items = x.shape[0] * od * oh * -(-ow // tiles.owc)
    column = tiles.split_blocks(spec)
    sms = torch.cuda.get_device_properties(x.device).multi_processor_count
    splits = max(1, min(items, -(-tiles.blocks_per_sm * sms // column)))
    return max(splits, tiles.min_splits(spec, x.shape[0] * od * oh))


def wgrad_tile_candidates(spec: ConvSpec, input_shape: tuple[int, ...], arch: str | None = None) -> list[AnyWgradTiles]:
    """The wgrad autotuning space for inputs of `input_shape` on a GPU of `arch` (Target.arch; None:
    any GPU): the direct template's tiles, then the tensor-core template's where it applies
    (float16, bfloat16, float32: tf32, or 3xTF32 for 'ieee'), then on sm_90 the wgmma template's
    (float16, bfloat16, tf32, few input channels, a kernel at most 8 wide; render_wgrad_wgmma) where
    it takes this input."""
    ow = spec.output_size(*input_shape[2:])[2]
    mma = wgrad_mma_candidates(spec, ow) if supports_wgrad_mma(spec) is None else []
    wgmma = [t for t in wgrad_wgmma_candidates(spec) if t.shape_problem(spec, tuple(input_shape)) is None] \
        if arch in HOPPER_ARCHES and supports_wgrad_wgmma(spec) is None else []
    return wgrad_candidates(spec, ow) + mma + wgmma


def render_wgrad_tiles(spec: ConvSpec, tiles: AnyWgradTiles, wide: bool, size: tuple[int, int, int] | None = None):
    """The wgrad source of `tiles`: the wgmma, tensor-core or direct template's. `size` (the input's
    d, h, w) is what the wgmma template is built for; the others take any size."""
    if isinstance(tiles, WgradWgmmaTiles):
        return render_wgrad_wgmma(spec, tiles, wide, size)
    if isinstance(tiles, WgradMmaTiles):
        return render_wgrad_mma(spec, tiles, wide)
    return render_wgrad(spec, tiles, wide)


def wgrad_sources(spec: ConvSpec, input_shape: tuple[int, ...], arch: str | None) -> list:
    """The sources the wgrad tuner builds for inputs of `input_shape` (to build them ahead)."""
    wide, size = wide_offsets(spec, tuple(input_shape)), tuple(input_shape[2:])
    return [render_wgrad_tiles(spec, t, wide, size) for t in wgrad_tile_candidates(spec, input_shape, arch)]


def _wgrad_plan(dispatcher: Dispatcher, spec: ConvSpec, x: torch.Tensor, grad_out: torch.Tensor) -> WgradPlan:
    in_capture = capturing(x)

    def logged(before: WgradPlan | None, plan: WgradPlan) -> None:
        if plan.kernel is None:
            log.log(logging.INFO if plan.pending or plan.tuned else logging.WARNING, "conv3d wgrad %s -> torch: %s",
                    spec.tag, plan.reason)

    plan = _wgrad_plans.of(dispatcher).plan(
        (x.device, x.dtype, tuple(x.shape), spec),
        lambda before: _decide_wgrad(dispatcher, spec, x, grad_out, before, in_capture), in_capture, logged)
    if plan.kernel is None and plan.pending is None and not plan.tuned and strict_enabled():
        raise FallbackError(f"strict mode: wgrad of {spec.tag} would run on torch: {plan.reason}")
    return plan


def _decide_wgrad(dispatcher: Dispatcher, spec: ConvSpec, x: torch.Tensor, grad_out: torch.Tensor,
                  before: WgradPlan | None, in_capture: bool) -> WgradPlan:
    if not x.is_cuda:
        return WgradPlan(None, f"input is on {x.device.type}")
    if (reason := supports_wgrad(spec)) is not None:
        return WgradPlan(None, reason)
    if dispatcher.mode == "off":
        return WgradPlan(None, "mode 'off'")
    if before is not None and before.pending is not None and before.pending.exception() is not None:
        return WgradPlan(None, f"the background build failed: {str(before.pending.exception()).splitlines()[0]}")
    target, wide = Target.for_device(x.device), wide_offsets(spec, tuple(x.shape))
    try:
        tiles, timings = _wgrad_record(dispatcher, spec, x, target)
        if tiles is None and dispatcher.autotune and dispatcher.mode != "prebuilt" and not in_capture:
            sources = wgrad_sources(spec, tuple(x.shape), target.arch)
            if dispatcher.mode == "async" and any(dispatcher.loader.find(s, target) is None for s in sources):
                return WgradPlan(None, f"building {len(sources)} wgrad autotuning candidates in the background",
                                 pending=_in_background(lambda: dispatcher.loader.load_many(sources, target)))
            tiles, timings = _tune_wgrad(dispatcher, spec, x, grad_out, target)
        if tiles == TORCH:
            return WgradPlan(None, f"autotuned: no candidate beat torch by 2% ({timings})", tuned=True)
        tiles = tiles or default_wgrad_tiles(spec)
        source = render_wgrad_tiles(spec, tiles, wide, tuple(x.shape[2:]))
        kernel = dispatcher.loader.find(source, target)
        if kernel is None and (dispatcher.mode == "prebuilt" or in_capture):
            return WgradPlan(None, f"{source.name} is not in the cache {dispatcher.cache.root} "
                                   f"({'mode prebuilt' if dispatcher.mode == 'prebuilt' else 'CUDA graph capture'})",
                             provisional=in_capture)
        if kernel is None and dispatcher.mode == "async":
            return WgradPlan(None, f"building {source.name} in the background",
                             pending=_in_background(lambda: dispatcher.loader.load(source, target)))
        return WgradPlan(kernel or dispatcher.loader.load(source, target), None, tiles)
    except KernelBuildError as err:
        log.warning("%s", err)
        return WgradPlan(None, f"kernel build failed; source and log kept at {err.source_path}")
    except CacheUnusable as err:
        return WgradPlan(None, f"no usable kernel cache: {err}")


# ---- autotuning of wgrad ---------------------------------------------------------------

def _record_id(spec: ConvSpec, x: torch.Tensor, target: Target) -> tuple[str, str]:
    return Tuner.record_id(spec, tuple(x.shape), target, torch.cuda.get_device_name(x.device), op="wgrad")


def _wgrad_record(dispatcher: Dispatcher, spec: ConvSpec, x: torch.Tensor, target: Target):
    """The kept winner for this spec and shape: (tiles, timings), (TORCH, timings) or (None, None)."""
    record = dispatcher.cache.read_record(*_record_id(spec, x, target))
    if record is None:
        return None, None
    kind = next((k for k in WGRAD_KINDS if k.template == record.get("template")), WgradTiles)
    return (TORCH if record["winner"] == TORCH else kind(**record["tiles"])), timings_text(record["timings_ms"])


def _tune_wgrad(dispatcher: Dispatcher, spec: ConvSpec, x: torch.Tensor, grad_out: torch.Tensor, target: Target):
    """Build every candidate, verify each on one sample against float64 torch, time each and
    torch on the real tensors, and keep the winner (torch unless one beats it by 2%)."""
    started = time.perf_counter()
    x, grad_out = x.contiguous(), grad_out.contiguous()
    wide = wide_offsets(spec, tuple(x.shape))
    tiles = wgrad_tile_candidates(spec, tuple(x.shape), target.arch)
    built = dispatcher.loader.load_many([render_wgrad_tiles(spec, t, wide, tuple(x.shape[2:])) for t in tiles], target)
    weight = x.new_empty(spec.weight_shape)
    with torch.no_grad():
        _, want_w, want_b = torch_grads(spec, grad_out[:1].double(), x[:1].double(), weight.double(),
                                        (False, True, True))
        timings, dropped, winners = {}, {}, {}
        for t, kernel in zip(tiles, built):
            if isinstance(kernel, Exception):
                dropped[str(t)] = f"build: {str(kernel).splitlines()[0]}"
                continue
            plan = WgradPlan(kernel, None, t)
            grad_w, grad_b = _run_wgrad(plan, spec, grad_out[:1], x[:1], need_bias=True)
            err = max(relative_error(grad_w, want_w), relative_error(grad_b, want_b) if spec.bias else 0.0)
            if not err <= tolerance(spec):
                dropped[str(t)] = f"verify: relative error {err:.2e} over {tolerance(spec):.0e}"
                continue
            timings[str(t)], winners[str(t)] = median_ms(lambda: _run_wgrad(plan, spec, grad_out, x, True), **TIMING), t
        timings[TORCH] = median_ms(lambda: torch_grads(spec, grad_out, x, weight, (False, True, True)), **TIMING)
    best = settle(spec, timings, dropped, op="wgrad")
    winner = winners.get(best)
    keep(dispatcher.cache, _record_id(spec, x, target), spec, x, winner, timings, dropped, started, op="wgrad")
    return (TORCH if winner is None else winner), timings_text(timings)


# ---- torch ---------------------------------------------------------------------------

_logged: weakref.WeakKeyDictionary[Dispatcher, set] = weakref.WeakKeyDictionary()


def _fallback(dispatcher: Dispatcher, key, message: str) -> None:
    seen = _logged.setdefault(dispatcher, set())
    if key not in seen:
        seen.add(key)
        log.warning("conv3d %s; torch computes it", message)
    if strict_enabled():
        raise FallbackError(f"strict mode: {message}")


def torch_grads(spec: ConvSpec, grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                needs: tuple[bool, bool, bool]):
    """Gradients of input, weight and bias through torch's convolution_backward."""
    with cudnn_precision(spec.precision, x.dtype):
        before, after = spec.pad_before, spec.pad_after
        if before != after:  # 'same' with an odd total: the extra zero goes after, as torch pads it
            padded = (*x.shape[:2], *(size + a - b for size, a, b in zip(x.shape[2:], after, before)))
            # without the weight's gradient, only the padded input's shape is read
            x = F.pad(x, (0, after[2] - before[2], 0, after[1] - before[1], 0, after[0] - before[0])) \
                if needs[1] else x.new_empty(1).expand(padded)
        grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
            grad_out, x, weight, [spec.out_channels] if spec.bias else None, list(spec.stride),
            list(before), list(spec.dilation), False, [0, 0, 0], spec.groups,
            [needs[0], needs[1], needs[2] and spec.bias])
        if grad_x is not None and before != after:
            d, h, w = (size - a + b for size, a, b in zip(x.shape[2:], after, before))
            grad_x = grad_x[:, :, :d, :h, :w]
    return grad_x, grad_w, grad_b
