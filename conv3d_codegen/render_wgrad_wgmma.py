"""Rendering the wgmma wgrad template, templates/conv3d_wgrad_wgmma.cu.j2 (sm_90a).

The gradient of the weight, per grad_out row (n, od, oh), is a product with M = the output
channels, K = the row's positions and N = (kh, plane, kw), plane = (ci, kd): B is a Hankel block
of each input row the grad_out row reads (column kw: the row shifted by kw). For few input
channels and a narrow kernel (seed-a: 3 channels, 3x5x7), N = KH x CI x KD x 8 columns (kw padded
to 8) is large enough for warpgroup products, where the tensor-core template's mma.sync tiles
spend more shared-memory reads per product (bench/NOTES.md, session 21).

- A, the grad_out row, comes by the bulk tensor copy engine: one box of 64 elements per channel
  from the 16-byte piece the row starts in, under its 128-byte swizzle, which is the wgmma's
  swizzled K-major layout. Position ow sits at K = ow + off (off = oh x WO mod 8); the columns
  outside the row are zeroed before the products.
- B, an input row's Hankel block, is built once in shared memory for the KH grad_out rows that
  read it, as a strip of 72 rows of 16 bytes (row t: the 8 elements from t - 7 - PW): K block b's
  columns kw for a row starting off into its piece are rows 8 b + 7 - off + kw (LBO 128 bytes), so
  one strip serves every off (bench/NOTES.md, sessions 21 and 23).
- Two warpgroups split the planes and only multiply; a ring of KH + 1 input rows per warpgroup, its
  first KH - 1 slots written again past its end, so that the window of a grad_out row is one wgmma
  per k16 step (two, where it wrapped, made ptxas serialize every wgmma).
- Six builder warps build the blocks from input rows the copy engine brings, and hand each input
  row over by an mbarrier; two warps copy and zero grad_out's rows (bench/NOTES.md, session 22:
  the multiplying warps building in turn, and loading the input rows themselves, took 0.47 ms
  where they now take 0.39).

It serves bfloat16 and float16 on sm_90, NCDHW, groups 1, stride and dilation 1, padding along w
at most 1, kernel width at most 8, output channels at most 64, KH x ceil(CI x KD / 2) x 8 <= 256
columns a warpgroup; built for one input size with the input width a multiple of 8 and each
grad_out plane a multiple of 16 bytes (wgrad_wgmma_shape_problem).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from .render import SHARED_BYTES_PER_BLOCK_SM90, InputSize, Source, _environment, serving_tiles, templates_dir
from .render_grad import WGRAD_ARGS
from .spec import ConvSpec

WGRAD_WGMMA_TEMPLATE = "conv3d_wgrad_wgmma.cu.j2"

ROW_POSITIONS = 64     # K of a grad_out row: four k16 steps; the row and its start into a 16-byte piece fit it
STAGE_BYTES = 64 * 128  # a staged grad_out row: 64 channel rows (M) of 128 bytes
STRIP_ROWS = 73        # 16-byte rows a plane's strip takes: rows 0 .. 71 (8 K blocks of 8 from row 7 - off, and their
                       # 8 columns), and one more, so that 8 planes' strips start on distinct banks
ONES_BYTES = 8 * 128   # the bias's block of ones
MAX_N = 256            # wgmma's N: a warpgroup's KH x planes x 8 columns
MAX_ACCUMULATORS = 128  # a thread's: N / 2
CONSUMER_REGISTERS = 168  # setmaxnreg's, for the two multiplying warpgroups and the other two (copies, zeroing,
PRODUCER_REGISTERS = 88   # build): 2 x 128 x 168 + 2 x 128 x 88 = 65,536
RAW_ROW_BYTES = 160    # a plane's copied input row: 80 elements from w = -8
# the tuner's choices (stages, ring, raws, inflight): grad_out rows staged, input rows a ring holds past KH (how far the
# builders may run ahead of the products; the fewer of its slots mirrored), input rows copied ahead of the builders,
# rows in flight a warpgroup. The first two fit seed-a's 227 KB; the last, for more planes, fits where any ring does
# (bench/NOTES.md, session 23)
CONFIGS = ((4, 8, 8, 1), (6, 6, 8, 1), (4, 1, 8, 1))


@dataclass(frozen=True)
class WgradWgmmaPlan:
    np0: int              # planes (ci, kd) of warpgroup 0
    np1: int              # of warpgroup 1
    piece_ns: tuple[int, ...]  # the N of every wgmma the kernel issues
    ring: int             # input rows a warpgroup's ring holds (KH + tiles.ring)
    strip_rows: int       # 16-byte rows of a plane's strip (odd)
    raws: int             # input rows copied ahead of the builders
    shared_bytes: int
    off_max: int          # the most a grad_out row starts into its 16-byte piece
    consumer_registers: int
    producer_registers: int


@dataclass(frozen=True)
class WgradWgmmaTiles:
    """The wgmma wgrad template's configuration: grad_out rows staged ahead (stages - 1 in flight), input
    rows a warpgroup's ring holds past KH, input rows copied ahead of the builders."""

    template: ClassVar[str] = WGRAD_WGMMA_TEMPLATE

    stages: int = 4
    ring: int = 8
    raws: int = 8
    inflight: int = 1   # a multiplying warpgroup's rows in flight (2: a row's stage and slot handed back after the next
                        # row is issued; an (n, od)'s last row drains)
    owc: ClassVar[int] = ROW_POSITIONS  # positions an item: a whole row (wgrad_splits counts items)
    blocks_per_sm: ClassVar[int] = 1
    threads: ClassVar[int] = 512

    def split_blocks(self, spec: ConvSpec) -> int:
        """Blocks one split of the reduction takes: one (a block owns all of N and M)."""
        return 1

    def problem(self, spec: ConvSpec) -> str | None:
        if not (2 <= self.stages <= 8 and 1 <= self.ring <= 12 and 2 <= self.raws <= 8 and self.inflight in (1, 2)):
            return (f"{self}: the wgmma wgrad template stages 2 to 8 grad_out rows, its ring holds 1 to 12 input rows "
                    f"past the kernel's height, it copies 2 to 8 input rows ahead and keeps 1 or 2 rows in flight")
        if (shared := plan(spec, self).shared_bytes) > SHARED_BYTES_PER_BLOCK_SM90:
            return f"{shared} bytes of shared memory per block exceed {SHARED_BYTES_PER_BLOCK_SM90}"
        return None

    def shape_problem(self, spec: ConvSpec, input_shape: tuple[int, ...]) -> str | None:
        return wgrad_wgmma_shape_problem(spec, input_shape)

    def __str__(self) -> str:
        return (f"wgmma stages={self.stages} ring=kh+{self.ring} raws={self.raws}"
                + (f" inflight={self.inflight}" if self.inflight != 1 else ""))


def _planes(spec: ConvSpec) -> tuple[int, int]:
    planes = spec.in_channels * spec.kernel_size[0]
    return -(-planes // 2), planes // 2


def plan(spec: ConvSpec, tiles: WgradWgmmaTiles, ow: int | None = None) -> WgradWgmmaPlan:
    """The layout for output rows `ow` wide (their start into a 16-byte piece; None: any width, the
    largest start)."""
    _, kh, kw = spec.kernel_size
    np0, np1 = _planes(spec)
    planes = np0 + np1
    pieces = {kh * np * 8 for np in (np0, np1)} | ({8} if spec.bias else set())
    off_max = 7 if ow is None else (8 - math.gcd(ow, 8)) % 8
    ring = kh + tiles.ring
    raw_slot = -(-planes * RAW_ROW_BYTES // 128) * 128
    # the ring and a copy of its first KH - 1 slots, each slot a strip of every plane (128-byte aligned after); the
    # copied input rows; the mbarriers: FULL, READY, EMPTY a stage, RAW and RAW_EMPTY a copied row, BUILT and FREE a slot
    rings = -(-(ring + kh - 1) * planes * STRIP_ROWS * 16 // 128) * 128
    shared = (1024 + tiles.stages * STAGE_BYTES + rings + ONES_BYTES + tiles.raws * raw_slot
              + 8 * (3 * tiles.stages + 2 * tiles.raws + 2 * ring))
    return WgradWgmmaPlan(np0=np0, np1=np1, piece_ns=tuple(sorted(pieces)), ring=ring, strip_rows=STRIP_ROWS,
                          raws=tiles.raws,
                          shared_bytes=shared,
                          off_max=off_max, consumer_registers=CONSUMER_REGISTERS,
                          producer_registers=PRODUCER_REGISTERS)


def supports_wgrad_wgmma(spec: ConvSpec) -> str | None:
    """None if the wgmma wgrad template serves `spec` (on an sm_90 GPU); otherwise why not."""
    kd, kh, kw = spec.kernel_size
    if spec.dtype not in ("bfloat16", "float16"):
        return f"dtype {spec.dtype}: the wgmma wgrad template multiplies bfloat16 or float16"
    if spec.layout != "ncdhw":
        return f"layout {spec.layout!r}: the wgmma wgrad template reads contiguous NCDHW only"
    if spec.groups != 1:
        return f"groups={spec.groups}: the wgmma wgrad template needs groups=1"
    if spec.stride != (1, 1, 1) or spec.dilation != (1, 1, 1):
        return "the wgmma wgrad template needs stride 1 and dilation 1"
    if kw > 8:
        return f"kernel width {kw}: the wgmma wgrad template takes at most 8 (one group of 8 columns an input row)"
    if spec.pad_before[2] > 1:
        return f"padding {spec.pad_before[2]} along w: the wgmma wgrad template takes at most 1"
    if spec.out_channels > 64:
        return f"out_channels={spec.out_channels}: the wgmma wgrad template takes at most 64 (one M tile)"
    np0, np1 = _planes(spec)
    if np1 < 1:
        return f"in_channels x kd = {np0}: the wgmma wgrad template splits at least 2 input planes over two warpgroups"
    if kh * np0 * 8 > MAX_N or kh * np0 * 4 > MAX_ACCUMULATORS:
        return (f"kh x ceil(in_channels x kd / 2) x 8 = {kh * np0 * 8} columns a warpgroup: the wgmma wgrad template "
                f"takes at most {min(MAX_N, 2 * MAX_ACCUMULATORS)}")
    return min((WgradWgmmaTiles(*c) for c in CONFIGS), key=lambda t: plan(spec, t).shared_bytes).problem(spec)


def wgrad_wgmma_shape_problem(spec: ConvSpec, input_shape: tuple[int, ...]) -> str | None:
    """Why the template cannot run on inputs of `input_shape`, or None: the input's rows are read in
    16-byte pieces (width a multiple of 8), grad_out through the copy engine (a plane a multiple of 16
    bytes), and a grad_out row with its start into a 16-byte piece fits 64 positions."""
    _, _, d, h, w = input_shape
    _, oh, ow = spec.output_size(d, h, w)
    if w % 8:
        return f"input width {w}: the wgmma wgrad template needs a multiple of 8"
    if (oh * ow) % 8:
        return f"output planes of {oh}x{ow}: the wgmma wgrad template needs oh x ow a multiple of 8"
    if ow + (start := (8 - math.gcd(ow, 8)) % 8) > ROW_POSITIONS:
        return (f"output width {ow}: the wgmma wgrad template takes rows of {ROW_POSITIONS} positions, which a row "
                f"starting {start} elements in does not fit")
    return None


def wgrad_wgmma_candidates(spec: ConvSpec) -> list[WgradWgmmaTiles]:
    return [t for t in (WgradWgmmaTiles(*c) for c in CONFIGS) if t.problem(spec) is None]


def render_wgrad_wgmma(spec: ConvSpec, tiles: WgradWgmmaTiles | None = None, wide: bool = False,
                       size: tuple[int, int, int] | None = None) -> Source:
    """The wgmma wgrad template for `spec` on inputs of `size` (the input's d, h, w; required). Its
    entry point takes what render_grad.render_wgrad's does. Offsets are 64-bit wherever they can be
    large, so `wide` does not change the source."""
    tiles = serving_tiles(spec, tiles, "wgmma wgrad template", supports_wgrad_wgmma(spec),
                          lambda _: wgrad_wgmma_candidates(spec)[0])
    if size is None:
        raise ValueError("the wgmma wgrad template is built for one input size: pass size=(d, h, w)")
    sized = InputSize.of(spec, size)
    if problem := wgrad_wgmma_shape_problem(spec, (1, spec.in_channels, *sized.size)):
        raise ValueError(problem)
    p = plan(spec, tiles, sized.out_size[2])
    name = f"conv3d_wgrad_wgmma_{spec.tag}" + sized.suffix
    body = _environment(templates_dir()).get_template(WGRAD_WGMMA_TEMPLATE).render(
        spec=spec, tiles=tiles, plan=p, name=name, entry=f"{name}_launch", arg_names=WGRAD_ARGS,
        size=sized.size, out_size=sized.out_size)
    kd, kh, kw = spec.kernel_size
    params = {
        "spec": spec.canonical_json(),
        "tiles": str(tiles),
        "product": (f"per grad_out row: wgmma m64nNk16 x 4, A and B from shared memory; N = {kh} x {p.np0} and "
                    f"{kh} x {p.np1} planes x 8 (kw {kw} of 8) for the two warpgroups"
                    + (", + 8 (the bias)" if spec.bias else "")),
        "shared": f"{p.shared_bytes} bytes per block",
        "input size": sized.param,
    }
    return Source(name=name, template=WGRAD_WGMMA_TEMPLATE, body=body, identity=sized.identity(spec),
                  arg_names=WGRAD_ARGS, params=params)
