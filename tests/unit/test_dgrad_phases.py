"""The phase split of the gradient of the input, on the CPU: each phase convolution run by
torch's float64 F.conv3d, the assembled gradient against torch.autograd's in float64; every
tap used once, every input position written once; the strided workload's phases; and the
kernels of those phases compiled by nvcc (no GPU)."""
import itertools
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from conv3d_codegen import strict
from conv3d_codegen.backward import flipped_weight, input_grad
from conv3d_codegen.cache import KernelCache
from conv3d_codegen.dgrad_phases import assemble, phase_axes, phases, run_phases
from conv3d_codegen.dispatch import Dispatcher, FallbackError, Plan, source_for
from conv3d_codegen.render_grad import dgrad_spec
from conv3d_codegen.spec import ConvSpec
from conv3d_codegen.workloads import WORKLOADS

from .cubins import SM80, SM90, compile_all

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")


def _sweep() -> list[tuple[ConvSpec, tuple[int, int, int]]]:
    """Stride 2 and 3, kernels 1..5, padding 0..3, dilation 1..2, each dimension different,
    on uneven sizes; the ones whose output would be empty are left out."""
    cases = []
    for i, (s, k, p, d) in enumerate(itertools.product((2, 3), range(1, 6), range(4), (1, 2))):
        spec = ConvSpec(in_channels=2, out_channels=3, kernel_size=(k, k % 3 + 1, 6 - k), stride=(s, 5 - s, s),
                        padding=(p, (p + 1) % 4, 3 - p), dilation=(d, 3 - d, d), bias=False)
        size = ((9, 10, 11), (7, 8, 13), (12, 5, 6))[i % 3]
        if min(spec.output_size(*size)) >= 1:
            cases.append((spec, size))
    return cases


NAMED = [
    ("3x3x3 --cin 4 --cout 8 --stride 2 --padding valid", (9, 10, 11)),
    ("1x1x1 --cin 4 --cout 8 --stride 2", (9, 10, 11)),                         # half the phases zero
    ("1x1x1 --cin 4 --cout 8 --stride 3 --padding 3", (7, 8, 9)),               # padding past reach: crops
    ("1x3x3 --cin 2 --cout 4 --stride 2 --padding 0x3x2", (5, 9, 6)),
    ("3x3x3 --cin 4 --cout 8 --stride 2 --padding 1 --groups 2", (8, 9, 10)),
    ("3x3x3 --cin 4 --cout 4 --stride 2 --padding 1 --groups 4", (8, 9, 10)),   # depthwise
    ("5x3x3 --cin 3 --cout 5 --stride 2 --padding 1", (10, 12, 13)),            # the 'strided' shape, small
    ("3x5x7 --cin 2 --cout 3 --stride 1x2x3 --padding 2x1x0 --dilation 2", (9, 11, 20)),
    ("4x4x4 --cin 2 --cout 3 --stride 2 --padding 1 --dilation 3", (12, 13, 14)),  # gcd(stride, dil) = 1
    ("3x3x3 --cin 2 --cout 3 --stride 4 --dilation 2", (11, 9, 10)),            # gcd(stride, dil) = 2
    ("3x3x3 --cin 2 --cout 3 --stride 2 --padding 1", (1, 2, 3)),               # sizes below the stride
    ("2x2x2 --cin 2 --cout 3 --padding same", (5, 6, 7)),                       # stride 1, uneven padding
    ("3x1x3 --cin 2 --cout 3 --padding 3x0x4", (5, 6, 7)),                      # stride 1, past the reach
]
CASES = _sweep() + [(ConvSpec.from_text(text), size) for text, size in NAMED]


def convolve(phase, gy, w, out):
    """A phase convolution: torch's, in the dtype of its inputs (float64 here)."""
    result = F.conv3d(gy, w, None, **phase.spec.functional_args())
    return result if out is None else out.copy_(result)


def reference(spec: ConvSpec, size, n: int = 2):
    x = torch.randn(n, spec.in_channels, *size, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(spec.weight_shape, dtype=torch.float64)
    out = F.conv3d(x, weight, None, **spec.functional_args())
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    return grad_out, weight, x.grad


@pytest.mark.parametrize("spec,size", CASES, ids=[f"{s.tag}-{'x'.join(map(str, z))}" for s, z in CASES])
def test_phase_split_is_the_gradient_of_the_input(spec, size):
    grad_out, weight, want = reference(spec, size)
    found = phases(spec, size)
    got = assemble(found, grad_out, flipped_weight(spec, weight), tuple(want.shape), convolve)
    assert got.shape == want.shape and got.is_contiguous()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("spec,size", CASES, ids=[f"{s.tag}-{'x'.join(map(str, z))}" for s, z in CASES])
def test_every_tap_is_used_once_and_every_position_written_once(spec, size):
    found = phases(spec, size)
    covered = torch.zeros(1, 1, *size, dtype=torch.int64)
    for phase in found:
        covered[phase.slices] += 1
        assert tuple(covered[phase.slices].shape[2:]) == phase.size
        if phase.spec is not None:
            assert phase.spec.stride == (1, 1, 1) and not phase.spec.bias
            assert phase.spec.kernel_size == tuple(len(t) for t in phase.taps)
    assert (covered == 1).all()
    taps = Counter(t for phase in found for t in itertools.product(*phase.taps))
    if all(z >= s for z, s in zip(size, spec.stride)):  # every phase exists: the taps are partitioned
        assert taps == Counter(itertools.product(*(range(k) for k in spec.kernel_size)))
    else:  # phases past the input's end are left out, with their taps
        assert max(taps.values(), default=1) == 1


@pytest.mark.parametrize("spec,size", CASES, ids=[f"{s.tag}-{'x'.join(map(str, z))}" for s, z in CASES])
def test_the_phase_weights_are_the_phase_taps_of_the_flipped_weight(spec, size):
    weight = torch.randn(spec.weight_shape, dtype=torch.float64)
    flipped = flipped_weight(spec, weight)
    for phase in phases(spec, size):
        if phase.spec is None:
            continue
        w = phase.weight(flipped)
        assert w.is_contiguous() and tuple(w.shape) == (spec.in_channels, spec.out_per_group,
                                                        *phase.spec.kernel_size)
        want = flipped[:, :, list(phase.taps[0])][:, :, :, list(phase.taps[1])][..., list(phase.taps[2])]
        assert torch.equal(w, want)


def test_the_phases_of_the_strided_workload():
    """5x3x3, stride 2, padding 1 on 32x64x64: 8 phases of 2 or 3 taps along d and 1 or 2
    along h and w (45 taps in all); the uneven ones compute one extra output in front."""
    work = WORKLOADS["strided"]
    found = phases(work.spec, work.input_shape[2:])
    assert len(found) == 8 and all(p.spec is not None and p.size == (16, 32, 32) for p in found)
    by_offset = {p.offset: p for p in found}
    last = by_offset[(1, 1, 1)]
    assert last.taps == ((0, 2, 4), (0, 2), (0, 2))
    assert last.spec.kernel_size == (3, 2, 2) and last.spec.padding == (2, 1, 1)
    assert last.trim == ((1, 0), (1, 0), (1, 0)) and last.crop == ((0, 0),) * 3
    first = by_offset[(0, 0, 0)]
    assert first.taps == ((1, 3), (1,), (1,)) and first.spec.padding == (1, 0, 0) and first.trim == ((0, 0),) * 3
    assert sum(p.spec.kernel_volume for p in found) == work.spec.kernel_volume
    assert {p.spec.in_channels for p in found} == {64} and {p.spec.out_channels for p in found} == {32}


def test_an_axis_says_what_it_crops_trims_and_reads():
    # kernel 1, stride 2, padding 3: phase 1 reads grad_out[2:6] of 8 (crops 2 and 2)
    zero, one = phase_axes(size=9, out_size=8, kernel=1, stride=2, pad=3, dilation=1)
    assert zero.taps == () and not zero.reads
    assert one.taps == (0,) and one.crop == (2, 2) and one.padding == 0 and one.size == 4 and one.reads
    # dilation 2 at stride 2: the odd phases get no tap, the even ones every tap
    even, odd = phase_axes(size=10, out_size=4, kernel=3, stride=2, pad=0, dilation=2)
    assert even.taps == (0, 1, 2) and even.dilation == 1 and odd.taps == ()
    # past the input's end: no phase for r >= size
    assert [a.offset for a in phase_axes(size=2, out_size=1, kernel=3, stride=3, pad=1, dilation=1)] == [0, 1]


def test_stride_one_uses_the_phase_split_only_where_dgrad_spec_has_no_convolution():
    assert dgrad_spec(ConvSpec.from_text("3x3x3 --cin 2 --cout 3 --padding 1"))[0] is not None
    spec = ConvSpec.from_text("2x2x2 --cin 2 --cout 3 --padding same")
    assert dgrad_spec(spec)[0] is None
    (phase,) = phases(spec, (5, 6, 7))
    assert phase.spec.padding == (1, 1, 1) and phase.trim == ((0, 1),) * 3  # the odd zero was after


@pytest.mark.parametrize("spec,size", [(ConvSpec.from_text(t), z) for t, z in NAMED[:3]], ids=[t for t, _ in NAMED[:3]])
def test_run_phases_through_a_dispatcher(tmp_path, spec, size):
    """On the CPU every phase convolution is planned as torch's: the dispatcher's path, less the kernels."""
    grad_out, weight, want = reference(spec, size)
    got = run_phases(Dispatcher(KernelCache(tmp_path)), spec, phases(spec, size), grad_out, weight, tuple(want.shape))
    torch.testing.assert_close(got, want)


class _Kernel:
    """Stands in for a generated kernel: torch's convolution from the launch arguments, into `out`."""

    def __init__(self, outputs: list):
        self.outputs = outputs

    def __call__(self, x, weight, bias, out, args):
        result = F.conv3d(x, weight, None, padding=(args["pd"], args["ph"], args["pw"]),
                          dilation=(args["dd"], args["dh"], args["dw"]), groups=args["groups"])
        assert tuple(result.shape) == tuple(out.shape) == (args["n"], args["co"], args["od"], args["oh"], args["ow"])
        self.outputs.append(out)
        return out.copy_(result)


class _Dispatcher:
    def __init__(self):
        self.outputs = []

    def plan_for(self, spec, x, weight, bias):
        return Plan("generated", None, spec, _Kernel(self.outputs))


@pytest.mark.parametrize("text,size,in_place", [
    ("3x3x3 --cin 2 --cout 3 --stride 2 --padding 1", (7, 8, 9), 0),   # strided slices: temporaries
    ("2x2x2 --cin 2 --cout 3 --padding same", (5, 6, 7), 0),             # trimmed: a temporary
    ("3x3x3 --cin 2 --cout 3 --padding 3", (5, 6, 7), 1),                # one dense phase: grad_x itself
    ("1x1x1 --cin 4 --cout 4 --stride 2 --groups 2", (5, 6, 7), 0),
])
def test_the_kernel_route_writes_in_place_where_the_phase_is_dense(text, size, in_place):
    spec = ConvSpec.from_text(text)
    grad_out, weight, want = reference(spec, size)
    dispatcher = _Dispatcher()
    got = run_phases(dispatcher, spec, phases(spec, size), grad_out, weight, tuple(want.shape))
    torch.testing.assert_close(got, want)
    assert sum(out.data_ptr() == got.data_ptr() for out in dispatcher.outputs) == in_place


def test_on_the_cpu_torch_computes_it_and_strict_mode_refuses(tmp_path):
    spec = ConvSpec.from_text("3x3x3 --cin 2 --cout 3 --stride 2 --padding 1")
    grad_out, weight, want = reference(spec, (5, 6, 7))
    dispatcher = Dispatcher(KernelCache(tmp_path))
    got = input_grad(dispatcher, spec, grad_out, weight, tuple(want.shape))
    torch.testing.assert_close(got, want)
    with strict(), pytest.raises(FallbackError, match="input is on cpu"):
        input_grad(dispatcher, spec, grad_out, weight, tuple(want.shape))


@pytest.mark.slow
def test_the_strided_workloads_phase_kernels_compile_without_spills():
    """What the dispatcher builds for the strided workload's phases without autotuning: each
    in float32 for sm_90, the largest also in bfloat16 for sm_80."""
    work = WORKLOADS["strided"]
    n, _, d, h, w = work.input_shape
    gy_shape = (n, work.spec.out_channels, *work.spec.output_size(d, h, w))
    found = phases(work.spec, (d, h, w))
    largest = max(found, key=lambda p: p.spec.kernel_volume).spec.model_copy(update={"dtype": "bfloat16"})
    chosen = [(source_for(p.spec, gy_shape), SM90) for p in found] + [(source_for(largest, gy_shape), SM80)]
    assert all(reason is None for (_, reason), _ in chosen)  # the direct template, not the generic one
    for source, target, report in compile_all([(source, target) for (source, _), target in chosen]):
        assert report.registers > 0, (source.name, target.arch)
        assert report.spill_store_bytes == report.spill_load_bytes == report.stack_bytes == 0, (source.name, report)
