"""The tensor-core wgrad template on the CPU emulator (tests/unit/cuda_emulator.h) against torch's
float64 gradients of the weight and the bias: the seeds' candidates on small inputs, and edge
specs (odd and short rows, several items a row, padding, strides, dilation, groups, kw > 8, no
bias, several blocks along M and N, 64-bit offsets), float32 as tf32 and as 3xTF32 ('ieee', at
float32's bar), each with a few splits of the reduction so that a block's items step across
chunks, rows and planes. Grad outputs and the workspace are NaN-poisoned before the run, so
anything left unwritten shows."""
import dataclasses
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import torch.nn.functional as F

from conv3d_codegen.kernel import launch_args
from conv3d_codegen.measure import relative_error, tolerance
from conv3d_codegen.render_wgrad_mma import render_wgrad_mma, wgrad_mma_candidates
from conv3d_codegen.spec import ConvSpec
from conv3d_codegen.workloads import WORKLOADS

from . import cuda_emulation


def _spec(text: str, dtype: str) -> ConvSpec:
    if dtype == "tf32":
        return ConvSpec.from_text(f"{text} --dtype float32 --precision tf32")
    return ConvSpec.from_text(f"{text} --dtype {dtype}")


def _seed(name: str, dtype: str) -> ConvSpec:
    return WORKLOADS[name].spec.model_copy(update={"dtype": "float32" if dtype == "tf32" else dtype,
                                                   "precision": "tf32" if dtype == "tf32" else "ieee"})


def _case(name: str, spec: ConvSpec, shape, which=slice(None), splits=(1, 5), wide=False):
    ow = spec.output_size(*shape[2:])[2]
    found = wgrad_mma_candidates(spec, ow)
    chosen = found[which] if isinstance(which, slice) else list(dict.fromkeys(found[i] for i in which))
    dtype = "tf32" if spec.precision == "tf32" else spec.dtype
    return [pytest.param(spec, shape, t, splits, wide, id=f"{name}-{dtype}-{'-'.join(str(t).split()[1:])}")
            for t in chosen]


# The seeds' kernels with ow = 64 (one item a row) and ow = 94 (items of 64 and 30 positions).
SEEDS = [c for w in ("seed-a", "seed-b") for dt in ("bfloat16", "tf32", "float32")
         for c in _case(w, _seed(w, dt), (1, 3, 4, 7, 70) if w == "seed-a" else (1, 3, 4, 5, 66))]
SEEDS += [c for w in ("seed-a", "seed-b") for dt in ("float16", "bfloat16", "tf32", "float32")
          for c in _case(f"{w}-two-items", _seed(w, dt), (2, 3, 3, 6, 100), which=(0,), splits=(3, 7))]

EDGES = [  # name, spec, input shape, dtypes (the first and last candidates of each)
    ("odd-rows", "3x5x7 --cin 3 --cout 64", (2, 3, 5, 7, 37), ["bfloat16", "tf32", "float32"]),
    ("pad1-cout8", "3x3x3 --cin 4 --cout 8 --padding 1", (2, 4, 4, 5, 21), ["float16"]),
    ("stride1x1x2", "3x5x7 --cin 4 --cout 16 --padding 1x2x0 --stride 1x1x2", (2, 4, 5, 7, 37),
     ["float16", "tf32", "float32"]),
    ("stride3-pad", "3x5x7 --cin 3 --cout 16 --stride 1x1x3 --padding 1x2x3", (1, 3, 5, 7, 40), ["bfloat16"]),
    ("stride2", "3x3x3 --cin 4 --cout 8 --stride 2 --padding 1", (2, 4, 5, 6, 23), ["bfloat16"]),
    ("dil1x2x2", "1x3x5 --cin 2 --cout 8 --padding 0x1x2 --dilation 1x2x2", (2, 2, 3, 9, 19), ["bfloat16"]),
    ("dil2", "3x3x3 --cin 4 --cout 8 --dilation 2 --padding 1", (1, 4, 5, 6, 17), ["float16"]),
    ("groups2-same", "3x3x3 --cin 8 --cout 16 --groups 2 --padding same", (1, 8, 3, 4, 13),
     ["bfloat16", "tf32", "float32"]),
    ("kw9-dil-nobias", "1x2x9 --cin 2 --cout 24 --padding 0x1x4 --dilation 1x1x2 --no-bias", (2, 2, 3, 4, 35),
     ["bfloat16", "tf32", "float32"]),
    ("cout72", "3x3x3 --cin 3 --cout 72", (1, 3, 4, 5, 20), ["bfloat16"]),
    ("wide-n", "3x3x3 --cin 64 --cout 64 --padding 1", (1, 64, 2, 3, 18), ["bfloat16"]),
    ("pointwise-ow-odd", "1x1x1 --cin 5 --cout 40", (2, 5, 2, 3, 17), ["bfloat16"]),
    ("short-rows", "3x3x3 --cin 4 --cout 8", (2, 4, 4, 5, 9), ["float16"]),
]
CASES = SEEDS + [c for name, text, shape, dtypes in EDGES for dt in dtypes
                 for c in _case(name, _spec(text, dt), shape, which=(0, -1))]
CASES += _case("offsets64", _spec("3x5x7 --cin 3 --cout 64 --padding 1", "bfloat16"), (1, 3, 3, 5, 33),
               which=(0,), wide=True)


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    if (why := cuda_emulation.unavailable()) is not None:
        pytest.skip(why)
    folder = tmp_path_factory.mktemp("emulated-wgrad")
    sources = {}
    for param in CASES:
        spec, _, tiles, _, wide = param.values
        sources[(spec, tiles, wide)] = render_wgrad_mma(spec, tiles, wide, emulate=True)
    with ThreadPoolExecutor(2) as pool:
        built = list(pool.map(lambda s: cuda_emulation.build(s, folder), sources.values()))
    return dict(zip(sources, built))


@pytest.mark.slow
@pytest.mark.parametrize("spec, shape, tiles, splits, wide", CASES)
def test_emulated_wgrad_matches_torch(emulated, spec, shape, tiles, splits, wide):
    kernel = emulated[(spec, tiles, wide)]
    generator = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=generator).to(spec.torch_dtype)
    grad_out = torch.randn((shape[0], spec.out_channels, *spec.output_size(*shape[2:])),
                           generator=generator).to(spec.torch_dtype)
    weight = torch.zeros(spec.weight_shape, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(spec.out_channels, dtype=torch.float64, requires_grad=True) if spec.bias else None
    F.conv3d(x.double(), weight, bias, **spec.functional_args()).backward(grad_out.double())
    stride = weight.numel() + (spec.out_channels if spec.bias else 0)
    for count in splits:
        grad_w = torch.full(spec.weight_shape, float("nan"), dtype=spec.torch_dtype)
        grad_b = torch.full((spec.out_channels,), float("nan"), dtype=spec.torch_dtype) if spec.bias else None
        workspace = torch.full((count * stride,), float("nan"))
        args = launch_args(spec, shape) | {"splits": count, "workspace": workspace.data_ptr()}
        kernel(x, grad_out, grad_b, grad_w, args, extra=(workspace,))
        err = relative_error(grad_w, weight.grad)
        if spec.bias:
            err = max(err, relative_error(grad_b, bias.grad))
        assert err <= tolerance(spec), f"{count} splits: relative error {err:.2e} (NaN: unwritten output)"


@pytest.mark.slow
def test_the_emulated_check_fails_a_broken_item_walk(emulated, tmp_path):
    """The check above is worth trusting only if it fails a kernel that walks its items wrong:
    the same source with the carry from a row's last chunk to the next row dropped."""
    (spec, shape, tiles, splits, wide), = [c.values for c in CASES if c.id.startswith("seed-b-two-items-bfloat16")]
    source = render_wgrad_mma(spec, tiles, wide, emulate=True)
    broken = dataclasses.replace(source, body=source.body.replace("it.ohi += by.ohi + carry;", "it.ohi += by.ohi;"))
    assert broken.body != source.body
    with pytest.raises(AssertionError, match="relative error"):
        test_emulated_wgrad_matches_torch({(spec, tiles, wide): cuda_emulation.build(broken, tmp_path)},
                                          spec, shape, tiles, splits, wide)
