// Session 20: which innermost box starts the bulk tensor copy engine takes on the H100, by the start's byte offset into a
// 16-byte piece. Session 14 (s14_tma_start.cu) saw a bf16 box run from positions 0 and 8 and fail from 3 (6 bytes in);
// 2, 4 and 6 (4, 8, 12 bytes in: where seed-a's bf16 grad_out rows of 116 bytes start) were not tried. The map is the
// slots template's: (a plane's h x w elements, planes, channels, samples), box (72 elements, 1, 64, 1), no swizzle;
// the tensor's element i holds i mod 251 (exact in bf16 and float32); a run compares every element of the box.
//   ./t DTYPE START     DTYPE bf16 or f32; START the box's first element of the plane (row 1 of 60 x 58: 58)
// nvcc -gencode=arch=compute_90a,code=sm_90a -std=c++17 -O2 s20_tma_start_bytes.cu -o t && for s in 0 2 4 6 8 58 3; do ./t bf16 $s; done
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_bf16.h>
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

constexpr int HI = 60, WI = 58, DI = 2, CI = 64, ROW = 72;

__global__ void stage(const __grid_constant__ CUtensorMap map, uint32_t* out, int e, int bytes) {
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ __align__(8) uint64_t bar;
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem)), b = static_cast<uint32_t>(__cvta_generic_to_shared(&bar));
  if (threadIdx.x == 0) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n" :: "r"(b));
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" :: "r"(b), "r"(bytes) : "memory");
    asm volatile("cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, %5}], [%6];\n"
                 :: "r"(s), "l"(&map), "r"(e), "r"(1), "r"(0), "r"(0), "r"(b) : "memory");
  }
  __syncthreads();
  asm volatile("{\n.reg .pred done;\nw_%=:\nmbarrier.try_wait.parity.shared::cta.b64 done, [%0], 0;\n@!done bra w_%=;\n}\n" :: "r"(b) : "memory");
  for (int i = threadIdx.x; i < bytes / 4; i += blockDim.x) out[i] = reinterpret_cast<const uint32_t*>(smem)[i];
}

int main(int argc, char** argv) {
  if (argc < 3) return 2;
  const bool bf16 = !strcmp(argv[1], "bf16");
  const int start = atoi(argv[2]), E = bf16 ? 2 : 4, bytes = CI * ROW * E;
  PFN_cuTensorMapEncodeTiled_v12000 encode = nullptr;
  cudaDriverEntryPointQueryResult got;
  cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", reinterpret_cast<void**>(&encode), 12000, cudaEnableDefault, &got);
  const size_t count = size_t(CI) * DI * HI * WI;
  std::vector<unsigned char> host(count * E);
  for (size_t i = 0; i < count; ++i) {
    const float v = float(i % 251);
    if (bf16) { const __nv_bfloat16 h = __float2bfloat16(v); memcpy(&host[i * 2], &h, 2); } else memcpy(&host[i * 4], &v, 4);
  }
  void* x;
  uint32_t* out;
  cudaMalloc(&x, count * E);
  cudaMemcpy(x, host.data(), count * E, cudaMemcpyHostToDevice);
  cudaMalloc(&out, bytes);
  CUtensorMap map;
  const cuuint64_t dims[4] = {HI * WI, DI, CI, 1};
  const cuuint64_t strides[3] = {cuuint64_t(E) * HI * WI, cuuint64_t(E) * DI * HI * WI, cuuint64_t(E) * CI * DI * HI * WI};
  const cuuint32_t box[4] = {ROW, 1, CI, 1}, unit[4] = {1, 1, 1, 1};
  const CUresult r = encode(&map, bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 4, x, dims, strides,
                            box, unit, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_NONE,
                            CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  cudaFuncSetAttribute(stage, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  stage<<<1, 128, bytes>>>(map, out, start, bytes);
  std::vector<unsigned char> back(bytes);
  const cudaError_t err = cudaMemcpy(back.data(), out, bytes, cudaMemcpyDeviceToHost);
  int match = 0;
  for (int c = 0; c < CI && err == cudaSuccess; ++c)
    for (int p = 0; p < ROW; ++p) {
      const long pe = start + p;
      const float want = pe < HI * WI ? float(((long(c) * DI + 1) * HI * WI + pe) % 251) : 0.f;
      float v;
      if (bf16) { __nv_bfloat16 h; memcpy(&h, &back[(c * ROW + p) * 2], 2); v = __bfloat162float(h); }
      else memcpy(&v, &back[(c * ROW + p) * 4], 4);
      match += v == want;
    }
  printf("%s box from element %d (%d bytes into a 16-byte piece): encode %d, run %s, %d of %d elements right\n", argv[1],
         start, start * E % 16, int(r), cudaGetErrorString(err), match, CI * ROW);
  return !(err == cudaSuccess && match == CI * ROW);
}
