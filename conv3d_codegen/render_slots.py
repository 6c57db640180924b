"""Rendering the rotating-slots forward template (wgmma, sm_90a), templates/conv3d_fwd_slots.cu.j2.

For few output channels and many input channels, the shape of dgrad on a 3-channel input (seed-a's:
the forward convolution of grad_out, 64 channels, with the flipped weight, 3 channels): one input
row and tap kd is one warpgroup matrix product per k16 step, M = the row's 64 positions, K = the
input channels, N = (kh, kw, co). Column (kh, kw, co) of the row's position wi belongs to output row
hi - kh + PH at position wi - kw + PW; the accumulators' columns are KH slots of output rows (row h
in slot h mod KH), each input row's weights a window of a list that puts the right kh in each slot,
so nothing moves between accumulators, and a completed slot is summed along kw when its row is
written. Each output channel's sums use all of N, where the staged tensor-core template fills 21 of
24 columns of a narrower product and adds the kw partial sums through shared memory
(bench/probes/s15_dgrad_wgmma.py: seed-a's dgrad in bf16 0.47 ms against that template's 1.19).

The template serves bfloat16 and float16 on sm_90 (built for sm_90a), NCDHW, groups 1, stride and
dilation 1, padding the same on both sides and below the kernel along each dimension, input channels
a multiple of 16 (K steps) with KD x CI / 16 A fragments in registers (at most MAX_FRAGMENTS),
and N = KH x KW x CO rounded up to 8 at most MAX_N. It is rendered for one input size (its
sizes are constants): input width even and at most 64 (one M tile), output width at most 64
(slots_shape_problem).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .render import DIRECT_ARGS, InputSize, SHARED_BYTES_PER_BLOCK_SM90, Source, _environment, serving_tiles, templates_dir
from .spec import ConvSpec

SLOTS_TEMPLATE = "conv3d_fwd_slots.cu.j2"

ROW_STRIDE = 144     # bytes of a staged channel row: 72 elements, so ldmatrix's 8 rows fall on distinct banks
RAW_STRIDE = 68      # floats of a stored column: a warp's stores (8 positions x 4 columns) on distinct banks
MAX_WIDTH = 64       # M of the wgmma: the input row's positions; the output row's too (the sums' buffer)
MAX_N = 128          # accumulators a thread: N / 2 (64) beside the A fragments
MAX_FRAGMENTS = 12   # A fragments a thread holds for one input row: KD x CI / 16 (4 registers each)
THREADS = 256        # two warpgroups
PLANES = (2, 4, 6, 8)  # output planes a block: the tuner's choices
# a thread's accumulators and A fragments (core_registers), beside ~70 of addresses and staging: seed-a's dgrad with
# 4 planes (176) spilled and ran 5% slower than with 2 (bench/NOTES.md, session 16)
MAX_CORE_REGISTERS = 160


@dataclass(frozen=True)
class SlotsTiles:
    """The rotating-slots template's configuration: output planes a block, half of them a
    warpgroup's (an accumulator set each). A block stages planes + kd - 1 input planes, so more
    planes stage grad_out fewer times over, at the cost of registers, shared memory, and whole
    waves of blocks on small inputs. The tuner times them beside the other templates' tiles."""

    template: ClassVar[str] = SLOTS_TEMPLATE

    planes: int = 2  # output planes a block: 2, 4, 6 or 8

    def problem(self, spec: ConvSpec) -> str | None:
        """Why these tiles cannot serve `spec`, or None."""
        if self.planes not in PLANES:
            return f"planes={self.planes}: the rotating-slots template takes {', '.join(map(str, PLANES))} output planes a block"
        if (regs := core_registers(spec, self.planes)) > MAX_CORE_REGISTERS:
            return (f"planes={self.planes}: {regs} registers a thread of accumulators and A fragments, at most "
                    f"{MAX_CORE_REGISTERS}")
        if (shared := geometry(spec, self.planes).shared_bytes) > SHARED_BYTES_PER_BLOCK_SM90:
            return f"{shared} bytes of shared memory per block exceed {SHARED_BYTES_PER_BLOCK_SM90}"
        return None

    def shape_problem(self, spec: ConvSpec, input_shape: tuple[int, ...]) -> str | None:
        """Why these tiles cannot run on inputs of `input_shape`, or None (slots_shape_problem)."""
        return slots_shape_problem(spec, input_shape)

    def __str__(self) -> str:
        return f"slots planes={self.planes}"


@dataclass(frozen=True)
class SlotsGeometry:
    """What the template sizes for one spec."""

    slot: int           # columns a slot: KW x CO
    ncol: int           # N: KH slots rounded up to 8
    list_rows: int      # rows of a weight list: slot x (KH - 1) + ncol
    weight_bytes: int   # every list: KD x CI / 16 k16 steps x 2 halves
    stage_bytes: int    # one staged input row of the planes + KD - 1 input planes
    raw_bytes: int      # one completed slot, stored for the sums along kw

    @property
    def shared_bytes(self) -> int:
        return self.weight_bytes + 2 * self.stage_bytes + 4 * self.raw_bytes


def core_registers(spec: ConvSpec, planes: int) -> int:
    """A thread's accumulators (planes / 2 sets of N / 2) and A fragments (planes / 2 + kd - 1
    input planes x in_channels / 16, 4 registers each)."""
    kd = spec.kernel_size[0]
    return planes // 2 * geometry(spec).ncol // 2 + 4 * (planes // 2 + kd - 1) * (spec.in_channels // 16)


def geometry(spec: ConvSpec, planes: int = 2) -> SlotsGeometry:
    kd, kh, kw = spec.kernel_size
    slot = kw * spec.out_channels
    ncol = 8 * -(-kh * slot // 8)
    list_rows = slot * (kh - 1) + ncol
    return SlotsGeometry(slot=slot, ncol=ncol, list_rows=list_rows,
                         weight_bytes=kd * (spec.in_channels // 16) * 2 * list_rows * 16,
                         stage_bytes=(planes + kd - 1) * spec.in_channels * ROW_STRIDE, raw_bytes=slot * RAW_STRIDE * 4)


def supports_slots(spec: ConvSpec) -> str | None:
    """None if the rotating-slots template serves `spec` (on an sm_90 GPU); otherwise why not."""
    kd, kh, kw = spec.kernel_size
    if spec.dtype not in ("bfloat16", "float16"):
        return f"dtype {spec.dtype}: the rotating-slots template multiplies bfloat16 or float16"
    if spec.layout != "ncdhw":
        return f"layout {spec.layout!r}: the rotating-slots template reads contiguous NCDHW only"
    if spec.groups != 1:
        return f"groups={spec.groups}: the rotating-slots template needs groups=1"
    if spec.stride != (1, 1, 1) or spec.dilation != (1, 1, 1):
        return "the rotating-slots template needs stride 1 and dilation 1"
    if spec.pad_before != spec.pad_after or any(p >= k for p, k in zip(spec.pad_before, spec.kernel_size)):
        return (f"padding {spec.pad_before} before, {spec.pad_after} after: the rotating-slots template needs the same "
                "padding on both sides, below the kernel's size along each dimension")
    if spec.in_channels % 16:
        return f"in_channels={spec.in_channels}: the rotating-slots template needs a multiple of 16 (its K steps)"
    if (fragments := kd * spec.in_channels // 16) > MAX_FRAGMENTS:
        return (f"{kd} x {spec.in_channels} input channels: the rotating-slots template holds kd x in_channels / 16 "
                f"= {fragments} A fragments, at most {MAX_FRAGMENTS}")
    if (ncol := geometry(spec).ncol) > MAX_N:
        return (f"{kh}x{kw} taps x {spec.out_channels} output channels: N = {ncol} columns, the rotating-slots "
                f"template takes at most {MAX_N}")
    return SlotsTiles().problem(spec)


def slots_shape_problem(spec: ConvSpec, input_shape: tuple[int, ...]) -> str | None:
    """Why the template cannot run on inputs of `input_shape`, or None."""
    _, _, d, h, w = input_shape
    ow = spec.output_size(d, h, w)[2]
    if w % 2 or w > MAX_WIDTH:
        return f"input width {w}: the rotating-slots template needs an even width, at most {MAX_WIDTH}"
    if ow > MAX_WIDTH:
        return f"output width {ow}: the rotating-slots template takes at most {MAX_WIDTH}"
    return None


def slots_candidates(spec: ConvSpec) -> list[SlotsTiles]:
    """The autotuning space: the output planes a block that fit."""
    return [tiles for tiles in map(SlotsTiles, PLANES) if tiles.problem(spec) is None]


def render_slots(spec: ConvSpec, tiles: SlotsTiles | None = None, wide: bool = False,
                 size: tuple[int, int, int] | None = None) -> Source:
    """The rotating-slots template for `spec` on inputs of `size` (the input's d, h, w; required: the
    kernel folds it). Its offsets are 64-bit wherever they can be large, so `wide` does not change
    the source."""
    tiles = serving_tiles(spec, tiles, "rotating-slots template", supports_slots(spec), lambda _: SlotsTiles())
    if size is None:
        raise ValueError("the rotating-slots template is built for one input size: pass size=(d, h, w)")
    sized = InputSize.of(spec, size)
    if problem := slots_shape_problem(spec, (1, spec.in_channels, *sized.size)):
        raise ValueError(problem)
    g = geometry(spec, tiles.planes)
    kh, ph = spec.kernel_size[1], spec.pad_before[1]
    hpad = max(-(-sized.size[1] // kh) * kh, 2)  # input rows walked: the kernel stages two rows ahead
    flush = list(range(max(hpad + ph - kh + 1, 0), sized.out_size[1]))  # output rows after the last input row's
    name = f"conv3d_fwd_slots_{spec.tag}" + sized.suffix
    body = _environment(templates_dir()).get_template(SLOTS_TEMPLATE).render(
        spec=spec, tiles=tiles, geometry=g, name=name, entry=f"{name}_launch", arg_names=DIRECT_ARGS,
        size=sized.size, out_size=sized.out_size, row_stride=ROW_STRIDE, raw_stride=RAW_STRIDE, flush=flush,
        hpad=hpad)
    params = {
        "spec": spec.canonical_json(),
        "tiles": str(tiles),
        "product": (f"per input row and kd: wgmma m64n{g.ncol}k16 x {spec.in_channels // 16}: M = 64 positions, "
                    f"N = {kh} slots x {g.slot} (kw, co), K = {spec.in_channels} channels"),
        "shared": f"{g.shared_bytes} bytes per block",
        "threads": f"{THREADS}: {tiles.planes} output planes, {tiles.planes + spec.kernel_size[0] - 1} input planes staged",
        "input size": sized.param,
    }
    return Source(name=name, template=SLOTS_TEMPLATE, body=body, identity=sized.identity(spec),
                  arg_names=DIRECT_ARGS, params=params)
