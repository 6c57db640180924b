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
  read it: 15 rows of 16 bytes per K block, so that the 8 rows from 7 - off on are the columns kw
  for every off (bench/NOTES.md, session 21), or tight: only the rows the width's starts read.
- Two warpgroups split the planes and only multiply; a ring of KH + tiles.ring input rows per warpgroup, its
  first KH - 1 slots written again past its end, so that the window of a grad_out row is one wgmma
  per k16 step (two, where it wrapped, made ptxas serialize every wgmma).
- Six builder warps build the blocks from input rows the copy engine brings, and hand each input
  row over by an mbarrier; two warps copy and zero grad_out's rows (bench/NOTES.md, session 22:
  the multiplying warps building in turn, and loading the input rows themselves, took 0.47 ms
  where they took 0.39). The warp that asks for grad_out's rows asks for the input rows too: a
  builder asking for them held the last builder ~500 cycles a row (session 25: 0.358 -> 0.342).

float32 with precision 'tf32' takes the same form in k8 steps (bench/NOTES.md, session 24): a grad_out row is two
copies of 32 positions, and B an input row's strip (row t: the 4 elements from t - 7 - PW; K blocks of 4 positions 4
rows apart, LBO 64), built rounded to tf32; grad_out's low 13 bits are dropped by the tensor cores, or rounded first
by the zeroing warp (TF32_ROUND_A).

It serves bfloat16, float16 and tf32 on sm_90, NCDHW, groups 1, stride and dilation 1, padding along w
at most 1, kernel width at most 8, output channels at most 64, KH x ceil(CI x KD / 2) x 8 <= 256
columns a warpgroup; built for one input size with the input width a multiple of 8 (4 in tf32) and
each grad_out plane a multiple of 16 bytes (wgrad_wgmma_shape_problem).
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
HANKEL_ROWS = 15       # rows of a K block of an input row's block: 8 columns for each start 0 .. 7 (odd: a warp's stores
                       # of 8 K blocks on distinct banks). Seed-a's 13 (the rows its starts and KW read) made the products
                       # 13% faster alone but the kernel 11% slower (0.533 against 0.480 ms; NOTES, session 21)
ONES_BYTES = 8 * 128   # the bias's block of ones (16 x 128 in tf32: K blocks of 4 positions)
TF32_STRIP_ROWS = 75   # rows of an input row's strip in tf32 (every start; odd: 8 planes' strips on distinct banks)
TF32_ROUND_A = False   # tf32: grad_out rounded to tf32 by the zeroing warp (else the tensor cores drop its low 13 bits;
                       # rounding took seed-a from 0.58 to 0.92 ms for 1.7e-4 less error: bench/NOTES.md, session 24)
TF32_MAX_ROWS = 1024   # tf32: grad_out rows one block sums at most (its tensor-core sums drop low bits as they grow:
                       # seed-a 5.1e-4 at 451 rows a block, 6.8e-4 at 1,804, 1.45e-3 at 7,440; the bar 1e-3)
MAX_N = 256            # wgmma's N: a warpgroup's KH x planes x 8 columns
MAX_ACCUMULATORS = 128  # a thread's: N / 2
CONSUMER_REGISTERS = 168  # setmaxnreg's, for the two multiplying warpgroups and the other two (copies, zeroing,
PRODUCER_REGISTERS = 88   # build): 2 x 128 x 168 + 2 x 128 x 88 = 65,536
RAW_ROW_BYTES = 160    # a plane's copied input row: 80 elements from w = -8
# the tuner's choices (stages, ring, raws, tight): grad_out rows staged, input rows a ring holds past KH (how far the
# builders may run ahead of the products; the fewer of its slots mirrored), input rows copied ahead of the builders, K
# blocks of only the rows the output width's starts read; each fits seed-a's 227 KB. Session 22 found rings of KH + 2
# or 3 slower (0.48-0.52 ms against 0.39) while warp 9 zeroed by 16-bit stores; since it zeroes by pieces, KH + 3 with 4
# stages is the fastest measured (0.358 against 0.370 for (8, KH + 1): bench/NOTES.md, session 23, run 5)
CONFIGS = ((4, 3, 8, True), (8, 1, 8, True), (4, 1, 8, False))


@dataclass(frozen=True)
class WgradWgmmaPlan:
    np0: int              # planes (ci, kd) of warpgroup 0
    np1: int              # of warpgroup 1
    piece_ns: tuple[int, ...]  # the N of every wgmma the kernel issues
    ring: int             # input rows a warpgroup's ring holds (KH + tiles.ring)
    rows_lo: int          # the first row of a K block the windows read: 7 - the largest start
    hankel_rows: int      # rows of a K block from rows_lo (odd: a warp's stores of 8 K blocks on distinct banks)
    raws: int             # input rows copied ahead of the builders
    shared_bytes: int
    off_max: int          # the most a grad_out row starts into its 16-byte piece
    round_a: bool         # tf32: grad_out rounded to tf32 by the zeroing warp
    max_rows: int         # tf32: grad_out rows a block sums at most (the launcher refuses fewer splits)
    consumer_registers: int
    producer_registers: int


@dataclass(frozen=True)
class WgradWgmmaTiles:
    """The wgmma wgrad template's configuration: grad_out rows staged ahead (stages - 1 in flight), input
    rows a warpgroup's ring holds past KH, input rows copied ahead of the builders."""

    template: ClassVar[str] = WGRAD_WGMMA_TEMPLATE

    stages: int = 8
    ring: int = 1
    raws: int = 8
    tight: bool = True  # K blocks of only the rows the row's starts and KW read (else 15: every start)
    owc: ClassVar[int] = ROW_POSITIONS  # positions an item: a whole row (wgrad_splits counts items)
    blocks_per_sm: ClassVar[int] = 1
    threads: ClassVar[int] = 512

    def split_blocks(self, spec: ConvSpec) -> int:
        """Blocks one split of the reduction takes: one (a block owns all of N and M)."""
        return 1

    def min_splits(self, spec: ConvSpec, rows: int) -> int:
        """The fewest splits of `rows` grad_out rows the kernel takes: in tf32, TF32_MAX_ROWS a block."""
        return -(-rows // TF32_MAX_ROWS) if spec.dtype == "float32" else 1

    def problem(self, spec: ConvSpec) -> str | None:
        if not (2 <= self.stages <= 8 and 1 <= self.ring <= 4 and 2 <= self.raws <= 8):
            return (f"{self}: the wgmma wgrad template stages 2 to 8 grad_out rows, its ring holds 1 to 4 input rows "
                    f"past the kernel's height and it copies 2 to 8 input rows ahead")
        # tight K blocks hold as many rows as the output width needs: the least here, the width's in shape_problem
        if (shared := plan(spec, self, 8 if self.tight else None).shared_bytes) > SHARED_BYTES_PER_BLOCK_SM90:
            return f"{shared} bytes of shared memory per block exceed {SHARED_BYTES_PER_BLOCK_SM90}"
        return None

    def shape_problem(self, spec: ConvSpec, input_shape: tuple[int, ...]) -> str | None:
        if problem := wgrad_wgmma_shape_problem(spec, input_shape):
            return problem
        ow = spec.output_size(*input_shape[2:])[2]
        if (shared := plan(spec, self, ow).shared_bytes) > SHARED_BYTES_PER_BLOCK_SM90:
            return (f"{self}: {shared} bytes of shared memory per block for output rows {ow} wide exceed "
                    f"{SHARED_BYTES_PER_BLOCK_SM90}")
        return None

    def __str__(self) -> str:
        return f"wgmma stages={self.stages} ring=kh+{self.ring} raws={self.raws}" + (" tight" if self.tight else "")


def _planes(spec: ConvSpec) -> tuple[int, int]:
    planes = spec.in_channels * spec.kernel_size[0]
    return -(-planes // 2), planes // 2


def _per_piece(spec: ConvSpec) -> int:
    """Elements a 16-byte piece: 4 in float32 (tf32), 8 in 16 bits."""
    return 4 if spec.dtype == "float32" else 8


def plan(spec: ConvSpec, tiles: WgradWgmmaTiles, ow: int | None = None) -> WgradWgmmaPlan:
    """The layout for output rows `ow` wide (their start into a 16-byte piece; None: any width, the
    largest start)."""
    _, kh, kw = spec.kernel_size
    np0, np1 = _planes(spec)
    planes = np0 + np1
    pieces = {kh * np * 8 for np in (np0, np1)} | ({8} if spec.bias else set())
    epp = _per_piece(spec)
    off_max = epp - 1 if ow is None else (epp - math.gcd(ow, epp)) % epp
    ring = kh + tiles.ring
    if epp == 4:  # a strip an input row and plane: rows 7 - start .. 66 + kw (the 16th K block's last column)
        rows_lo, rows = (7 - off_max, (60 + kw + off_max) | 1) if tiles.tight else (0, TF32_STRIP_ROWS)
        plane_bytes, stage_bytes, ones_bytes = rows * 16, 2 * STAGE_BYTES, 2 * ONES_BYTES
    else:
        rows_lo, rows = (7 - off_max, (kw + off_max) | 1) if tiles.tight else (0, HANKEL_ROWS)
        plane_bytes, stage_bytes, ones_bytes = 8 * rows * 16, STAGE_BYTES, ONES_BYTES
    raw_slot = -(-planes * RAW_ROW_BYTES * 8 // epp // 128) * 128  # 80 elements a plane: 160 bytes, 320 in float32
    # the ring and a copy of its first KH - 1 slots, each slot an input row of every plane; the copied input rows; the
    # mbarriers: FULL, READY, EMPTY a stage, RAW and RAW_EMPTY a copied row, BUILT and FREE a ring slot
    rings = sum(-(-(ring + kh - 1) * np * plane_bytes // 128) * 128 for np in (np0, np1))  # each 128-byte aligned
    shared = (1024 + tiles.stages * stage_bytes + rings + ones_bytes
              + tiles.raws * raw_slot + 8 * (3 * tiles.stages + 2 * tiles.raws + 2 * ring))
    return WgradWgmmaPlan(np0=np0, np1=np1, piece_ns=tuple(sorted(pieces)), ring=ring, rows_lo=rows_lo,
                          hankel_rows=rows, raws=tiles.raws,
                          shared_bytes=shared,
                          off_max=off_max, round_a=TF32_ROUND_A, max_rows=TF32_MAX_ROWS,
                          consumer_registers=CONSUMER_REGISTERS,
                          producer_registers=PRODUCER_REGISTERS)


def supports_wgrad_wgmma(spec: ConvSpec) -> str | None:
    """None if the wgmma wgrad template serves `spec` (on an sm_90 GPU); otherwise why not."""
    kd, kh, kw = spec.kernel_size
    if spec.dtype not in ("bfloat16", "float16") and (spec.dtype, spec.precision) != ("float32", "tf32"):
        return (f"dtype {spec.dtype} with precision={spec.precision!r}: the wgmma wgrad template multiplies bfloat16, "
                f"float16 or float32 as tf32 (precision='tf32')")
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
    16-byte pieces (width a multiple of 8, 4 in float32), grad_out through the copy engine (a plane a
    multiple of 16 bytes), and a grad_out row with its start into a 16-byte piece fits 64 positions."""
    _, _, d, h, w = input_shape
    _, oh, ow = spec.output_size(d, h, w)
    epp = _per_piece(spec)
    if w % epp:
        return f"input width {w}: the wgmma wgrad template needs a multiple of {epp} in {spec.dtype}"
    if (oh * ow) % epp:
        return f"output planes of {oh}x{ow}: the wgmma wgrad template needs oh x ow a multiple of {epp} in {spec.dtype}"
    if ow + (start := (epp - math.gcd(ow, epp)) % epp) > ROW_POSITIONS:
        return (f"output width {ow}: the wgmma wgrad template takes rows of {ROW_POSITIONS} positions, which a row "
                f"starting {start} elements in does not fit")
    return None


def _default_tiles(spec: ConvSpec) -> WgradWgmmaTiles:
    """WgradWgmmaTiles() where it fits (16 bits), else the tuner's first that does (tf32: (8, KH + 1) does not)."""
    return WgradWgmmaTiles() if WgradWgmmaTiles().problem(spec) is None else wgrad_wgmma_candidates(spec)[0]


def wgrad_wgmma_candidates(spec: ConvSpec) -> list[WgradWgmmaTiles]:
    return [t for t in (WgradWgmmaTiles(*c) for c in CONFIGS) if t.problem(spec) is None]


def render_wgrad_wgmma(spec: ConvSpec, tiles: WgradWgmmaTiles | None = None, wide: bool = False,
                       size: tuple[int, int, int] | None = None) -> Source:
    """The wgmma wgrad template for `spec` on inputs of `size` (the input's d, h, w; required). Its
    entry point takes what render_grad.render_wgrad's does. Offsets are 64-bit wherever they can be
    large, so `wide` does not change the source."""
    tiles = serving_tiles(spec, tiles, "wgmma wgrad template", supports_wgrad_wgmma(spec), _default_tiles)
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
        "product": (f"per grad_out row: wgmma m64nN" + ("k8 x 8 (tf32)" if spec.dtype == "float32" else "k16 x 4")
                    + f", A and B from shared memory; N = {kh} x {p.np0} and "
                    f"{kh} x {p.np1} planes x 8 (kw {kw} of 8) for the two warpgroups"
                    + (", + 8 (the bias)" if spec.bias else "")),
        "shared": f"{p.shared_bytes} bytes per block",
        "input size": sized.param,
    }
    return Source(name=name, template=WGRAD_WGMMA_TEMPLATE, body=body, identity=sized.identity(spec),
                  arg_names=WGRAD_ARGS, params=params)
