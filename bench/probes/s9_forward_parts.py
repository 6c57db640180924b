"""Session 9 probe 2: the seed-b bf16 pick's time without its K loop and stores, split further
(no epilogue staging, no barriers); the kernels torch.compile's seed-b bf16 forward runs.

    PYTHONPATH=. python3 bench/probes/s9_forward_parts.py OUT_DIR

A diagnostic: each variant guards a part with a flag in global memory that is always 0 and the
compiler cannot see, so the variants' outputs are wrong and are not checked."""
import json, sys
from pathlib import Path
import torch, torch.nn.functional as F
sys.path.insert(0, "bench")
from bench_forward import workload
from conv3d_codegen.measure import median_ms, random_inputs
from conv3d_codegen.render_mma import render_mma, MmaTiles
from conv3d_codegen.kernel import KernelLoader, launch_args
from conv3d_codegen.cache import KernelCache
from conv3d_codegen.build import Target
import tempfile
out = Path(sys.argv[1]); res = {}
w = workload("seed-b", "bfloat16"); spec = w.spec
src = render_mma(spec, MmaTiles(256, 64, 8, 1, 2))
never = "if (g_never_flag) "
marker = "extern \"C\" __global__"
base = src.body.replace(marker, "__device__ int g_never_flag = 0;\n" + marker, 1)
nok = base.replace("if (in_order(n)) {  // K step", "if (g_never_flag) {  // K step")
neither = nok.replace("__stcs(", never + "__stcs(")
nostsm = neither.replace("stmatrix_x4_trans(at", never + "stmatrix_x4_trans(at").replace("stmatrix_x2_trans(at", never + "stmatrix_x2_trans(at")
assert nostsm.count("\n      __syncthreads();") == 2
nobar = nostsm.replace("\n      __syncthreads();", "\n      ;")
# no gather of the first K step either: its row pointers unused
nogather = nobar.replace("const elem_t* p = row[mt][rr];", "const elem_t* p = g_never_flag ? row[mt][rr] : x;", 1)
bodies = dict(full=src.body, nok=nok, neither=neither, nostsm=nostsm, nobar=nobar, nogather=nogather)
sources = [src.edited(k, b) for k, b in bodies.items()]
kernels = KernelLoader(KernelCache(Path(tempfile.mkdtemp()))).load_many(sources, Target.for_device())
x, wt, b = random_inputs(spec, w.input_shape)
y = torch.empty((w.input_shape[0], 64, *spec.output_size(*w.input_shape[2:])), dtype=x.dtype, device="cuda")
args = launch_args(spec, w.input_shape)
for (tag, _), k in zip(bodies.items(), kernels):
    if isinstance(k, Exception):
        print("BUILD FAILED", tag, str(k)[:2000], flush=True); continue
    ms = median_ms(lambda: k(x, wt, b, y, args), reps=50)
    res[tag] = ms
    print(f"{tag:10s} {ms:.4f} ms", flush=True)
# torch.compile's seed-b bf16: which kernels, how long each
conv = spec.functional_args()
fn = torch.compile(lambda x, w, b: F.conv3d(x, w, b, **conv), mode="max-autotune-no-cudagraphs", dynamic=False)
for _ in range(3): fn(x, wt, b)
torch.cuda.synchronize()
with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
    for _ in range(5): fn(x, wt, b)
    torch.cuda.synchronize()
table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=12)
print(table, flush=True)
res["compiled_profile"] = table
(out / "probe_s9b.json").write_text(json.dumps(res, indent=1))
