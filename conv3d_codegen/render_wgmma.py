"""Rendering the warpgroup (wgmma, sm_90a) row-product forward template, templates/conv3d_fwd_wgmma.cu.j2.

For few input channels and wide kernels along w (seed-a: 3 input channels, 3x5x7), one output row
(n, od, oh) is one warpgroup matrix product per k16 step: M = 64 output channels (wgmma's M), N =
the row's positions, K = the input rows (kh, ci, kd) that reach it x 8 taps along w (taps past kw
have zero weights). The weights are A and stay in the warpgroup's registers; B is read by the
tensor cores from shared memory, where each staged input row is laid out as Hankel blocks: block b
holds row[8 b + i + kw] at row i, column kw, which is the 128-byte core matrix of a no-swizzle
K-major wgmma operand, so B needs no other layout and every k16 step's descriptor is the chunk's
plus a compile-time offset. An m64nNk16 reads its B once for all 64 channels; mma.sync, with a
warp's 16 channels of kw = 7 weights in its registers, reads it four times
(bench/probes/s13_fwd_wgmma.py: seed-a bf16 0.311 ms against the tensor-core template's 0.613).

The template serves bfloat16 and float16 on sm_90 (built for sm_90a; Target does so for every
Hopper build), NCDHW, groups 1, stride and dilation 1, no padding along w, kw 5 or 7 (narrower
kernels waste most of K, and the row-product template serves them; an even kw makes every output
row odd, which the staged output does not take), out_channels <= 64, and at most
MAX_ROWS input rows per output row (the weights in 2 x MAX_ROWS registers); on inputs with w a
multiple of 8, ow even and <= 64, and oh * ow and R * ow multiples of 8 (a channel's rows of a chunk leave
as one bulk copy: wgmma_shape_problem). Rendered with the input's size, N is the output row
rounded up to 8 positions and every size is a constant; without one, N = 64.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .render import (DIRECT_ARGS, InputSize, SHARED_BYTES_PER_BLOCK_SM90, SHARED_BYTES_PER_SM, Source, _environment,
                     serving_tiles, templates_dir)
from .render_rows import row_product_problem
from .spec import ConvSpec

WGMMA_TEMPLATE = "conv3d_fwd_wgmma.cu.j2"

HOPPER_ARCHES = ("sm_90", "sm_90a")  # wgmma: compute capability 9.0, built as sm_90a
TAPS_W = 8              # taps along w per input row in K: a core matrix row (16 bytes of 16-bit elements)
BLOCK_STRIDE = 144      # bytes from one Hankel block to the next: 128 and 16 of padding, so a quarter
#                         warp's 16-byte stores to 8 blocks fall on distinct banks (128: 0.536 ms, 144:
#                         0.311 in s13_fwd_wgmma.py)
MAX_OW = 64             # N of the wgmma: the output row, at most 64 positions (32 accumulators a set)
MAX_ROWS = 48           # input rows per output row: the weights take 2 registers a row a thread
MAX_CHANNELS = 64       # M of the wgmma
THREADS = 128           # one warpgroup


@dataclass(frozen=True)
class WgmmaTiles:
    """Tile sizes of the wgmma row-product template (the autotuner's search space)."""

    template: ClassVar[str] = WGMMA_TEMPLATE

    r: int              # output rows per chunk
    blocks_per_sm: int  # shared memory and registers are fitted to this many blocks an SM

    def problem(self, spec: ConvSpec) -> str | None:
        """Why these tiles cannot serve `spec`, or None."""
        if self.r < 1 or self.blocks_per_sm < 1:
            return f"r={self.r} and blocks_per_sm={self.blocks_per_sm} must be positive"
        g = geometry(spec, self)  # for any width: N = 64 (wgmma_shape_problem checks an input's)
        if g.shared_bytes > SHARED_BYTES_PER_BLOCK_SM90:
            return f"{g.shared_bytes} bytes of shared memory per block exceed {SHARED_BYTES_PER_BLOCK_SM90}"
        if self.blocks_per_sm > 2:
            return f"blocks_per_sm={self.blocks_per_sm}: the weights and two accumulator sets need over 168 registers"
        return None

    def shape_problem(self, spec: ConvSpec, input_shape: tuple[int, ...]) -> str | None:
        """Why these tiles cannot run on inputs of `input_shape`, or None (wgmma_shape_problem)."""
        return wgmma_shape_problem(spec, self, input_shape)

    def __str__(self) -> str:
        return f"wgmma r={self.r} blocks_per_sm={self.blocks_per_sm}"


@dataclass(frozen=True)
class WgmmaGeometry:
    """What the template sizes for one spec, tile choice and N."""

    rows: int           # input rows per output row (kh, ci, kd)
    steps: int          # k16 steps: two input rows each
    staged: int         # input rows of a chunk, and one zero row after them
    row_bytes: int      # one staged row's Hankel blocks
    out_pitch: int      # bytes of one channel's staged output rows
    out_bytes: int      # the chunk's staged output, every channel
    n: int              # positions a wgmma computes

    @property
    def hankel_bytes(self) -> int:
        return (self.staged + 1) * self.row_bytes

    @property
    def shared_bytes(self) -> int:
        return self.hankel_bytes + self.out_bytes


def out_pitch(r: int, ow: int) -> int:
    """Bytes of one channel's staged rows: r * ow 16-bit elements, in words that are 4 modulo 8 (the
    epilogue's 32-bit stores, 8 channels x 4 position pairs a warp, then hit distinct banks; the
    pitch is 16-byte aligned for the bulk copies)."""
    words = (r * ow + 1) // 2
    while words % 8 != 4:
        words += 1
    return 4 * words


def geometry(spec: ConvSpec, tiles: WgmmaTiles, ow: int | None = None) -> WgmmaGeometry:
    kd, kh, _ = spec.kernel_size
    rows = spec.in_channels * kd * kh
    n = MAX_OW if ow is None else 8 * -(-ow // 8)
    pitch = out_pitch(tiles.r, MAX_OW if ow is None else ow)
    return WgmmaGeometry(rows=rows, steps=-(-rows // 2), staged=(tiles.r + kh - 1) * spec.in_channels * kd,
                         row_bytes=(n // 8) * BLOCK_STRIDE, out_pitch=pitch, out_bytes=spec.out_channels * pitch, n=n)


def supports_wgmma(spec: ConvSpec) -> str | None:
    """None if the wgmma row-product template serves `spec` (on an sm_90 GPU); otherwise why not."""
    kd, kh, kw = spec.kernel_size
    if spec.dtype not in ("bfloat16", "float16"):
        return f"dtype {spec.dtype}: the wgmma row-product template multiplies bfloat16 or float16"
    if problem := row_product_problem(spec, "wgmma row-product template"):
        return problem
    if not 5 <= kw <= TAPS_W or kw % 2 == 0:
        return (f"kw={kw}: the wgmma row-product template takes 5 or 7 taps along w (an even kw makes the "
                "output width odd on every input it takes: w a multiple of 8, no padding along w)")
    if spec.out_channels > MAX_CHANNELS:
        return f"out_channels={spec.out_channels}: the wgmma row-product template takes at most {MAX_CHANNELS}"
    rows = spec.in_channels * kd * kh
    if rows > MAX_ROWS:
        return (f"{rows} input rows per output row ({spec.in_channels} channels x {kd}x{kh}): the wgmma "
                f"row-product template takes at most {MAX_ROWS} (the weights in its registers)")
    return default_wgmma_tiles(spec).problem(spec)


def wgmma_shape_problem(spec: ConvSpec, tiles: WgmmaTiles, input_shape: tuple[int, ...]) -> str | None:
    """Why the template with `tiles` cannot run on inputs of `input_shape`, or None."""
    _, _, d, h, w = input_shape
    od, oh, ow = spec.output_size(d, h, w)
    if w % 8:
        return f"input width {w}: the wgmma row-product template needs a multiple of 8"
    if ow > MAX_OW or ow % 2:
        return f"output width {ow}: the wgmma row-product template needs an even width, at most {MAX_OW}"
    if (oh * ow) % 8 or (tiles.r * ow) % 8:
        return (f"output rows of {ow} with r={tiles.r}: the wgmma row-product template needs oh * ow and "
                "r * ow multiples of 8 (a channel's rows of a chunk leave as one bulk copy)")
    shared = geometry(spec, tiles, ow).shared_bytes
    if tiles.blocks_per_sm * (shared + 1024) > SHARED_BYTES_PER_SM:
        return f"{tiles.blocks_per_sm} blocks of {shared} bytes of shared memory do not fit an SM"
    return None


# Fastest first on seed-a (s13_fwd_wgmma.py): chunks of 4 rows at two blocks an SM; then 8 rows at one.
PREFERRED = (WgmmaTiles(r=4, blocks_per_sm=2), WgmmaTiles(r=8, blocks_per_sm=1), WgmmaTiles(r=4, blocks_per_sm=1))


def default_wgmma_tiles(spec: ConvSpec) -> WgmmaTiles:
    """The first preferred tiles that fit the spec (the last, if none does: its problem is the reason)."""
    return next((t for t in PREFERRED if t.problem(spec) is None), PREFERRED[-1])


def wgmma_candidates(spec: ConvSpec) -> list[WgmmaTiles]:
    """The autotuning space: the first two preferred tiles that fit the spec."""
    return [t for t in PREFERRED if t.problem(spec) is None][:2]


def render_wgmma(spec: ConvSpec, tiles: WgmmaTiles | None = None, wide: bool = False,
                 size: tuple[int, int, int] | None = None) -> Source:
    """The wgmma row-product template for `spec`; with `size` (the input's d, h, w) for inputs of
    that size only. Its offsets are 64-bit wherever they can be large, so `wide` does not change
    the source."""
    tiles = serving_tiles(spec, tiles, "wgmma row-product template", supports_wgmma(spec), default_wgmma_tiles)
    sized = InputSize.of(spec, size)
    g = geometry(spec, tiles, sized.out_size[2] if sized.out_size else None)
    name = f"conv3d_fwd_wgmma_{spec.tag}" + sized.suffix
    body = _environment(templates_dir()).get_template(WGMMA_TEMPLATE).render(
        spec=spec, tiles=tiles, geometry=g, name=name, entry=f"{name}_launch", arg_names=DIRECT_ARGS,
        size=sized.size, out_size=sized.out_size, block_stride=BLOCK_STRIDE, max_ow=MAX_OW)
    params = {
        "spec": spec.canonical_json(),
        "tiles": str(tiles),
        "product": (f"per output row: wgmma m64n{g.n}k16 x {g.steps}: M = 64 channels, N = {g.n} positions, "
                    f"K = {g.rows} input rows x {TAPS_W} taps (weights in registers, B as Hankel blocks)"),
        "shared": f"{g.shared_bytes} bytes per block",
        "threads": str(THREADS),
        "input size": sized.param,
    }
    return Source(name=name, template=WGMMA_TEMPLATE, body=body, identity=sized.identity(spec),
                  arg_names=DIRECT_ARGS, params=params)
