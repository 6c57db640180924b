// Session 14: which starts of a tensor-copy box run on the H100 (a box whose innermost start is not 16-byte aligned is an
// illegal instruction). nvcc -gencode=arch=compute_90a,code=sm_90a -std=c++17 -O3 s14_tma_start.cu -o t && ./t VARIANT C0 C1
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cstdio>
#include <cstdint>
#include <cstdlib>
__global__ void run(const __grid_constant__ CUtensorMap map, float* out, int rank, int bytes, int c0, int c1) {
  __shared__ __align__(128) uint16_t buf[64 * 64];
  __shared__ __align__(8) uint64_t bar;
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(buf)), b = static_cast<uint32_t>(__cvta_generic_to_shared(&bar));
  if (threadIdx.x == 0) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n" :: "r"(b));
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" :: "r"(b), "r"(bytes) : "memory");
    if (rank == 4)
      asm volatile("cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, %5}], [%6];\n"
                   :: "r"(s), "l"(&map), "r"(c0), "r"(c1), "r"(0), "r"(0), "r"(b) : "memory");
    else
      asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n"
                   :: "r"(s), "l"(&map), "r"(c0), "r"(c1), "r"(b) : "memory");
    asm volatile("{\n.reg .pred done;\nw_%=:\nmbarrier.try_wait.parity.shared::cta.b64 done, [%0], 0;\n@!done bra w_%=;\n}\n" :: "r"(b) : "memory");
    out[0] = float(buf[0]);
  }
}
int main(int argc, char** argv) {
  PFN_cuTensorMapEncodeTiled_v12000 encode = nullptr;
  cudaDriverEntryPointQueryResult got;
  if (argc > 4) cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", reinterpret_cast<void**>(&encode), 12000, cudaEnableDefault, &got);
  else cudaGetDriverEntryPoint("cuTensorMapEncodeTiled", reinterpret_cast<void**>(&encode), cudaEnableDefault, &got);
  void* data; cudaMalloc(&data, 16ull * 64 * 62 * 3480 * 2); cudaMemset(data, 0, 16ull * 64 * 62 * 3480 * 2);
  float* out; cudaMalloc(&out, 64);
  const int v = atoi(argv[1]);
  CUtensorMap map;
  CUresult r;
  int rank = 4, bytes = 1024;
  const auto promo = v == 1 ? CU_TENSOR_MAP_L2_PROMOTION_NONE : CU_TENSOR_MAP_L2_PROMOTION_L2_128B;
  if (v <= 2) {  // 0: seed-a's grad_out, box (8, 1, 64, 1); 1: no L2 promotion; 2: box (64, 1, 64, 1)
    const cuuint64_t dims[4] = {3480, 62, 64, 16}, strides[3] = {6960, 6960ull * 62, 6960ull * 62 * 64};
    const cuuint32_t box[4] = {v == 2 ? 64u : 8u, 1, 64, 1}, elem[4] = {1, 1, 1, 1};
    if (v == 2) bytes = 8192;
    r = encode(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 4, data, dims, strides, box, elem, CU_TENSOR_MAP_INTERLEAVE_NONE,
               CU_TENSOR_MAP_SWIZZLE_NONE, promo, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  } else {  // 3: a plain 2D bf16 matrix 1024 x 1024, box 64 x 64
    rank = 2; bytes = 8192;
    const cuuint64_t dims[2] = {1024, 1024}, strides[1] = {2048};
    const cuuint32_t box[2] = {64, 64}, elem[2] = {1, 1};
    r = encode(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, data, dims, strides, box, elem, CU_TENSOR_MAP_INTERLEAVE_NONE,
               CU_TENSOR_MAP_SWIZZLE_NONE, promo, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  }
  const int c0 = atoi(argv[2]), c1 = atoi(argv[3]);
  run<<<1, 32>>>(map, out, rank, bytes, c0, c1);
  printf("variant %d at (%d, %d): encode %d, run: %s\n", v, c0, c1, int(r), cudaGetErrorString(cudaDeviceSynchronize()));
}
