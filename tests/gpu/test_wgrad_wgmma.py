"""The wgmma wgrad template (sm_90a) against torch's float64 gradients of the weight and the bias, on fresh random
inputs, with the workspace and the outputs poisoned (NaN) before each run, so an element a kernel leaves unwritten
shows: seed-a's bfloat16 on two samples with tight and full K blocks, and edge specs (padding along w, also with a ring
of KH + 2, 3x3x3 with 12 input planes, output rows starting 1 to 7 elements into a 16-byte piece with an 8-wide kernel
in float16 without bias, KH = 7 with N = 168), each with 1, 7 and as many splits as SMs (ranges that start and end
inside an (n, od)); the same in tf32 (float32, precision 'tf32') with at least the splits tf32 needs, and the
launcher refusing fewer. Then the same
result on every run, an empty batch, and the public path: weight_grad through the tuner on seed-a's shape, whose
record names this template where it wins. Skipped, and says so, on GPUs other than compute capability 9.0."""
import pytest
import torch

from conv3d_codegen import backward
from conv3d_codegen.build import Target
from conv3d_codegen.dispatch import Dispatcher
from conv3d_codegen.kernel import launch_args
from conv3d_codegen.measure import random_inputs, relative_error, tolerance
from conv3d_codegen.render_wgmma import HOPPER_ARCHES
from conv3d_codegen.render_wgrad_wgmma import WgradWgmmaTiles, render_wgrad_wgmma, wgrad_wgmma_candidates
from conv3d_codegen.spec import ConvSpec
from conv3d_codegen.workloads import WORKLOADS

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or Target.for_device().arch not in HOPPER_ARCHES,
    reason="the wgmma wgrad template runs on compute capability 9.0 (H100, H200) only; this GPU is another")

SEED_A = WORKLOADS["seed-a"].spec.model_copy(update={"dtype": "bfloat16"})
T = WgradWgmmaTiles


def tf32(text: str) -> ConvSpec:
    return ConvSpec.from_text(text + " --dtype float32 --precision tf32")


CASES = {  # name: (spec, input shape, tiles)
    "seed-a-2": (SEED_A, (2, 3, 64, 64, 64), T()),
    "seed-a-2-full-blocks": (SEED_A, (2, 3, 64, 64, 64), T(4, 1, 8, False)),
    "pad-w1": (ConvSpec.from_text("3x5x7 --cin 2 --cout 16 --padding 1x2x1 --dtype bfloat16"), (2, 2, 6, 20, 48), T()),
    "pad-w1-ring2": (ConvSpec.from_text("3x5x7 --cin 2 --cout 16 --padding 1x2x1 --dtype bfloat16"), (2, 2, 6, 20, 48),
                     T(4, 2, 4, True)),
    "3x3x3-ci4": (ConvSpec.from_text("3x3x3 --cin 4 --cout 64 --padding 1x1x1 --dtype bfloat16"), (2, 4, 5, 16, 32),
                  T(6, 1, 8, True)),
    "odd-starts-float16": (ConvSpec.from_text("2x3x8 --cin 2 --cout 24 --dtype float16 --no-bias"), (3, 2, 5, 10, 64),
                           T(4, 1, 8, False)),
    "kh7": (ConvSpec.from_text("3x7x7 --cin 2 --cout 32 --padding 1x0x0 --dtype bfloat16"), (2, 2, 5, 14, 64), T()),
    "seed-a-2-tf32": (tf32("3x5x7 --cin 3 --cout 64"), (2, 3, 64, 64, 64), T(4, 3, 8, True)),
    "seed-a-2-tf32-full": (tf32("3x5x7 --cin 3 --cout 64"), (2, 3, 64, 64, 64), T(4, 1, 8, False)),
    "pad-w1-tf32": (tf32("3x5x7 --cin 2 --cout 16 --padding 1x2x1"), (2, 2, 6, 20, 48), T(4, 1, 8, True)),
    "odd-starts-tf32": (tf32("2x3x8 --cin 2 --cout 24 --no-bias"), (3, 2, 5, 10, 64), T(4, 1, 8, False)),
    "kh7-tf32": (tf32("3x7x7 --cin 2 --cout 32 --padding 1x0x0"), (2, 2, 5, 14, 64), T(4, 1, 8, True)),
}


@pytest.fixture(scope="module")
def kernels(dispatcher):
    names = list(CASES)
    sources = [render_wgrad_wgmma(spec, tiles, size=shape[2:]) for spec, shape, tiles in CASES.values()]
    built = dispatcher.loader.load_many(sources, Target.for_device())
    return dict(zip(names, built))


_references: dict = {}


def inputs_and_reference(name: str):
    if name not in _references:
        spec, shape, _ = CASES[name]
        torch.manual_seed(len(_references) + 21)
        x, weight, _ = random_inputs(spec, shape)
        grad_out = torch.randn((shape[0], spec.out_channels, *spec.output_size(*shape[2:])), dtype=x.dtype,
                               device=x.device)
        _, want_w, want_b = backward.torch_grads(spec, grad_out.double(), x.double(), weight.double(),
                                                 (False, True, True))
        _references[name] = (x, grad_out, want_w, want_b)
    return _references[name]


def run(kernel, spec: ConvSpec, x, grad_out, splits: int, need_bias: bool = True):
    """grad_w, grad_b from the kernel, into NaN-poisoned outputs and workspace."""
    workspace = torch.full((splits * (spec.out_channels * spec.in_channels * spec.kernel_volume
                                      + (spec.out_channels if spec.bias else 0)),), float("nan"), device=x.device)
    grad_w = torch.full(spec.weight_shape, float("nan"), dtype=x.dtype, device=x.device)
    grad_b = torch.full((spec.out_channels,), float("nan"), dtype=x.dtype, device=x.device) \
        if spec.bias and need_bias else None
    kernel(x, grad_out, grad_b, grad_w, launch_args(spec, x.shape) | {"splits": splits, "workspace": workspace.data_ptr()})
    torch.cuda.synchronize()
    return grad_w, grad_b


@pytest.mark.parametrize("splits", [1, 7, "sms"])
@pytest.mark.parametrize("name", list(CASES))
def test_matches_torch(kernels, name, splits):
    kernel = kernels[name]
    if isinstance(kernel, Exception):
        raise kernel
    spec, shape, tiles = CASES[name]
    x, grad_out, want_w, want_b = inputs_and_reference(name)
    if splits == "sms":
        splits = torch.cuda.get_device_properties(0).multi_processor_count
    od, oh, _ = spec.output_size(*shape[2:])
    splits = max(splits, tiles.min_splits(spec, shape[0] * od * oh))  # tf32: at most TF32_MAX_ROWS rows a block
    grad_w, grad_b = run(kernel, spec, x, grad_out, splits)
    err = relative_error(grad_w, want_w)
    assert err <= tolerance(spec), f"grad of the weight: relative error {err:.2e} over {tolerance(spec):.0e} (NaN: unwritten)"
    if spec.bias:
        err = relative_error(grad_b, want_b)
        assert err <= tolerance(spec), f"grad of the bias: relative error {err:.2e} over {tolerance(spec):.0e}"


def test_tf32_refuses_fewer_splits_than_it_needs(kernels):
    """seed-a's 2 samples are 7,440 grad_out rows: one block would sum them all (1.45e-3 off, the bar 1e-3), so the
    launcher refuses fewer than 8 splits (at most TF32_MAX_ROWS = 1,024 rows a block)."""
    spec, shape, tiles = CASES["seed-a-2-tf32"]
    x, grad_out, _, _ = inputs_and_reference("seed-a-2-tf32")
    assert tiles.min_splits(spec, 2 * 62 * 60) == 8
    with pytest.raises(RuntimeError, match="invalid argument"):
        run(kernels["seed-a-2-tf32"], spec, x, grad_out, 7)


def test_the_result_is_the_same_on_every_run(kernels):
    x, grad_out, _, _ = inputs_and_reference("pad-w1")
    spec = CASES["pad-w1"][0]
    first = run(kernels["pad-w1"], spec, x, grad_out, 7)
    for _ in range(3):
        again = run(kernels["pad-w1"], spec, x, grad_out, 7)
        assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


def test_an_empty_batch_gives_zeros(kernels):
    spec, shape, _ = CASES["pad-w1"]
    x, _, _ = random_inputs(spec, (0, *shape[1:]))
    grad_out = torch.empty((0, spec.out_channels, *spec.output_size(*shape[2:])), dtype=x.dtype, device="cuda")
    grad_w, grad_b = run(kernels["pad-w1"], spec, x, grad_out, 1)
    assert torch.count_nonzero(grad_w) == 0 and torch.count_nonzero(grad_b) == 0


def test_the_tuner_times_it_and_weight_grad_runs_the_winner(dispatcher):
    """seed-a's shape on 2 samples, autotuned: the record times the wgmma tiles beside the others, and whatever wins,
    the gradient matches float64 torch."""
    spec, shape = SEED_A, (2, 3, 64, 64, 64)
    x, weight, _ = random_inputs(spec, shape)
    grad_out = torch.randn((2, 64, *spec.output_size(*shape[2:])), dtype=x.dtype, device="cuda")
    _, want_w, want_b = backward.torch_grads(spec, grad_out.double(), x.double(), weight.double(), (False, True, True))
    tuned = Dispatcher(dispatcher.cache, autotune=True)  # its own plans: nothing decided before in this session
    grad_w, grad_b = backward.weight_grad(tuned, spec, grad_out, x)
    assert relative_error(grad_w, want_w) <= tolerance(spec) and relative_error(grad_b, want_b) <= tolerance(spec)
    record = dispatcher.cache.read_record(*backward._record_id(spec, x, Target.for_device()))
    timed = [k for k in record["timings_ms"] if k.startswith("wgmma stages=")]
    print(f"\nseed-a wgrad on 2 samples, tuned: winner {record['tiles']} ({record.get('template')}); {record['timings_ms']}")
    assert sorted(timed) == sorted(str(t) for t in wgrad_wgmma_candidates(spec)), record
