"""Session 12 probe: where the row-product template (templates/conv3d_fwd_rows.cu.j2) loses the
15% it trails session 11's probe kernel by on seed-b bf16 (0.319-0.324 ms against 0.279-0.282).

    PYTHONPATH=. python3 bench/probes/s12_rows_parts.py OUT_DIR [--b | --c | --d]

Variants of the template's rendered source (Source.edited, built beside each other), each in the
same process as the probe's kernel (bench/probes/s11_fwd_rows.cu) on the same tensors:
  full      the template as it ships
  const     the input and output sizes fixed at seed-b's (the compiler folds them, as in the probe)
  w16e      the write-out without the divergent ends: whole 16-byte vectors a warp a channel, then
            the ends of every channel's run by one thread each
  w8        the write-out as 8-byte pieces (the probe's store width), y's alignment mod 8 bytes
  const+w16e, const+w8
  nowrite   the write-out left out (a flag in global memory that is always 0), output unchecked
  nok       the K loop left out the same way, output unchecked
With --b (round 2), which fixed size buys const's gain: only w and ow fixed (constw), the staging's
loop over 8 pieces a row with the pieces past w skipped instead of dividing by w / 8 (stage8), the
chunk's place by 32-bit divisions (div32), and their sums. With --c (round 3), the write-out unrolled
(w16u: a warp loads up to 8 channels' vectors, then stores them), with evict-first stores (cs), and
with round 2's changes or the sizes fixed. With --d (round 4), evict-first stores (__stcs) in the
shipped write-out (cs) and in w16e, and each channel's whole vectors as one bulk copy (bulk, sm_90:
cp.async.bulk from shared memory by one thread a channel; the ends as in w16e).
Checked variants are run on a NaN-poisoned output and compared with float64 torch (first two
samples; every element finite); every variant is timed like RESULTS.md's rows (median_ms: CUDA
events, median, L2 flushed). A diagnostic, not a kernel of the package. Its edits match the
template's text as of commit 0fcccc8 (before the template took sizes, bulk copies and tf32): run it
from a checkout of that commit."""
import json
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.cpp_extension import load_inline

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from try_mma import build_entries, work_of  # noqa: E402
from conv3d_codegen.build import Target  # noqa: E402
from conv3d_codegen.kernel import launch_args  # noqa: E402
from conv3d_codegen.measure import median_ms, random_inputs, relative_error  # noqa: E402
from conv3d_codegen.render_rows import RowsTiles, render_rows  # noqa: E402

HERE = Path(__file__).resolve().parent
TILES = [RowsTiles(4, 1, 3), RowsTiles(4, 2, 2), RowsTiles(6, 2, 2), RowsTiles(6, 1, 2)]
PROBE_CONFIGS = [(4, 1, 3), (4, 2, 2), (6, 2, 2)]
NEVER = "__device__ int g_never_flag = 0;\n"
MARKER = 'extern "C" __global__'

W16E = """__device__ __forceinline__ void write_out(const unsigned char* out_s, scalar_t* __restrict__ y, const Chunk& c,
                                          int od, int oh, int ow) {
  const int shift = out_shift(c, oh, ow), end = shift + (oh - c.oh0 < R ? oh - c.oh0 : R) * ow;
  const int first = (shift + VEC - 1) / VEC, last = end / VEC;  // whole vectors: [first, last)
  const long long plane = static_cast<long long>(od) * oh * ow;
  scalar_t* base = y + static_cast<long long>(c.n) * CO * plane + static_cast<long long>(c.od) * oh * ow +
                   static_cast<long long>(c.oh0) * ow - shift;
  const int lane = threadIdx.x % 32;
  for (int co = threadIdx.x / 32; co < CO; co += THREADS / 32) {
    const unsigned char* src = out_s + co * OUT_PITCH;
    scalar_t* dst = base + co * plane;
    for (int b = first + lane; b < last; b += 32)
      *reinterpret_cast<VEC_T*>(dst + VEC * b) = *reinterpret_cast<const VEC_T*>(src + 2 * VEC * b);
  }
  for (int i = threadIdx.x; i < 2 * CO; i += THREADS) {
    const int co = i / 2;
    const int from = i % 2 ? max(VEC * last, VEC * first) : shift, to = i % 2 ? end : min(VEC * first, end);
    for (int e = from; e < to; e += 2)
      *reinterpret_cast<uint32_t*>(base + co * plane + e) = *reinterpret_cast<const uint32_t*>(out_s + co * OUT_PITCH + 2 * e);
  }
}
"""


# The write-out unrolled: each warp loads GROUP channels' vectors, then stores them (ILP instead of
# one shared load's latency per channel); STORE is the 16-byte store ("plain" or __stcs, evict-first).
W16U = """__device__ __forceinline__ void write_out(const unsigned char* out_s, scalar_t* __restrict__ y, const Chunk& c,
                                          int od, int oh, int ow) {
  constexpr int WARPS = THREADS / 32, PER_WARP = CO / WARPS, GROUP = PER_WARP < 8 ? PER_WARP : 8;
  constexpr int ITERS = ((R * WMAX + 7) / 8 + 1 + 31) / 32;  // vectors a lane stores per channel, at most
  const int shift = out_shift(c, oh, ow), end = shift + (oh - c.oh0 < R ? oh - c.oh0 : R) * ow;
  const int first = (shift + 7) / 8, last = end / 8;  // whole vectors: [first, last)
  const long long plane = static_cast<long long>(od) * oh * ow;
  scalar_t* base = y + static_cast<long long>(c.n) * CO * plane + static_cast<long long>(c.od) * oh * ow +
                   static_cast<long long>(c.oh0) * ow - shift;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int it = 0; it < ITERS; ++it) {
    const int b = first + lane + 32 * it;
    if (b >= last) break;
#pragma unroll
    for (int k0 = 0; k0 < PER_WARP; k0 += GROUP) {
      uint4 v[GROUP];
#pragma unroll
      for (int k = 0; k < GROUP; ++k)
        v[k] = *reinterpret_cast<const uint4*>(out_s + (warp + (k0 + k) * WARPS) * OUT_PITCH + 16 * b);
#pragma unroll
      for (int k = 0; k < GROUP; ++k) STORE(reinterpret_cast<uint4*>(base + (warp + (k0 + k) * WARPS) * plane + 8 * b), v[k]);
    }
  }
  for (int i = threadIdx.x; i < 2 * CO; i += THREADS) {
    const int co = i / 2;
    const int from = i % 2 ? max(8 * last, 8 * first) : shift, to = i % 2 ? end : min(8 * first, end);
    for (int e = from; e < to; e += 2)
      *reinterpret_cast<uint32_t*>(base + co * plane + e) = *reinterpret_cast<const uint32_t*>(out_s + co * OUT_PITCH + 2 * e);
  }
}
"""


def with_w16u(body: str, streaming: bool = False) -> str:
    i, j = cut(body, "__device__ __forceinline__ void write_out(", "\n}\n")
    store = "__stcs" if streaming else "store16"
    helper = "__device__ __forceinline__ void store16(uint4* p, uint4 v) { *p = v; }\n"
    return body[:i] + helper + W16U.replace("STORE(", store + "(") + body[j + 1:]


# sm_90: each channel's whole vectors leave by one bulk copy (cp.async.bulk, shared to global, evict-first),
# started by one thread, carried out by the copy engine while the warps go on; the ends as in W16E.
BULK = """#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
#error "the bulk variant is sm_90 only"
#endif
__device__ __forceinline__ void bulk_store(void* dst, const void* src, unsigned bytes) {
  uint64_t policy;
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\\n" : "=l"(policy));
  asm volatile("cp.async.bulk.global.shared::cta.bulk_group.L2::cache_hint [%0], [%1], %2, %3;\\n"
               :: "l"(dst), "r"(static_cast<uint32_t>(__cvta_generic_to_shared(src))), "r"(bytes), "l"(policy) : "memory");
}
__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;\\n" ::: "memory"); }
__device__ __forceinline__ void bulk_wait_read() { asm volatile("cp.async.bulk.wait_group.read 0;\\n" ::: "memory"); }
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\\n" ::: "memory"); }
__device__ __forceinline__ void write_out(const unsigned char* out_s, scalar_t* __restrict__ y, const Chunk& c,
                                          int od, int oh, int ow) {
  const int shift = out_shift(c, oh, ow), end = shift + (oh - c.oh0 < R ? oh - c.oh0 : R) * ow;
  const int first = (shift + 7) / 8, last = end / 8;  // whole vectors: [first, last)
  const long long plane = static_cast<long long>(od) * oh * ow;
  scalar_t* base = y + static_cast<long long>(c.n) * CO * plane + static_cast<long long>(c.od) * oh * ow +
                   static_cast<long long>(c.oh0) * ow - shift;
  constexpr int WARPS = THREADS / 32;
  const int co = threadIdx.x % 32 * WARPS + threadIdx.x / 32;  // spread over the warps
  if (co < CO && last > first)
    bulk_store(base + co * plane + 8 * first, out_s + co * OUT_PITCH + 16 * first, 16u * (last - first));
  bulk_commit();
  for (int i = threadIdx.x; i < 2 * CO; i += THREADS) {
    const int co = i / 2;
    const int from = i % 2 ? max(8 * last, 8 * first) : shift, to = i % 2 ? end : min(8 * first, end);
    for (int e = from; e < to; e += 2)
      *reinterpret_cast<uint32_t*>(base + co * plane + e) = *reinterpret_cast<const uint32_t*>(out_s + co * OUT_PITCH + 2 * e);
  }
}
"""


def with_bulk(body: str) -> str:
    i, j = cut(body, "__device__ __forceinline__ void write_out(", "\n}\n")
    body = body[:i] + BULK + body[j + 1:]
    edits = [("    cp_commit();\n    __syncthreads();  // the shifted copies are in",
              "    cp_commit();\n    bulk_wait_read();\n    __syncthreads();  // the shifted copies are in"),
             ("    prev = c;\n    pending = true;", "    fence_proxy_async();\n    prev = c;\n    pending = true;"),
             ("    write_out(out_s, y, prev, od, oh, ow);\n  }\n}", "    write_out(out_s, y, prev, od, oh, ow);\n    bulk_wait_read();\n  }\n}")]
    for old, new in edits:
        assert body.count(old) == 1, old
        body = body.replace(old, new)
    return body


def with_cs(body: str) -> str:
    old = "*reinterpret_cast<uint4*>(dst + 8 * b) = *reinterpret_cast<const uint4*>(src + 16 * b);"
    assert body.count(old) == 1
    return body.replace(old, "__stcs(reinterpret_cast<uint4*>(dst + 8 * b), *reinterpret_cast<const uint4*>(src + 16 * b));")


def cut(body: str, start: str, end: str) -> tuple[int, int]:
    i = body.index(start)
    return i, body.index(end, i) + len(end)


def with_write_out(body: str, vec: int) -> str:
    i, j = cut(body, "__device__ __forceinline__ void write_out(", "\n}\n")
    text = W16E.replace("VEC_T", "uint4" if vec == 8 else "uint2").replace("VEC", str(vec))
    body = body[:i] + text + body[j + 1:]
    if vec == 4:
        body = body.replace("* ow) % 8);", "* ow) % 4);")
        assert "% 4);" in body
    return body


def with_const_sizes(body: str, args: dict, names=("n", "d", "h", "w", "od", "oh", "ow")) -> str:
    sig = "int n, int d, int h, int w, int od, int oh, int ow) {\n"
    assert body.count(sig) == 1
    fixed = " ".join(f"{k} = {args[k]};" for k in names)
    return body.replace(sig, sig + "  " + fixed + "\n")


def with_stage8(body: str) -> str:
    old = ("  const int pieces = w / 8;  // 16-byte pieces of a row\n"
           "  for (int i = threadIdx.x; i < STAGED * pieces; i += THREADS) {\n"
           "    const int row = i / pieces, q = i % pieces,")
    assert body.count(old) == 1
    return body.replace(old, "  for (int i = threadIdx.x; i < STAGED * (WMAX / 8); i += THREADS) {\n"
                             "    if (i % (WMAX / 8) >= w / 8) continue;\n"
                             "    const int row = i / (WMAX / 8), q = i % (WMAX / 8),")


def with_div32(body: str) -> str:
    old = (": n(static_cast<int>(item / chunks / od_count)), od(static_cast<int>(item / chunks % od_count)),\n"
           "        oh0(static_cast<int>(item % chunks) * R) {}")
    assert body.count(old) == 1
    return body.replace(old, ": n(static_cast<int>(item) / chunks / od_count), od(static_cast<int>(item) / chunks % od_count),\n"
                             "        oh0(static_cast<int>(item) % chunks * R) {}")


def without(body: str, what: str) -> str:
    body = body.replace(MARKER, NEVER + MARKER, 1)
    if what == "write":
        assert body.count("write_out(out_s, y, prev, od, oh, ow);") == 2
        return body.replace("write_out(out_s, y, prev, od, oh, ow);", "if (g_never_flag) write_out(out_s, y, prev, od, oh, ow);")
    loop = "#pragma unroll\n      for (int s = 0; s < NK; ++s) {"
    assert body.count(loop) == 1
    return body.replace(loop, "if (g_never_flag)\n" + loop)


def variants_b(src, args: dict) -> dict:
    """Round 2: which of the fixed sizes buys const's 10%."""
    b, wow = src.body, ("w", "ow")
    return {"full": b, "const": with_const_sizes(b, args), "constw": with_const_sizes(b, args, wow),
            "stage8": with_stage8(b), "div32": with_div32(b), "stage8+div32": with_stage8(with_div32(b)),
            "constw+div32": with_const_sizes(with_div32(b), args, wow),
            "stage8+div32+w16e": with_stage8(with_div32(with_write_out(b, 8))),
            "constw+div32+w16e": with_const_sizes(with_div32(with_write_out(b, 8)), args, wow)}


def variants_c(src, args: dict) -> dict:
    """Round 3: the write-out unrolled (w16u), with evict-first stores (cs), with the sizes fixed."""
    b = src.body
    return {"full": b, "const": with_const_sizes(b, args), "w16u": with_w16u(b), "w16u+cs": with_w16u(b, True),
            "w16u+stage8+div32": with_stage8(with_div32(with_w16u(b))),
            "w16u+cs+stage8+div32": with_stage8(with_div32(with_w16u(b, True))),
            "const+w16u": with_const_sizes(with_w16u(b), args), "const+w16u+cs": with_const_sizes(with_w16u(b, True), args)}


def variants_d(src, args: dict) -> dict:
    """Round 4: evict-first stores in the shipped and w16e write-outs, and bulk copies (sm_90)."""
    b = src.body
    return {"full": b, "const": with_const_sizes(b, args), "cs": with_cs(b), "const+cs": with_const_sizes(with_cs(b), args),
            "w16e+cs": with_write_out(b, 8).replace("*reinterpret_cast<uint4*>(dst + 8 * b) = ", "__stcs(reinterpret_cast<uint4*>(dst + 8 * b), ").replace(
                "*reinterpret_cast<const uint4*>(src + 2 * 8 * b);", "*reinterpret_cast<const uint4*>(src + 2 * 8 * b));"),
            "bulk": with_bulk(b), "const+bulk": with_const_sizes(with_bulk(b), args),
            "stage8+div32+bulk": with_stage8(with_div32(with_bulk(b)))}


def variants(src, args: dict) -> dict:
    b = src.body
    return {"full": b, "const": with_const_sizes(b, args), "w16e": with_write_out(b, 8), "w8": with_write_out(b, 4),
            "const+w16e": with_const_sizes(with_write_out(b, 8), args),
            "const+w8": with_const_sizes(with_write_out(b, 4), args),
            "nowrite": without(b, "write"), "nok": without(b, "k")}


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    work = work_of("seed-b", "bfloat16")
    spec, shape = work.spec, work.input_shape
    args = launch_args(spec, shape)
    target = Target.for_device()
    plan = []
    round_b, round_c, round_d = "--b" in sys.argv, "--c" in sys.argv, "--d" in sys.argv
    others = {"b": ("full", "const", "stage8+div32+w16e", "constw+div32+w16e"), "c": ("full", "w16u", "w16u+cs+stage8+div32"),
              "d": ("full", "bulk", "const+bulk", "cs"), "a": ("full", "const+w16e", "w16e")}[
        "b" if round_b else "c" if round_c else "d" if round_d else "a"]
    make = variants_b if round_b else variants_c if round_c else variants_d if round_d else variants
    for tiles in TILES[:1] + TILES[3:] if round_b else TILES:
        src = render_rows(spec, tiles)
        for tag, body in make(src, args).items():
            if tiles != TILES[0] and tag not in others:
                continue
            suffix = f"r{tiles.r}w{tiles.rw}b{tiles.blocks_per_sm}_" + tag.replace("+", "_")
            plan.append(("seed-b", "bfloat16", f"{tiles} {tag}", src.edited(suffix, body)))
    entries = build_entries(plan, target, Path(tempfile.mkdtemp(prefix="conv3d-s12-rows-")))[("seed-b", "bfloat16")]
    declaration = ("void fwd(torch::Tensor x, torch::Tensor w, torch::Tensor b, torch::Tensor y, int64_t r, int64_t rw, "
                   "int64_t minb, bool staged, int64_t parts);")
    probe = load_inline("s11_fwd_rows", cpp_sources=declaration, cuda_sources=(HERE / "s11_fwd_rows.cu").read_text(),
                        functions=["fwd"], extra_cuda_cflags=["-O3", "-std=c++17"], verbose=False)

    x, weight, bias = random_inputs(spec, shape)
    ref = F.conv3d(x[:2].double(), weight.double(), bias.double())
    y = torch.empty((shape[0], spec.out_channels, *spec.output_size(*shape[2:])), dtype=x.dtype, device="cuda")

    def check(run) -> tuple[float, bool]:
        y.fill_(float("nan"))
        run()
        torch.cuda.synchronize()
        return relative_error(y[:2], ref), bool(torch.isfinite(y).all().item())

    props = torch.cuda.get_device_properties(0)
    lines = [f"## seed-b bf16, the row template's variants and the s11 probe: {props.name}, torch {torch.__version__}, "
             f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}", "",
             "| kernel | regs | spill B | ms (round 1) | ms (round 2) | rel err | every element written |",
             "|---|---|---|---|---|---|---|"]
    runs = [(e["tiles"], e["regs"], e["spills"], (lambda k=e["kernel"]: k(x, weight, bias, y, args))) for e in entries
            if not isinstance(e["kernel"], Exception)]  # build_entries printed the failures
    runs += [(f"s11 probe R={r} RW={rw} MINB={minb}", "-", "-",
              (lambda r=r, rw=rw, minb=minb: probe.fwd(x, weight, bias, y, r, rw, minb, True, 0)))
             for r, rw, minb in PROBE_CONFIGS]
    results = {}
    for label, regs, spills, run in runs:
        err, whole = check(run)
        results[label] = dict(regs=regs, spills=spills, err=err, whole=whole, ms=[])
    for _ in range(2):  # two rounds, so drift over the run shows
        for label, _, _, run in runs:
            results[label]["ms"].append(median_ms(run, reps=50))
    for label, r in results.items():
        checked = not ("nowrite" in label or "nok" in label)
        lines.append(f"| {label} | {r['regs']} | {r['spills']} | {r['ms'][0]:.3f} | {r['ms'][1]:.3f} | {r['err']:.1e}"
                     f"{'' if checked else ' (part left out)'} | {r['whole']} |")
    text = "\n".join(lines) + "\n"
    print(text, flush=True)
    stem = "s12_rows_parts" + ("_b" if round_b else "_c" if round_c else "_d" if round_d else "")
    (out / f"{stem}.md").write_text(text)
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
