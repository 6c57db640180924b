// Session 19: what the bulk tensor copy engine puts in shared memory for the slots template's staging
// (templates/conv3d_fwd_slots.cu.j2, tma), from a tensor whose element i holds i (seed-a's grad_out planes: 60 x 58 floats,
// 2 planes, 64 channels), one box of a row into shared memory, then copied out and compared on the host.
//   ./t         the template's map: (plane's floats, planes, channels, samples), box (68 floats, 1, 64, 1), no swizzle;
//               for a row that starts on a 16-byte piece (row 0), one that starts 8 bytes into one (row 1), the last row
//               (its box reads past the plane: zeros) and a plane outside the tensor (all zeros), counts the floats where
//               the template reads them (channel c, position p at c x 68 + p + off)
//   ./t sw128   the map tried first: (4 floats, 16-byte pieces, planes, channels, samples), box (4, 16, 1, 64, 1), with
//               the 128-byte swizzle, into a 1024-aligned buffer: reports what the run returns (it faulted in the template)
// nvcc -gencode=arch=compute_90a,code=sm_90a -std=c++17 -O2 s19_tma_swizzle.cu -o t && ./t && ./t sw128
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cstdio>
#include <cstdint>
#include <cstring>
#include <vector>

constexpr int HI = 60, WI = 58, DI = 2, CI = 64, ROW = 68, SMEM = 2048 + CI * ROW * 4 + 16;

__global__ void stage(const __grid_constant__ CUtensorMap map, float* out, int rank, int e, int d, int bytes) {
  extern __shared__ __align__(128) unsigned char smem[];
  const uint32_t base = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  const uint32_t s = (base + 1023) & ~1023u, b = s + CI * ROW * 4;  // 1024-aligned box, the mbarrier after it
  if (threadIdx.x == 0) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n" :: "r"(b));
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" :: "r"(b), "r"(bytes) : "memory");
    if (rank == 4)
      asm volatile("cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, %5}], [%6];\n"
                   :: "r"(s), "l"(&map), "r"(e), "r"(d), "r"(0), "r"(0), "r"(b) : "memory");
    else
      asm volatile("cp.async.bulk.tensor.5d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, %5, %6}], [%7];\n"
                   :: "r"(s), "l"(&map), "r"(0), "r"(e / 4), "r"(d), "r"(0), "r"(0), "r"(b) : "memory");
  }
  __syncthreads();
  asm volatile("{\n.reg .pred done;\nw_%=:\nmbarrier.try_wait.parity.shared::cta.b64 done, [%0], 0;\n@!done bra w_%=;\n}\n" :: "r"(b) : "memory");
  for (int i = threadIdx.x; i < bytes / 4; i += blockDim.x) out[i] = reinterpret_cast<const float*>(smem + (s - base))[i];
}

int main(int argc, char** argv) {
  const bool sw128 = argc > 1 && !strcmp(argv[1], "sw128");
  PFN_cuTensorMapEncodeTiled_v12000 encode = nullptr;
  cudaDriverEntryPointQueryResult got;
  cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", reinterpret_cast<void**>(&encode), 12000, cudaEnableDefault, &got);
  const size_t count = size_t(CI) * DI * HI * WI;
  std::vector<float> host(count);
  for (size_t i = 0; i < count; ++i) host[i] = float(i);
  float *x, *out;
  cudaMalloc(&x, count * 4);
  cudaMemcpy(x, host.data(), count * 4, cudaMemcpyHostToDevice);
  cudaMalloc(&out, CI * ROW * 4);
  CUtensorMap map;
  CUresult r;
  int bytes;
  if (sw128) {
    const cuuint64_t dims[5] = {4, HI * WI / 4, DI, CI, 1};
    const cuuint64_t strides[4] = {16, 4ull * HI * WI, 4ull * DI * HI * WI, 4ull * CI * DI * HI * WI};
    const cuuint32_t box[5] = {4, 16, 1, CI, 1}, unit[5] = {1, 1, 1, 1, 1};
    bytes = CI * 64 * 4;
    r = encode(&map, CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 5, x, dims, strides, box, unit, CU_TENSOR_MAP_INTERLEAVE_NONE,
               CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  } else {
    const cuuint64_t dims[4] = {HI * WI, DI, CI, 1};
    const cuuint64_t strides[3] = {4ull * HI * WI, 4ull * DI * HI * WI, 4ull * CI * DI * HI * WI};
    const cuuint32_t box[4] = {ROW, 1, CI, 1}, unit[4] = {1, 1, 1, 1};
    bytes = CI * ROW * 4;
    r = encode(&map, CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 4, x, dims, strides, box, unit, CU_TENSOR_MAP_INTERLEAVE_NONE,
               CU_TENSOR_MAP_SWIZZLE_NONE, CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  }
  printf("%s map: encode returned %d\n", sw128 ? "5D 128-byte-swizzle" : "4D unswizzled", int(r));
  cudaFuncSetAttribute(stage, cudaFuncAttributeMaxDynamicSharedMemorySize, SMEM);
  const int rows[4][2] = {{0, 1}, {1, 1}, {HI - 1, 1}, {0, DI + 3}};  // (row, plane); plane DI + 3 is outside
  int failures = 0;
  for (auto& rp : rows) {
    const int hi = rp[0], d = rp[1], off = hi * WI % 4, e = hi * WI - off;
    stage<<<1, 128, SMEM>>>(map, out, sw128 ? 5 : 4, e, d, bytes);
    std::vector<float> got_(bytes / 4);
    const cudaError_t err = cudaMemcpy(got_.data(), out, bytes, cudaMemcpyDeviceToHost);
    int match = 0, total = 0;
    for (int c = 0; c < CI; ++c)
      for (int p = 0; p < (sw128 ? 64 - off : ROW - off); ++p, ++total) {
        const long pe = long(e) + off + p;  // element of the plane
        const float want = (d < DI && pe < HI * WI) ? float((long(c) * DI + d) * HI * WI + pe) : 0.f;
        uint32_t o = (sw128 ? c * 256 : c * ROW * 4) + 4 * (p + off);
        if (sw128) o ^= (o >> 3) & 0x70;
        match += err == cudaSuccess && got_[o / 4] == want;
      }
    failures += match != total;
    printf("row %d plane %d (starts %d bytes into a 16-byte piece): %s; %d of %d floats where the template reads them\n",
           hi, d, off * 4, cudaGetErrorString(err), match, total);
    if (err != cudaSuccess) break;
  }
  printf("%s\n", failures ? "MISMATCH" : "every float where the template reads it");
  return failures != 0;
}
