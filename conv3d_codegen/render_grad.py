"""Rendering the gradient kernels.

dgrad (grad of the input) at stride 1 is a forward convolution of grad_out with the
flipped, transposed weight: `dgrad_spec` gives that convolution's spec, and the forward
templates serve it. wgrad (grad of the weight, and of the bias) has a template of its own,
conv3d_wgrad_direct.cu.j2, with tile sizes as parameters (WgradTiles).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from .render import Source, _environment, serving_tiles, templates_dir
from .spec import ConvSpec

WGRAD_TEMPLATE = "conv3d_wgrad_direct.cu.j2"
# Run-time arguments of the wgrad entry point; `workspace` is the device address of the
# caller's float buffer of splits x (weights + out_channels) partial sums.
WGRAD_ARGS = ("n", "d", "h", "w", "od", "oh", "ow", "splits", "workspace")

MAX_WGRAD_ACCUMULATORS = 64        # COT x KW floats per thread
MAX_WGRAD_SHARED_BYTES = 48 * 1024  # static shared memory of one block
MAX_WGRAD_THREADS = 512
MAX_PREFETCH_REGISTERS = 24         # staged elements a thread holds in registers for the next work item


def dgrad_spec(spec: ConvSpec) -> tuple[ConvSpec | None, str | None]:
    """The forward convolution whose output is the gradient of `spec`'s input, and None; or
    None and the reason there is none (then torch computes the gradient of the input).

    grad_x = conv(grad_out, w'), w'[ci][co][k] = w[co][ci][K-1-k] within each group, padded
    by dil*(K-1) - pad on each side, so that its output has the input's size."""
    if max(spec.stride) > 1:
        return None, f"stride {spec.stride}: the gradient of the input is computed at stride 1 only"
    pad = [dil * (k - 1) - before for k, dil, before in zip(spec.kernel_size, spec.dilation, spec.pad_before)]
    after = [dil * (k - 1) - a for k, dil, a in zip(spec.kernel_size, spec.dilation, spec.pad_after)]
    if pad != after:
        return None, "padding 'same' with an odd total: the gradient of the input needs uneven padding"
    if min(pad) < 0:
        return None, f"padding {spec.pad_before} exceeds the kernel's reach {spec.kernel_size}"
    return ConvSpec(in_channels=spec.out_channels, out_channels=spec.in_channels, kernel_size=spec.kernel_size,
                    padding=tuple(pad), dilation=spec.dilation, groups=spec.groups, bias=False,
                    dtype=spec.dtype, precision=spec.precision), None


@dataclass(frozen=True)
class WgradTiles:
    """Tile sizes of the wgrad template."""

    template: ClassVar[str] = WGRAD_TEMPLATE
    blocks_per_sm: ClassVar[int] = 2  # what the splits of the reduction fill (backward.wgrad_splits)

    cot: int  # output channels per thread
    tc: int   # threads along output channels per block
    rb: int   # input rows (ci, kd, kh) per block
    owc: int  # outputs along w per work item
    wt: int   # outputs along w per step of the inner loop
    prefetch: bool = False  # load the next work item into registers while computing this one

    def split_blocks(self, spec: ConvSpec) -> int:
        """Blocks one split of the reduction takes: channel tiles x row blocks."""
        return spec.out_channels // (self.cot * self.tc) * -(-wgrad_rows(spec) // self.rb)

    def min_splits(self, spec: ConvSpec, rows: int) -> int:
        """The fewest splits of `rows` grad_out rows the kernel takes: any."""
        return 1

    def block(self, spec: ConvSpec) -> int:
        """Threads per block: the workers, TC bias threads where there is a bias, in whole warps."""
        threads = self.tc * self.rb + (self.tc if spec.bias else 0)
        return -(-threads // 32) * 32

    def problem(self, spec: ConvSpec) -> str | None:
        """Why these tiles cannot serve `spec`, or None."""
        kw = spec.kernel_size[2]
        if spec.out_per_group % (self.cot * self.tc):
            return f"cot x tc = {self.cot * self.tc} does not divide the {spec.out_per_group} output channels per group"
        if self.owc % self.wt:
            return f"wt={self.wt} does not divide owc={self.owc}"
        if self.cot * kw > MAX_WGRAD_ACCUMULATORS:
            return f"cot={self.cot} x {kw} taps along w exceeds {MAX_WGRAD_ACCUMULATORS} accumulators"
        if self.block(spec) > MAX_WGRAD_THREADS:
            return f"{self.block(spec)} threads per block exceeds {MAX_WGRAD_THREADS}"
        if self.shared_bytes(spec) > MAX_WGRAD_SHARED_BYTES:
            return f"{self.shared_bytes(spec)} bytes of shared memory exceeds {MAX_WGRAD_SHARED_BYTES}"
        if self.prefetch and self.prefetch_registers(spec) > MAX_PREFETCH_REGISTERS:
            return (f"prefetching holds {self.prefetch_registers(spec)} staged elements per thread, "
                    f"over {MAX_PREFETCH_REGISTERS}")
        return None

    def _row_width(self, spec: ConvSpec) -> int:
        """Inputs along w one work item reads per row."""
        return (self.owc - 1) * spec.stride[2] + (spec.kernel_size[2] - 1) * spec.dilation[2] + 1

    def shared_bytes(self, spec: ConvSpec) -> int:
        return 4 * (self.cot * self.tc * self.owc + self.rb * (self._row_width(spec) | 1))

    def prefetch_registers(self, spec: ConvSpec) -> int:
        """Elements of one work item's staging each thread loads: grad_out's, then the rows'."""
        block = self.block(spec)
        return -(-self.cot * self.tc * self.owc // block) + -(-self.rb * self._row_width(spec) // block)

    def __str__(self) -> str:
        text = f"cot={self.cot} tc={self.tc} rb={self.rb} owc={self.owc} wt={self.wt}"
        return text + (" prefetch" if self.prefetch else "")


def wgrad_rows(spec: ConvSpec) -> int:
    kd, kh, _ = spec.kernel_size
    return spec.in_per_group * kd * kh


def default_wgrad_tiles(spec: ConvSpec) -> WgradTiles:
    """A choice that is good on the seed shapes and valid for any spec `supports_wgrad` admits:
    as many channels per thread as the accumulators allow, up to 64 channels per block, all
    of a small group's rows in one block."""
    kw, cog = spec.kernel_size[2], spec.out_per_group
    cot = next(c for c in (8, 4, 2, 1) if cog % c == 0 and c * kw <= MAX_WGRAD_ACCUMULATORS)
    tc = next(t for t in (8, 4, 2, 1) if cog % (cot * t) == 0)
    rows = wgrad_rows(spec)
    for owc in (64, 32, 16, 8):
        rb = min(rows, (MAX_WGRAD_THREADS - 32) // tc)
        while rb > 1:
            tiles = WgradTiles(cot=cot, tc=tc, rb=rb, owc=owc, wt=4)
            if tiles.problem(spec) is None:
                return tiles
            rb = (rb + 1) // 2
        tiles = WgradTiles(cot=cot, tc=tc, rb=1, owc=owc, wt=4)
        if tiles.problem(spec) is None:
            return tiles
    return WgradTiles(cot=cot, tc=tc, rb=1, owc=8, wt=4)


def wgrad_candidates(spec: ConvSpec, ow: int | None = None) -> list[WgradTiles]:
    """The autotuning space: channels per thread and per block, outputs per work item. Fewer
    channels per block make smaller blocks, two of which share a multiprocessor (one stages
    its next item while the other computes). Given the output width `ow` (the tuner times one
    shape), a work item may also span the whole row rounded up to 4 (58 -> 60, where 64
    computes 6 columns of zeros)."""
    kw, cog, rows = spec.kernel_size[2], spec.out_per_group, wgrad_rows(spec)
    found = {default_wgrad_tiles(spec)}
    fitted = -(-ow // 4) * 4 if ow else 64
    for cot, tc in [(8, 8), (8, 4), (4, 8), (8, 2)]:
        if cog % (cot * tc) or cot * kw > MAX_WGRAD_ACCUMULATORS:
            continue
        for owc in dict.fromkeys((fitted, 64, 32) if fitted < 64 else (64, 32)):
            for threads in (MAX_WGRAD_THREADS, 256):  # one block per multiprocessor, or two
                rb = min(rows, (threads - 32) // tc)
                while rb > 1 and WgradTiles(cot, tc, rb, owc, 4).problem(spec) is not None:
                    rb = (rb + 1) // 2
                if (tiles := WgradTiles(cot, tc, rb, owc, 4)).problem(spec) is None:
                    found.add(tiles)
    best = sorted(found, key=lambda t: (-t.cot * t.tc, -t.owc, -t.rb))[:12]
    # The same tiles software-pipelined, where a block of 256 threads or fewer leaves registers
    # for it; not the fitted widths (slower on the H100 without prefetching, and 58 -> 60 spills with it).
    prefetching = [dataclasses.replace(t, prefetch=True) for t in best if t.block(spec) <= 256 and t.owc in (64, 32)]
    return best + [t for t in prefetching if t.problem(spec) is None][:6]


def supports_wgrad(spec: ConvSpec) -> str | None:
    """None if the wgrad template serves `spec`; otherwise the reason it does not."""
    if spec.kernel_size[2] * spec.dilation[2] > 64:
        return f"kernel width {spec.kernel_size[2]} x dilation {spec.dilation[2]} is over 64 columns"
    return default_wgrad_tiles(spec).problem(spec)


def render_wgrad(spec: ConvSpec, tiles: WgradTiles | None = None, wide: bool = False) -> Source:
    """The wgrad template for `spec`; `wide` selects 64-bit offsets."""
    tiles = serving_tiles(spec, tiles, "wgrad template", supports_wgrad(spec), default_wgrad_tiles)
    name = f"conv3d_wgrad_{spec.tag}" + ("_i64" if wide else "")
    body = _environment(templates_dir()).get_template(WGRAD_TEMPLATE).render(
        spec=spec, tiles=tiles, name=name, entry=f"{name}_launch", arg_names=WGRAD_ARGS, wide=wide)
    params = {"spec": spec.canonical_json(), "tiles": str(tiles), "offsets": "64-bit" if wide else "32-bit"}
    return Source(name=name, template=WGRAD_TEMPLATE, body=body, identity=spec.canonical_json(),
                  arg_names=WGRAD_ARGS, params=params)
