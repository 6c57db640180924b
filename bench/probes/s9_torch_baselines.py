"""torch's seed rows with cudnn.benchmark off and on, L2 flushed and not, forward and forward
plus backward (session 9's check of the baselines every "x torch" figure rests on).

    PYTHONPATH=. python3 bench/probes/s9_torch_baselines.py OUT_DIR

Prints a line per row and writes OUT_DIR/s9_torch_baselines.json."""
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, "bench")
from bench_forward import workload  # noqa: E402
from conv3d_codegen.measure import median_ms, random_inputs  # noqa: E402

out = Path(sys.argv[1])
res = {}
for name in ("seed-a", "seed-b"):
    for dtype in ("float32", "tf32", "bfloat16"):
        w = workload(name, dtype); spec = w.spec; conv = spec.functional_args()
        torch.backends.cudnn.allow_tf32 = dtype == "tf32"
        x, wt, b = random_inputs(spec, w.input_shape)
        for bench in (False, True):
            torch.backends.cudnn.benchmark = bench
            f = lambda: F.conv3d(x, wt, b, **conv)
            fwd = median_ms(f, warmup=5, reps=20)
            fwd_nf = median_ms(f, warmup=2, reps=20, flush_l2=False)
            xg, wg, bg = x.clone().requires_grad_(), wt.clone().requires_grad_(), b.clone().requires_grad_()
            y0 = F.conv3d(xg, wg, bg, **conv); gy = torch.randn_like(y0); del y0
            def step():
                y = F.conv3d(xg, wg, bg, **conv)
                y.backward(gy)
            reps = 6 if (dtype == "float32" and not bench) else 10
            fb = median_ms(step, warmup=3, reps=reps)
            key = f"{name} {dtype} benchmark={bench}"
            res[key] = dict(fwd=fwd, fwd_no_flush=fwd_nf, fwd_bwd=fb)
            print(key, f"fwd {fwd:.3f} ms (no flush {fwd_nf:.3f}), fwd+bwd {fb:.2f} ms", flush=True)
            del xg, wg, bg, gy
            torch.cuda.empty_cache()
torch.backends.cudnn.benchmark = False
torch.backends.cudnn.allow_tf32 = True

(out / "s9_torch_baselines.json").write_text(json.dumps(res, indent=1))
