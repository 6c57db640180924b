"""Session 24 probe: what a grad_out row's products cost when the window of KH input rows is issued as KH wgmmas of
N = planes x 8 (one per kh, each slot read where it lies in the ring: no mirrored slots) rather than one of N = KH x
planes x 8 over consecutive slots, with A (the grad_out row) from shared memory (SS) or from registers (RS, loaded
once a row by ldmatrix). Both multiplying warpgroups of seed-a's wgrad kernel: N = 5 x 5 x 8 and 5 x 4 x 8, and the
bias's n8 on warpgroup 1. Nothing is built or copied: the products, their waits and (RS) the row's ldmatrix alone.

    python3 bench/probes/s24_wgmma_split.py OUT_DIR     (needs nvcc and an sm_90 GPU)

Prints cycles a row (the median over the blocks of clock64 around ROWS rows) for each form."""
import subprocess
import sys
from pathlib import Path

KH, NP0, NP1, GB = 5, 5, 4, 8 * 13 * 16
ROWS = 4000


def wgmma_fn(n: int, rs: bool) -> str:
    acc = n // 2
    outs = ", ".join(f'"+f"(d[OFF + {i}])' for i in range(acc))
    regs = ", ".join(f"%{i}" for i in range(acc))
    if rs:
        a = f"{{ %{acc}, %{acc + 1}, %{acc + 2}, %{acc + 3} }}"
        b, tail = f"%{acc + 4}", "p, 1, 1, 0"
        ins = '"r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b)'
        sig = "const uint32_t (&a)[4], uint64_t b"
    else:
        a, b, tail = f"%{acc}", f"%{acc + 1}", "p, 1, 1, 0, 0"
        ins = '"l"(a), "l"(b)'
        sig = "uint64_t a, uint64_t b"
    return f"""template <int OFF, int NA>
__device__ __forceinline__ void mma_{'rs' if rs else 'ss'}{n}(float (&d)[NA], {sig}) {{
  asm volatile("{{\\n.reg .pred p;\\nsetp.ne.b32 p, 1, 0;\\n"
               "wgmma.mma_async.sync.aligned.m64n{n}k16.f32.bf16.bf16 {{ {regs} }}, {a}, {b}, {tail};\\n}}\\n"
               : {outs} : {ins});
}}
"""


def source() -> str:
    fns = "".join(wgmma_fn(n, rs) for n in sorted({KH * NP0 * 8, KH * NP1 * 8, NP0 * 8, NP1 * 8, 8})
                  for rs in (False, True))
    return r"""
#include <cstdint>
#include <cstdio>
#include <vector>
#include <algorithm>
__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_wait0() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }
template <int NA> __device__ __forceinline__ void keep(float (&d)[NA]) {
#pragma unroll
  for (int i = 0; i < NA; ++i) asm volatile("" : "+f"(d[i]) :: "memory");
}
__device__ __forceinline__ uint64_t a_desc(uint32_t addr) {
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) | (1ull << 16) | (static_cast<uint64_t>(1024 >> 4) << 32) |
         (1ull << 62);
}
__device__ __forceinline__ uint64_t b_desc(uint32_t addr, int lbo, int sbo) {
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) | (static_cast<uint64_t>(lbo >> 4) << 16) |
         (static_cast<uint64_t>(sbo >> 4) << 32);
}
__device__ __forceinline__ void ldsm4(uint32_t (&v)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 { %0, %1, %2, %3 }, [%4];\n"
               : "=r"(v[0]), "=r"(v[1]), "=r"(v[2]), "=r"(v[3]) : "r"(addr) : "memory");
}
""" + fns + f"""
constexpr int KH = {KH}, GB = {GB}, LBO = 13 * 16, R = KH + 3, ROWS = {ROWS};
""" + r"""
// FORM 0: one wgmma a k16 step over KH consecutive slots (SS); 1: KH wgmmas (SS); 2: KH wgmmas (RS); 3: one (RS)
template <int FORM, int WG>
__device__ void rows(uint32_t a0, uint32_t ring, uint32_t ones, long long* out, int lane, int tw) {
  constexpr int NP = WG == 0 ? 5 : 4;
  float acc[KH * NP * 4], bacc[4];
#pragma unroll
  for (int i = 0; i < KH * NP * 4; ++i) acc[i] = 0.f;
#pragma unroll
  for (int i = 0; i < 4; ++i) bacc[i] = 0.f;
  const int q = tw >> 5;
  long long t0 = clock64();
  for (int i = 0; i < ROWS; ++i) {
    const uint32_t a = a0 + (i & 3) * 8192;
    const int w = i % R;
    uint32_t ar[4][4];
    if constexpr (FORM >= 2) {
#pragma unroll
      for (int ks = 0; ks < 4; ++ks)
        ldsm4(ar[ks], a + (16 * q + (lane & 15)) * 128 + (((2 * ks + (lane >> 4)) ^ (lane & 7)) << 4));
    }
    wg_fence();
#pragma unroll
    for (int ks = 0; ks < 4; ++ks) {
      const uint64_t da = a_desc(a + 32 * ks);
      if constexpr (FORM == 0) {
        if constexpr (WG == 0) mma_ss200<0>(acc, da, b_desc(ring + w * NP * GB + ks * 2 * LBO, LBO, GB));
        else mma_ss160<0>(acc, da, b_desc(ring + w * NP * GB + ks * 2 * LBO, LBO, GB));
      } else if constexpr (FORM == 3) {
        if constexpr (WG == 0) mma_rs200<0>(acc, ar[ks], b_desc(ring + w * NP * GB + ks * 2 * LBO, LBO, GB));
        else mma_rs160<0>(acc, ar[ks], b_desc(ring + w * NP * GB + ks * 2 * LBO, LBO, GB));
      } else {
#pragma unroll
        for (int kh = 0; kh < KH; ++kh) {
          const uint64_t db = b_desc(ring + ((w + kh) % R) * NP * GB + ks * 2 * LBO, LBO, GB);
          float (&part)[NP * 4] = *reinterpret_cast<float (*)[NP * 4]>(&acc[kh * NP * 4]);
          if constexpr (FORM == 1) {
            if constexpr (WG == 0) mma_ss40<0>(part, da, db); else mma_ss32<0>(part, da, db);
          } else {
            if constexpr (WG == 0) mma_rs40<0>(part, ar[ks], db); else mma_rs32<0>(part, ar[ks], db);
          }
        }
      }
      if constexpr (WG == 1) {
        if constexpr (FORM >= 2) mma_rs8<0>(bacc, ar[ks], b_desc(ones + ks * 256, 128, 1024));
        else mma_ss8<0>(bacc, da, b_desc(ones + ks * 256, 128, 1024));
      }
    }
    wg_commit();
    wg_wait0();
  }
  long long t1 = clock64();
  keep(acc);
  keep(bacc);
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < KH * NP * 4; ++i) s += acc[i];
  s += bacc[0];
  if (tw == 0) out[2 * blockIdx.x + WG] = (t1 - t0) + (s == 12345.f);
}

template <int FORM>
__global__ void __launch_bounds__(256, 1) kernel(long long* out) {
  extern __shared__ __align__(128) unsigned char smem[];
  const uint32_t base = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  const uint32_t a0 = (base + 1023) & ~1023u, ring = a0 + 4 * 8192, ones = ring + (R + KH) * 9 * GB;
  for (int k = threadIdx.x; k < (4 * 8192 + (R + KH) * 9 * GB + 1024) / 4; k += 256)
    asm volatile("st.shared.b32 [%0], %1;\n" :: "r"(a0 + 4 * k), "r"(0x3f803f80u * (k % 7 == 0)));
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
  __syncthreads();
  const int tid = threadIdx.x, lane = tid & 31, tw = tid & 127;
  if (tid < 128) rows<FORM, 0>(a0, ring, ones, out, lane, tw);
  else rows<FORM, 1>(a0, ring + (R + KH) * 5 * GB, ones, out, lane, tw);
}

int main() {
  int sms = 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
  long long* out;
  cudaMalloc(&out, 2 * sms * sizeof(long long));
  const int smem = 1024 + 4 * 8192 + (R + KH) * 9 * GB + 1024;
  const char* names[4] = {"SS, one wgmma a k16 step (v24)", "SS, KH wgmmas a k16 step", "RS, KH wgmmas a k16 step",
                          "RS, one wgmma a k16 step"};
  auto go = [&](auto kern, int form) {
    cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    for (int rep = 0; rep < 3; ++rep) {
      kern<<<sms, 256, smem>>>(out);
      cudaError_t e = cudaDeviceSynchronize();
      if (e != cudaSuccess) { printf("%s: %s\n", names[form], cudaGetErrorString(e)); return; }
    }
    std::vector<long long> h(2 * sms);
    cudaMemcpy(h.data(), out, h.size() * sizeof(long long), cudaMemcpyDeviceToHost);
    std::vector<long long> w0, w1;
    for (int b = 0; b < sms; ++b) { w0.push_back(h[2 * b]); w1.push_back(h[2 * b + 1]); }
    std::sort(w0.begin(), w0.end());
    std::sort(w1.begin(), w1.end());
    printf("%-34s cycles a row: warpgroup 0 %7.1f, warpgroup 1 %7.1f\n", names[form],
           double(w0[sms / 2]) / ROWS, double(w1[sms / 2]) / ROWS);
  };
  go(kernel<0>, 0);
  go(kernel<1>, 1);
  go(kernel<2>, 2);
  go(kernel<3>, 3);
  return 0;
}
"""


if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    cu = out / "s24_wgmma_split.cu"
    cu.write_text(source())
    exe = out / "s24_wgmma_split"
    subprocess.run(["nvcc", "-O3", "-std=c++17", "-gencode", "arch=compute_90a,code=sm_90a", "-Xptxas", "-v", "-o",
                    str(exe), str(cu)], check=True)
    subprocess.run([str(exe)], check=True)
