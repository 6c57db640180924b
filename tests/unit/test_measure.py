import torch

from conv3d_codegen.measure import relative_error


def test_relative_error_never_passes_nan_and_handles_a_zero_reference():
    ref = torch.randn(100, dtype=torch.float64)
    assert relative_error(ref.float(), ref) < 1e-7
    poisoned = ref.clone()
    poisoned[3] = float("nan")
    assert not relative_error(poisoned, ref) <= 1.0
    zeros = torch.zeros(10, dtype=torch.float64)
    assert relative_error(zeros.float(), zeros) == 0.0
    assert relative_error(torch.full((10,), 0.5), zeros) > 1.0
    assert not relative_error(torch.full((10,), float("nan")), zeros) <= 1.0
