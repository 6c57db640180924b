"""Rendering the row-product forward template, templates/conv3d_fwd_rows.cu.j2.

For few input channels (seed-b: 3 of them, 3x3x3), one output row (n, od, oh) is a matrix
product: M = the output channels, N = the row's positions, K = the input rows that reach it x 4
taps along w. B is a Toeplitz matrix of input rows staged in shared memory (twice, the second
copy shifted by one element, so every B register is one aligned 32-bit load), and the weights
stay in registers, so nothing is gathered from global memory (the tensor-core template's lanes
gather their A elements one load at a time). A chunk of R output rows of one (n, od) is staged
in shared memory on the way out and leaves as 16-byte vectors of one channel a warp (its rows are
contiguous in y), or on sm_90 with RowsTiles.bulk as one bulk copy a channel by the copy engine;
bench/probes/s11_fwd_rows.py and s12_rows_parts.py measured the ways out against each other.
Rendered with the input's size (d, h, w), the kernel serves inputs of that size only and its
sizes are compile-time constants (10% faster on seed-b, s12_rows_parts.py); the dispatcher and
the tuner render it so. Without a size it takes any input rows_shape_problem accepts.

The template serves 16-bit dtypes and float32 with precision 'tf32' (m16n8k8 MMAs, K with the
taps unpadded), NCDHW, groups 1, stride and dilation 1, no padding along w, kw <= 4,
32 | out_channels <= 128, and K small enough for a warp's 32 channels of weights to stay in
registers (in_channels * kd * kh <= 32 in 16 bits, in_channels * kd * kh * kw <= 88 in tf32); on
inputs w <= 64 with w a multiple of VEC (8 elements, 4 in float32), ow even and od * oh * ow a
multiple of VEC (rows_shape_problem). Tile sizes are RowsTiles; `rows_candidates` is the
autotuning space.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .render import (DIRECT_ARGS, InputSize, SHARED_BYTES_PER_BLOCK, SHARED_BYTES_PER_SM, Source, _environment,
                     serving_tiles, templates_dir)
from .spec import ConvSpec

ROWS_TEMPLATE = "conv3d_fwd_rows.cu.j2"

TAPS_W = 4              # taps along w per input row in K (KWP in the template; in tf32 KWP = kw)
MAX_STEPS = 8           # k16 steps: a warp's 32 channels x 16 * MAX_STEPS K in 64 registers
MAX_STEPS_TF32 = 11     # k8 steps in tf32: a warp's 32 channels x 8 * 11 K in 88 registers
MAX_W = 64              # input row length a staged copy holds (two halves of 32 positions)
COPY_BYTES = 160        # one copy of a row: 64 elements and 16 zeros; 40 words, 8 mod 32
# tf32: a row of 64 floats and 12 zeros, 76 words (12 mod 32): a warp's B load reads words g + kw of
# two rows (banks 0-9 and 12-21), so the rows' words fall on distinct banks.
COPY_BYTES_TF32 = 304
MAX_CHANNELS = 128      # four warps of 32 channels per half row
BANKS = 32


@dataclass(frozen=True)
class RowsTiles:
    """Tile sizes of the row-product template (the autotuner's search space)."""

    template: ClassVar[str] = ROWS_TEMPLATE

    r: int              # output rows per chunk (even: a chunk's rows of a channel leave as 4-byte pieces at least)
    rw: int             # warps along rows: a row's warps (channel groups x two halves) repeat rw times
    blocks_per_sm: int  # the registers are fitted to this many blocks an SM
    bulk: bool = False  # sm_90: each channel's staged output leaves by one bulk copy (elsewhere, by the warps)

    def problem(self, spec: ConvSpec) -> str | None:
        """Why these tiles cannot serve `spec`, or None."""
        if self.r < 2 or self.r % 2:
            return f"r={self.r} is not an even number of rows"
        if self.rw < 1 or self.blocks_per_sm < 1:
            return f"rw={self.rw} and blocks_per_sm={self.blocks_per_sm} must be positive"
        g = geometry(spec, self)
        if g.threads > 1024:
            return f"{g.threads} threads per block exceed 1024"
        if g.shared_bytes > SHARED_BYTES_PER_BLOCK:
            return f"{g.shared_bytes} bytes of shared memory per block exceed {SHARED_BYTES_PER_BLOCK}"
        if self.blocks_per_sm * (g.shared_bytes + 1024) > SHARED_BYTES_PER_SM:
            return f"{self.blocks_per_sm} blocks of {g.shared_bytes} bytes of shared memory do not fit an SM"
        if g.threads * self.blocks_per_sm > 2048:
            return f"{self.blocks_per_sm} blocks of {g.threads} threads exceed an SM's 2048"
        return None

    def shape_problem(self, spec: ConvSpec, input_shape: tuple[int, ...]) -> str | None:
        """Why these tiles cannot run on inputs of `input_shape`, or None (rows_shape_problem)."""
        return rows_shape_problem(spec, input_shape)

    def __str__(self) -> str:
        return f"rows r={self.r} rw={self.rw} blocks_per_sm={self.blocks_per_sm}" + (" bulk" if self.bulk else "")


@dataclass(frozen=True)
class RowsGeometry:
    """What the template sizes for one spec and tile choice."""

    steps: int          # k16 steps of K
    threads: int
    copy_bytes: int
    in_bytes: int       # one buffer of a chunk's staged input rows (there are two)
    out_pitch: int      # bytes of one channel's staged output rows
    out_bytes: int      # the chunk's staged output, every channel
    max_steps: int = MAX_STEPS

    @property
    def shared_bytes(self) -> int:
        return 2 * self.in_bytes + self.out_bytes


def _out_pitch(r: int, tf32: bool = False) -> int:
    """Bytes of one channel's staged rows: room for r rows of MAX_W and a shift of up to a
    16-byte piece, 16-byte aligned, in words whose residue modulo 32 spreads the accumulators'
    stores (8 channels by 4 position pairs) over distinct banks: 12 or 28 for 16-bit outputs
    (32-bit stores), 8 or 24 for float32 ones (64-bit stores, two phases of 16 lanes)."""
    elem = 4 if tf32 else 2
    words = (elem * (r * MAX_W + 16 // elem) + 3) // 4
    while words % BANKS not in ((8, 24) if tf32 else (12, 28)):
        words += 1
    return 4 * words


def _is_tf32(spec: ConvSpec) -> bool:
    return spec.dtype == "float32"


def geometry(spec: ConvSpec, tiles: RowsTiles) -> RowsGeometry:
    kd, kh, kw = spec.kernel_size
    tf32 = _is_tf32(spec)
    rows = spec.in_channels * kd * kh
    taps, k_step = (kw, 8) if tf32 else (TAPS_W, 16)
    steps = -(-rows * taps // k_step)
    k_rows = (steps * k_step - 1) // taps + 1  # input rows K reaches, the last ones zeros
    staged = (tiles.r + kh - 1) * spec.in_channels * kd + k_rows - rows
    threads = 32 * (spec.out_channels // 32) * 2 * tiles.rw
    out_pitch = _out_pitch(tiles.r, tf32)
    row_bytes = COPY_BYTES_TF32 if tf32 else 2 * COPY_BYTES
    return RowsGeometry(steps=steps, threads=threads, copy_bytes=COPY_BYTES_TF32 if tf32 else COPY_BYTES,
                        in_bytes=staged * row_bytes, out_pitch=out_pitch, out_bytes=spec.out_channels * out_pitch,
                        max_steps=MAX_STEPS_TF32 if tf32 else MAX_STEPS)


def row_product_problem(spec: ConvSpec, template: str) -> str | None:
    """What a template that stages whole input rows and slides the taps along them (this one,
    render_wgmma's) cannot take in `spec`, or None: it reads NCDHW rows, with groups 1, stride and
    dilation 1, and no padding along w."""
    if spec.layout != "ncdhw":
        return f"layout {spec.layout!r}: the {template} reads contiguous NCDHW only"
    if spec.groups != 1:
        return f"groups={spec.groups}: the {template} needs groups=1"
    if spec.stride != (1, 1, 1) or spec.dilation != (1, 1, 1):
        return f"the {template} needs stride 1 and dilation 1"
    if spec.pad_before[2] or spec.pad_after[2]:
        return f"the {template} needs no padding along w"
    return None


def supports_rows(spec: ConvSpec) -> str | None:
    """None if the row-product template serves `spec`; otherwise the reason it does not."""
    kd, kh, kw = spec.kernel_size
    if spec.dtype not in ("bfloat16", "float16") and not (spec.dtype == "float32" and spec.precision == "tf32"):
        return (f"dtype {spec.dtype} with precision {spec.precision!r}: the row-product template multiplies "
                "bfloat16, float16, or float32 as tf32")
    if problem := row_product_problem(spec, "row-product template"):
        return problem
    if kw > TAPS_W:
        return f"kw={kw}: the row-product template takes at most {TAPS_W} taps along w"
    if spec.out_channels % 32 or spec.out_channels > MAX_CHANNELS:
        return f"out_channels={spec.out_channels}: the row-product template needs a multiple of 32, at most {MAX_CHANNELS}"
    rows = spec.in_channels * kd * kh
    if _is_tf32(spec) and rows * kw > MAX_STEPS_TF32 * 8:
        return (f"K = {rows * kw} ({spec.in_channels} channels x {kd}x{kh}x{kw}): the row-product template takes "
                f"at most {MAX_STEPS_TF32 * 8} in tf32 (a warp's weights in {MAX_STEPS_TF32 * 8} registers)")
    if not _is_tf32(spec) and rows > MAX_STEPS * 16 // TAPS_W:
        return (f"{rows} input rows per output row ({spec.in_channels} channels x {kd}x{kh}): the row-product "
                f"template takes at most {MAX_STEPS * 16 // TAPS_W} (a warp's weights in 64 registers)")
    return default_rows_tiles(spec).problem(spec)


def rows_shape_problem(spec: ConvSpec, input_shape: tuple[int, ...]) -> str | None:
    """Why the template cannot run on inputs of `input_shape`, or None."""
    _, _, d, h, w = input_shape
    od, oh, ow = spec.output_size(d, h, w)
    vec = 4 if _is_tf32(spec) else 8  # elements of a 16-byte piece
    if w % vec or w > MAX_W:
        return f"input width {w}: the row-product template needs a multiple of {vec}, at most {MAX_W}"
    if ow % 2 or (od * oh * ow) % vec:
        return (f"output {od}x{oh}x{ow}: the row-product template needs an even width and a multiple of {vec} "
                "positions")
    return None


# Fastest first on seed-b with the sizes fixed (bench/results/2026-11-22-h100-s12-rows-parts-run4.md:
# 0.276, 0.287 and 0.286 ms; r 6 with two warps a row spills ~200 bytes at 128 registers and is the
# fastest all the same), then chunks at fewer blocks an SM, for more channels (each 32 more are
# two more warps).
PREFERRED = (RowsTiles(r=6, rw=2, blocks_per_sm=2, bulk=True), RowsTiles(r=4, rw=1, blocks_per_sm=3),
             RowsTiles(r=6, rw=1, blocks_per_sm=2, bulk=True), RowsTiles(r=8, rw=2, blocks_per_sm=1),
             RowsTiles(r=4, rw=1, blocks_per_sm=2), RowsTiles(r=6, rw=1, blocks_per_sm=1),
             RowsTiles(r=4, rw=1, blocks_per_sm=1))
# tf32: float32 rows and outputs take twice the shared memory, so chunks are shorter; registers for
# 88 weights a lane and the accumulators fit 168 (three blocks of four warps an SM).
PREFERRED_TF32 = (RowsTiles(r=2, rw=1, blocks_per_sm=3, bulk=True), RowsTiles(r=2, rw=1, blocks_per_sm=3),
                  RowsTiles(r=4, rw=1, blocks_per_sm=2, bulk=True), RowsTiles(r=2, rw=1, blocks_per_sm=1))
# Tiles whose registers do not hold everything at their blocks an SM: at most this many bytes
# of spill (ptxas, sm_90 and sm_80), checked by the unit tests.
SPILL_BYTES = {RowsTiles(r=6, rw=2, blocks_per_sm=2, bulk=True): 256,
               RowsTiles(r=2, rw=1, blocks_per_sm=3, bulk=True): 32}  # tf32: 4-12 bytes at 168 registers


def _preferred(spec: ConvSpec) -> tuple[RowsTiles, ...]:
    return PREFERRED_TF32 if _is_tf32(spec) else PREFERRED


def default_rows_tiles(spec: ConvSpec) -> RowsTiles:
    """The first preferred tiles that fit the spec (the last, if none does: its problem is the reason)."""
    preferred = _preferred(spec)
    return next((t for t in preferred if t.problem(spec) is None), preferred[-1])


def rows_candidates(spec: ConvSpec) -> list[RowsTiles]:
    """The autotuning space: the first three preferred tiles that fit the spec."""
    return [t for t in _preferred(spec) if t.problem(spec) is None][:3]


def render_rows(spec: ConvSpec, tiles: RowsTiles | None = None, wide: bool = False,
                size: tuple[int, int, int] | None = None) -> Source:
    """The row-product template for `spec`; with `size` (the input's d, h, w) for inputs of that
    size only. Its offsets are 64-bit wherever they can be large, so `wide` (see
    render.WIDE_INDEX_ELEMENTS) does not change the source."""
    tiles = serving_tiles(spec, tiles, "row-product template", supports_rows(spec), default_rows_tiles)
    g = geometry(spec, tiles)
    sized = InputSize.of(spec, size)
    name = f"conv3d_fwd_rows_{spec.tag}" + sized.suffix
    body = _environment(templates_dir()).get_template(ROWS_TEMPLATE).render(
        spec=spec, tiles=tiles, geometry=g, name=name, entry=f"{name}_launch", arg_names=DIRECT_ARGS,
        size=sized.size, out_size=sized.out_size)
    params = {
        "spec": spec.canonical_json(),
        "tiles": str(tiles),
        "product": (f"per output row: M = {spec.out_channels} channels, N = 64 positions, K = {8 * g.steps} "
                    f"({g.steps} k8 tf32 steps; weights in registers)" if _is_tf32(spec) else
                    f"per output row: M = {spec.out_channels} channels, N = 64 positions, K = {16 * g.steps} "
                    f"({g.steps} k16 steps; weights in registers)"),
        "shared": f"{g.shared_bytes} bytes per block",
        "threads": str(g.threads),
        "input size": sized.param,
    }
    return Source(name=name, template=ROWS_TEMPLATE, body=body, identity=sized.identity(spec),
                  arg_names=DIRECT_ARGS, params=params)
