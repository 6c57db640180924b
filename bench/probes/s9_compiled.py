"""torch.compile max-autotune of the seed bf16 forwards, timed like every row (median_ms)."""
import sys, json, time
from pathlib import Path
import torch, torch.nn.functional as F
sys.path.insert(0, "bench")
from bench_forward import workload
from conv3d_codegen.measure import median_ms, random_inputs, relative_error
out = Path(sys.argv[1]); res = {}
for name in sys.argv[2:]:
    w = workload(name, "bfloat16"); spec = w.spec; conv = spec.functional_args()
    x, wt, b = random_inputs(spec, w.input_shape)
    fn = torch.compile(lambda x, wt, b: F.conv3d(x, wt, b, **conv), mode="max-autotune-no-cudagraphs", dynamic=False)
    t0 = time.time(); y = fn(x, wt, b); torch.cuda.synchronize(); compile_s = time.time() - t0
    ref = F.conv3d(x[:1].double(), wt.double(), b.double(), **conv)
    err = relative_error(y[:1], ref)
    ms = median_ms(lambda: fn(x, wt, b), reps=30)
    eager = median_ms(lambda: F.conv3d(x, wt, b, **conv), reps=30)
    res[name] = dict(compiled_ms=ms, eager_ms=eager, err=err, compile_s=compile_s)
    print(name, f"compiled {ms:.3f} ms, eager {eager:.3f}, err {err:.1e}, compile {compile_s:.0f} s", flush=True)
    (out / "triton_s9.json").write_text(json.dumps(res, indent=1))
