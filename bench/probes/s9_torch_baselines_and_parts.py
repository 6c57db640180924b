"""Session 9 probe: (1) torch's seed rows with cudnn.benchmark off and on, flushed and not;
(2) the seed-b bf16 forward pick with its stores or its K loop switched off (diagnostic)."""
import dataclasses, json, sys, time, statistics
from pathlib import Path
import torch, torch.nn.functional as F
sys.path.insert(0, "bench")
from bench_forward import workload
from conv3d_codegen.measure import median_ms, random_inputs, relative_error
from conv3d_codegen.render_mma import render_mma, MmaTiles
from conv3d_codegen.kernel import KernelLoader, launch_args
from conv3d_codegen.cache import KernelCache
from conv3d_codegen.build import Target
import tempfile

out = Path(sys.argv[1]); part = sys.argv[2]
res = {}
def log(*a):
    print(*a, flush=True)

if part in ("torch", "all"):
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
                log(key, f"fwd {fwd:.3f} ms (no flush {fwd_nf:.3f}), fwd+bwd {fb:.2f} ms")
                del xg, wg, bg, gy
                torch.cuda.empty_cache()
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.allow_tf32 = True

if part in ("variants", "all"):
    w = workload("seed-b", "bfloat16"); spec = w.spec
    src = render_mma(spec, MmaTiles(256, 64, 8, 1, 2))
    flag = "__device__ int g_never_flag = 0;\n"
    def variant(tag, body):
        body = body.replace(src.name, src.name + "_" + tag)
        return dataclasses.replace(src, name=src.name + "_" + tag, body=body)
    marker = "extern \"C\" __global__"
    assert marker in src.body and "if (in_order(n)) {  // K step" in src.body and "__stcs(" in src.body
    nostore = src.body.replace(marker, flag + marker, 1).replace("__stcs(", "if (g_never_flag) __stcs(")
    nok = src.body.replace(marker, flag + marker, 1).replace("if (in_order(n)) {  // K step", "if (g_never_flag) {  // K step")
    both = nok.replace("__stcs(", "if (g_never_flag) __stcs(")
    sources = [variant("full", src.body), variant("nostore", nostore), variant("nok", nok), variant("neither", both)]
    loader = KernelLoader(KernelCache(Path(tempfile.mkdtemp())))
    kernels = loader.load_many(sources, Target.for_device())
    x, wt, b = random_inputs(spec, w.input_shape)
    y = torch.empty((w.input_shape[0], 64, *spec.output_size(*w.input_shape[2:])), dtype=x.dtype, device="cuda")
    args = launch_args(spec, w.input_shape)
    ref = F.conv3d(x[:1].double(), wt.double(), b.double(), **spec.functional_args())
    for s, k in zip(sources, kernels):
        if isinstance(k, Exception):
            log("BUILD FAILED", s.name, k); continue
        y.fill_(float("nan"))
        k(x, wt, b, y, args); torch.cuda.synchronize()
        err = relative_error(y[:1], ref)
        ms = median_ms(lambda: k(x, wt, b, y, args), reps=50)
        res[s.name] = dict(ms=ms, err=err)
        log(s.name.rsplit("_", 1)[1], f"{ms:.4f} ms rel err {err:.2e}")

(out / f"probe_s9_{part}.json").write_text(json.dumps(res, indent=1))
