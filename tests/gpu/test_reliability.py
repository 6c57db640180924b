"""Reliability on the GPU with real builds: many processes, killed and damaged builds,
unusable caches, tensors past 2^31 elements, and bad input."""
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conv3d_codegen import strict
from conv3d_codegen.cache import KernelCache
from conv3d_codegen.dispatch import Dispatcher
from conv3d_codegen.measure import random_inputs, relative_error, tolerance
from conv3d_codegen.ops import run
from conv3d_codegen.spec import ConvSpec

REPO = Path(__file__).resolve().parents[2]

ONE_CALL = """
import sys, torch, torch.nn.functional as F
from conv3d_codegen.cache import KernelCache
from conv3d_codegen.dispatch import Dispatcher
from conv3d_codegen.measure import random_inputs, relative_error
from conv3d_codegen.ops import run
from conv3d_codegen.spec import ConvSpec
dispatcher = Dispatcher(KernelCache(sys.argv[1]))
spec = ConvSpec.from_text(sys.argv[2])
x, w, b = random_inputs(spec, (2, spec.in_channels, 9, 10, 11))
out = run(dispatcher, x, w, b, **spec.functional_args())
ref = F.conv3d(x.double(), w.double(), b.double(), **spec.functional_args())
print(dispatcher.plan(x, w, b, spec.stride, spec.padding, spec.dilation, spec.groups).route,
      dispatcher.cache.stats.builds, relative_error(out, ref), flush=True)
"""


def one_call(root: Path, text: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", ONE_CALL, str(root), text], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def test_eight_processes_build_a_new_spec_once_and_all_compute_it(tmp_path):
    text = "3x3x5 --cin 5 --cout 6 --padding 1x0x2 --dilation 1x2x1"
    procs = [one_call(tmp_path / "cache", text) for _ in range(8)]
    results = [p.communicate(timeout=240) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in results]
    rows = [out.split() for out, _ in results]
    assert [r[0] for r in rows] == ["generated"] * 8
    assert sum(int(r[1]) for r in rows) == 1  # one process built; seven waited and loaded
    assert all(float(r[2]) <= 1e-5 for r in rows), rows


def test_a_build_killed_by_sigkill_is_rebuilt_by_the_next_call(tmp_path):
    root, text = tmp_path / "cache", "5x3x3 --cin 3 --cout 5 --stride 2 --padding 1"
    victim = one_call(root, text)
    deadline = time.monotonic() + 120
    while not list((root / ".tmp").glob("conv3d_fwd_*/build/build.ninja")):  # nvcc is running
        assert time.monotonic() < deadline and victim.poll() is None, victim.stderr.read() if victim.poll() else ""
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    survivor = one_call(root, text)
    out, err = survivor.communicate(timeout=120)  # a lock left behind would hang here
    assert survivor.returncode == 0, err
    route, builds, error = out.split()
    assert (route, builds) == ("generated", "1") and float(error) <= 1e-5


def test_a_truncated_library_is_detected_and_rebuilt(tmp_path, caplog):
    """Another process built the library; it is then damaged on disk. (Not one this process
    has mapped: the cache itself never writes a library in place, rebuilds rename a new
    folder over the old one, so mapped pages stay valid.)"""
    text = "1x3x3 --cin 4 --cout 4 --padding same"
    first = one_call(tmp_path, text)
    assert first.wait(timeout=120) == 0, first.stderr.read()
    library = next(tmp_path.glob("conv3d_fwd_k1x3x3_*/build/*.so"))
    library.write_bytes(library.read_bytes()[: library.stat().st_size // 2])
    spec = ConvSpec.from_text(text)
    second = Dispatcher(KernelCache(tmp_path))
    x, w, b = random_inputs(spec, (2, 4, 7, 8, 9))
    with caplog.at_level(logging.WARNING, logger="conv3d_codegen"), strict():
        out = run(second, x, w, b, padding="same")
    assert "missing or altered since it was built" in caplog.text and second.cache.stats.builds == 1
    assert relative_error(out, F.conv3d(x.double(), w.double(), b.double(), padding="same")) <= 1e-5


def test_an_unusable_cache_never_breaks_the_forward_pass(tmp_path, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    spec = ConvSpec.from_text("3x3x3 --cin 2 --cout 3")
    x, w, b = random_inputs(spec, (1, 2, 6, 7, 8))
    ref = F.conv3d(x.double(), w.double(), b.double())
    to_temp = Dispatcher(KernelCache(blocker / "cache"))
    to_temp.loader.fallback = KernelCache(tmp_path / "private")
    with caplog.at_level(logging.WARNING, logger="conv3d_codegen"):
        out = run(to_temp, x, w, b)
    assert "cannot be used" in caplog.text and to_temp.cache.root == tmp_path / "private"
    assert to_temp.plan(x, w, b, 1, 0, 1, 1).route == "generated" and relative_error(out, ref) <= 1e-5
    nowhere = Dispatcher(KernelCache(blocker / "one"))
    nowhere.loader.fallback = KernelCache(blocker / "two")
    out = run(nowhere, x, w, b)  # torch, with the reason logged
    assert nowhere.plan(x, w, b, 1, 0, 1, 1).reason.startswith("no usable kernel cache")
    assert relative_error(out, ref) <= 1e-5


@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_properties(0).total_memory < 40 * 2**30,
                    reason="needs 40 GB of GPU memory for tensors past 2^31 elements")
def test_tensors_past_two_to_the_31_elements(dispatcher):
    spec = ConvSpec(in_channels=4, out_channels=8, kernel_size=3, dtype="float16")
    x, weight, bias = random_inputs(spec, (1, 4, 512, 1024, 1024))  # 2^31 input elements
    assert x.numel() >= 2**31
    with strict():
        plan = dispatcher.plan(x, weight, bias, 1, 0, 1, 1)
        out = run(dispatcher, x, weight, bias)
    assert plan.kernel.name.split("_")[-2] == "i64" and out.numel() > 2**31  # 64-bit offsets
    for depth in (slice(0, 3), slice(-3, None)):  # the first and the last output planes
        lo = depth.start if depth.start >= 0 else x.shape[2] + depth.start - 2
        ref = F.conv3d(x[:, :, lo:lo + 5].double(), weight.double(), bias.double())
        assert relative_error(out[:, :, depth], ref) <= tolerance(spec)
    del out, x
    torch.cuda.empty_cache()


BAD = {
    "rank 4 weight": lambda: (torch.randn(1, 3, 8, 8, 8), torch.randn(4, 3, 3, 3), None, {}),
    "rank 3 input": lambda: (torch.randn(3, 8, 8), torch.randn(4, 3, 3, 3, 3), None, {}),
    "channels differ": lambda: (torch.randn(1, 5, 8, 8, 8), torch.randn(4, 3, 3, 3, 3), None, {}),
    "groups do not divide": lambda: (torch.randn(1, 6, 8, 8, 8), torch.randn(4, 3, 3, 3, 3), None, {"groups": 4}),
    "dtypes differ": lambda: (torch.randn(1, 3, 8, 8, 8).half(), torch.randn(4, 3, 3, 3, 3), None, {}),
    "bias dtype differs": lambda: (torch.randn(1, 3, 8, 8, 8), torch.randn(4, 3, 3, 3, 3),
                                   torch.randn(4).double(), {}),
    "bias length": lambda: (torch.randn(1, 3, 8, 8, 8), torch.randn(4, 3, 3, 3, 3), torch.randn(5), {}),
    "empty batch": lambda: (torch.randn(0, 3, 8, 8, 8), torch.randn(4, 3, 3, 3, 3), None, {}),
    "empty depth": lambda: (torch.randn(1, 3, 0, 8, 8), torch.randn(4, 3, 3, 3, 3), None, {}),
    "kernel past the padded input": lambda: (torch.randn(1, 3, 4, 8, 8), torch.randn(4, 3, 7, 3, 3), None,
                                             {"padding": 1}),
    "negative padding": lambda: (torch.randn(1, 3, 8, 8, 8), torch.randn(4, 3, 3, 3, 3), None, {"padding": -1}),
    "same with stride": lambda: (torch.randn(1, 3, 8, 8, 8), torch.randn(4, 3, 3, 3, 3), None,
                                 {"padding": "same", "stride": 2}),
    "float64": lambda: (torch.randn(1, 3, 8, 8, 8).double(), torch.randn(4, 3, 3, 3, 3).double(), None, {}),
}


def outcome(fn):
    try:
        return "ok", fn()
    except Exception as err:  # the comparison is the point: same type and words as torch
        return type(err).__name__, str(err).split("\n")[0]


@pytest.mark.parametrize("name", list(BAD))
@pytest.mark.parametrize("where", ["cuda", "weight on cpu", "cpu"])
def test_bad_input_behaves_as_torch(dispatcher, name, where):
    x, weight, bias, kwargs = BAD[name]()
    x = x.cuda() if where != "cpu" else x
    weight = weight.cuda() if where == "cuda" else weight
    bias = bias.cuda() if bias is not None and where == "cuda" else bias
    theirs = outcome(lambda: F.conv3d(x, weight, bias, **kwargs))
    ours = outcome(lambda: run(dispatcher, x, weight, bias, **kwargs))
    torch.cuda.synchronize()  # an illegal access would surface here
    assert ours[0] == theirs[0]
    if theirs[0] == "ok":
        assert ours[1].shape == theirs[1].shape and torch.allclose(ours[1], theirs[1], atol=1e-5, rtol=1e-4)
    else:
        assert ours[1] == theirs[1]
