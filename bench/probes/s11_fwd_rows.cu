// Session 11 probe: the forward of seed-b in bf16 (16 x 3 x 64^3 -> 64 channels, 3x3x3, stride 1,
// no padding) as a matrix product per output row, with nothing gathered from global memory.
//
//   y[n][co][od][oh][ow] = bias[co] + sum over (kh, ci, kd, kw) of W[co][ci][kd][kh][kw] * x[n][ci][od + kd][oh + kh][ow + kw]
//
// For one output row (n, od, oh) that is a product with M = 64 output channels, N = the row's
// positions ow, K = 27 input rows (kh, ci, kd) x 4 taps along w (kw = 3 a zero weight): B[k][ow] =
// row_r[ow + kw], a Toeplitz matrix of 27 input rows. The weights (A) stay in registers for the
// whole kernel; the input rows are staged in shared memory, each twice (as read, and shifted by
// one element) so that every pair of B an mma.sync lane holds, (row_r[ow + kw], row_r[ow + kw + 1])
// with kw even, is one aligned 32-bit shared load: lanes of even ow read the first copy, of odd ow
// the second. The address of input row r of output row ol of a block's chunk is affine in r
// ((ol + kh) x 9 + (ci x 3 + kd) rows from the chunk's first), so every load of the K loop is a
// per-lane base and a compile-time offset.
//
// A block owns chunks of R output rows (n, od, oh0 .. oh0 + R - 1) in turn (persistent), stages
// their R + 2 input rows of each (ci, kd) by cp.async (the next chunk while it computes this one),
// builds the shifted copies, and its warps compute rows: warp (rw, owhalf, cohalf) owns 32 output
// channels x 32 positions of rows rw, rw + RW, ...; the accumulators start at the bias. They leave
// either by 32-bit stores (two bf16 of one channel; a store instruction writes 16 bytes to each of 8
// channels: run 1, slow) or (STAGE_OUT) through shared memory: the chunk's rows of every channel,
// contiguous in y, go out after the barrier that starts the next chunk, as 8-byte pieces (a warp's
// store is 256 contiguous bytes of one channel).
// A diagnostic, not a template: its sizes are seed-b's (W = 64 = two halves of 32 positions).
#include <cuda_bf16.h>
#include <cstdint>

namespace probe {

constexpr int N_ = 16, C = 3, D = 64, H = 64, W = 64, CO = 64, KD = 3, KH = 3, KW = 3;
constexpr int OD = D - KD + 1, OH = H - KH + 1, OW = W - KW + 1;
constexpr int KWP = 4;                        // taps along w, padded: a k16 step covers 4 input rows
constexpr int CK = C * KD;                    // input rows of one ih: (ci, kd)
constexpr int ROWS = CK * KH;                 // input rows of one output row: 27
constexpr int NK = (ROWS * KWP + 15) / 16;    // k16 steps: 7 (the 28th row's weights are zero)
constexpr int COPY_BYTES = 160;               // one copy of a row: 64 elements + 16 zeros; 40 words = 8 mod 32
constexpr int ROW_BYTES = 2 * COPY_BYTES;     // as read, then shifted by one: 80 words = 16 mod 32
constexpr long long CS = (long long)OD * OH * OW;  // elements of one output channel of one sample

constexpr int out_pitch_words(int r) {  // a channel's R rows in shared memory: >= R x OW / 2 words, 12 or 28 mod 32
  int w = r * OW / 2;
  while (w % 32 != 12 && w % 32 != 28) w += 2;
  return w;
}

template <int R> struct Chunk {
  static constexpr int STAGED = (R + KH - 1) * CK;            // input rows staged for R output rows
  static constexpr int BYTES = (STAGED + 1) * ROW_BYTES;      // + one zero row: the 28th row of the last output row
  static constexpr int OUT_PITCH = 4 * out_pitch_words(R);    // bytes of one channel's R output rows, staged
  static constexpr int OUT_BYTES = CO * OUT_PITCH;
  static_assert(R % 2 == 0 && OH % 2 == 0 && OW % 2 == 0, "a channel's rows of a chunk leave as 8-byte pieces");
  static constexpr int CHUNKS = (OH + R - 1) / R;
  static constexpr int ITEMS = N_ * OD * CHUNKS;
};

__device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, int bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" :: "r"(dst), "l"(src), "r"(bytes));
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n"); }
__device__ __forceinline__ void cp_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }
__device__ __forceinline__ uint32_t lds32(uint32_t addr) {
  uint32_t v;
  asm volatile("ld.shared.b32 %0, [%1];\n" : "=r"(v) : "r"(addr));
  return v;
}
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// The input rows of chunk `item` (copy as read) into the buffer at `buf`; rows past the input are zeros.
template <int R, int THREADS>
__device__ __forceinline__ void stage(const __nv_bfloat16* __restrict__ x, int item, uint32_t buf, int tid) {
  constexpr int CHUNKS = Chunk<R>::CHUNKS;
  const int chunk = item % CHUNKS, od = item / CHUNKS % OD, n = item / CHUNKS / OD;
  const int oh0 = chunk * R;
  for (int i = tid; i < Chunk<R>::STAGED * 8; i += THREADS) {
    const int row = i / 8, q = i % 8, ihl = row / CK, c = row % CK, ci = c / KD, kd = c % KD;
    const int ih = oh0 + ihl;
    const __nv_bfloat16* src = x + ((((long long)n * C + ci) * D + od + kd) * H + (ih < H ? ih : H - 1)) * W + 8 * q;
    cp_async16(buf + row * ROW_BYTES + 16 * q, src, ih < H ? 16 : 0);
  }
}

// The shifted copy of every staged row: element i of it is element i + 1 of the row.
template <int R, int THREADS>
__device__ __forceinline__ void shift_copies(unsigned char* buf, int tid) {
  for (int i = tid; i < Chunk<R>::STAGED * 8; i += THREADS) {
    const int row = i / 8, q = i % 8;
    unsigned char* p = buf + row * ROW_BYTES + 16 * q;
    const uint4 v = *reinterpret_cast<const uint4*>(p);
    const uint32_t next = *reinterpret_cast<const uint32_t*>(p + 16);  // zero past the row's 64 elements
    uint4 s;
    s.x = __byte_perm(v.x, v.y, 0x5432);
    s.y = __byte_perm(v.y, v.z, 0x5432);
    s.z = __byte_perm(v.z, v.w, 0x5432);
    s.w = __byte_perm(v.w, next, 0x5432);
    *reinterpret_cast<uint4*>(p + COPY_BYTES) = s;
  }
}

// A chunk's staged output (item's R rows of every channel, OW elements a row, contiguous in y) to y in 8-byte pieces:
// a warp's store is 256 contiguous bytes of one channel.
template <int R, int THREADS>
__device__ __forceinline__ void write_out(const unsigned char* out_s, __nv_bfloat16* __restrict__ y, int item, int tid) {
  constexpr int CHUNKS = Chunk<R>::CHUNKS, PIECES = R * OW / 4;
  const int chunk = item % CHUNKS, od = item / CHUNKS % OD, n = item / CHUNKS / OD;
  const int pieces = min(R, OH - chunk * R) * OW / 4;
  __nv_bfloat16* base = y + ((long long)n * CO * OD + od) * OH * OW + chunk * R * OW;
  for (int i = tid; i < CO * PIECES; i += THREADS) {
    const int co = i / PIECES, p = i % PIECES;
    if (p >= pieces) continue;
    const uint2 v = *reinterpret_cast<const uint2*>(out_s + co * Chunk<R>::OUT_PITCH + 8 * p);
    *reinterpret_cast<uint2*>(base + co * CS + 4 * p) = v;
  }
}

template <int R, int RW, int MINB, bool STAGE_OUT>
__global__ void __launch_bounds__(128 * RW, MINB)
fwd_rows(const __nv_bfloat16* __restrict__ x, const __nv_bfloat16* __restrict__ w, const __nv_bfloat16* __restrict__ bias,
         __nv_bfloat16* __restrict__ y, int parts) {
  constexpr int THREADS = 128 * RW, BYTES = Chunk<R>::BYTES, ITEMS = Chunk<R>::ITEMS, CHUNKS = Chunk<R>::CHUNKS;
  extern __shared__ __align__(128) unsigned char smem[];
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, g = lane / 4, t = lane % 4;
  const int cohalf = warp & 1, owhalf = (warp >> 1) & 1, rw = warp >> 2;
  const int co0 = 32 * cohalf, ow0 = 32 * owhalf;

  unsigned char* out_s = smem + 2 * BYTES;  // STAGE_OUT: the chunk's output, [co][ol][ow]
  // Both buffers zero once: the pads past each copy's 64 elements and the zero row are never written again.
  for (int i = tid; i < 2 * BYTES / 16; i += THREADS) reinterpret_cast<uint4*>(smem)[i] = make_uint4(0, 0, 0, 0);

  // The warp's A fragments for all K: co = co0 + 16 mi + g (+8), k = 16 s + 2 t (+1) (+8).
  uint32_t a[2][NK][4];
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int s = 0; s < NK; ++s)
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        float e[2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int co = co0 + 16 * mi + g + 8 * (q & 1), k = 16 * s + 2 * t + h + 8 * (q >> 1);
          const int r = k / KWP, kw = k % KWP, kh = r / CK, c = r % CK, ci = c / KD, kd = c % KD;
          e[h] = (kw < KW && r < ROWS) ? __bfloat162float(w[(((co * C + ci) * KD + kd) * KH + kh) * KW + kw]) : 0.f;
        }
        a[mi][s][q] = pack_bf16(e[0], e[1]);
      }
  float b_lo[2], b_hi[2];
#pragma unroll
  for (int mi = 0; mi < 2; ++mi) {
    b_lo[mi] = __bfloat162float(bias[co0 + 16 * mi + g]);
    b_hi[mi] = __bfloat162float(bias[co0 + 16 * mi + g + 8]);
  }
  __syncthreads();

  const uint32_t base = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  // The lane's part of every B address: input row t / 2 of a pair, copy by the parity of its ow, its ow and kw.
  const uint32_t lane_off = (t >> 1) * ROW_BYTES + (g & 1) * COPY_BYTES + ((g & ~1) + 2 * (t & 1) + ow0) * 2;

  int item = blockIdx.x, prev = -1;
  if (item < ITEMS) stage<R, THREADS>(x, item, base, tid);
  cp_commit();
  for (int it = 0; item < ITEMS; ++it, item += gridDim.x) {
    const int cur = (it & 1) * BYTES;
    cp_wait_all();
    __syncthreads();  // this chunk's rows are in; every warp is done with the other buffer (and the staged output)
    if (STAGE_OUT && prev >= 0 && !(parts & 1)) write_out<R, THREADS>(out_s, y, prev, tid);
    shift_copies<R, THREADS>(smem + cur, tid);
    if (item + gridDim.x < ITEMS) stage<R, THREADS>(x, item + gridDim.x, base + (BYTES - cur), tid);
    cp_commit();
    __syncthreads();  // the shifted copies are in

    const int chunk = item % CHUNKS, od = item / CHUNKS % OD, n = item / CHUNKS / OD;
    __nv_bfloat16* yrow = y + ((long long)n * CO * OD + od) * OH * OW + (long long)(co0 + g) * CS + ow0 + 2 * t;
    for (int ol = rw; ol < R; ol += RW) {
      const int oh = chunk * R + ol;
      if (oh >= OH) break;
      const uint32_t rb = base + cur + ol * CK * ROW_BYTES + lane_off;
      float acc[2][4][4];
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          acc[mi][j][0] = acc[mi][j][1] = b_lo[mi];
          acc[mi][j][2] = acc[mi][j][3] = b_hi[mi];
        }
      if (!(parts & 2))  // parts: bit 1 leaves out the K loop, bit 0 the stores (a flag the compiler cannot see)
#pragma unroll
      for (int s = 0; s < NK; ++s) {
        uint32_t b[2][4];
#pragma unroll
        for (int h = 0; h < 2; ++h)
#pragma unroll
          for (int j = 0; j < 4; ++j) b[h][j] = lds32(rb + ((16 * s + 8 * h) / KWP) * ROW_BYTES + 16 * j);
#pragma unroll
        for (int mi = 0; mi < 2; ++mi)
#pragma unroll
          for (int j = 0; j < 4; ++j) mma(acc[mi][j], a[mi][s], b[0][j], b[1][j]);
      }
      __nv_bfloat16* yo = yrow + oh * OW;
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          if (ow0 + 8 * j + 2 * t >= OW || (!STAGE_OUT && (parts & 1))) continue;
#pragma unroll
          for (int hh = 0; hh < 2; ++hh) {
            const uint32_t v = pack_bf16(acc[mi][j][2 * hh], acc[mi][j][2 * hh + 1]);
            if (STAGE_OUT) {
              const int co = co0 + 16 * mi + 8 * hh + g, ow = ow0 + 8 * j + 2 * t;
              *reinterpret_cast<uint32_t*>(out_s + co * Chunk<R>::OUT_PITCH + (ol * OW + ow) * 2) = v;
            } else {
              *reinterpret_cast<uint32_t*>(yo + (16 * mi + 8 * hh) * CS + 8 * j) = v;
            }
          }
        }
    }
    prev = item;
  }
  if (STAGE_OUT && !(parts & 1)) {
    __syncthreads();
    write_out<R, THREADS>(out_s, y, prev, tid);
  }
}

}  // namespace probe

#ifdef PROBE_KERNEL_ONLY  // nvcc alone (no torch): the instances, for ptxas's report
#define PROBE_INSTANCE(R, RW, MINB, S) \
  template __global__ void probe::fwd_rows<R, RW, MINB, S>(const __nv_bfloat16*, const __nv_bfloat16*, const __nv_bfloat16*, __nv_bfloat16*, int);
PROBE_INSTANCE(16, 1, 2, false) PROBE_INSTANCE(4, 1, 3, true) PROBE_INSTANCE(4, 2, 2, true) PROBE_INSTANCE(6, 1, 2, true)
PROBE_INSTANCE(6, 2, 2, true) PROBE_INSTANCE(8, 1, 1, true) PROBE_INSTANCE(8, 2, 1, true) PROBE_INSTANCE(8, 4, 1, true)
#else
#include <torch/extension.h>
#include <c10/cuda/CUDAStream.h>

template <int R, int RW, int MINB, bool STAGE_OUT>
static void launch(torch::Tensor x, torch::Tensor w, torch::Tensor b, torch::Tensor y, int parts) {
  auto kernel = probe::fwd_rows<R, RW, MINB, STAGE_OUT>;
  const int smem = 2 * probe::Chunk<R>::BYTES + (STAGE_OUT ? probe::Chunk<R>::OUT_BYTES : 0), threads = 128 * RW;
  static int blocks = 0;  // set once per configuration: no host calls between the timer's events and the launch
  if (blocks == 0) {
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    int per_sm = 0, sms = 0;
    cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem);
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, x.get_device());
    blocks = std::min(probe::Chunk<R>::ITEMS, std::max(per_sm, 1) * sms);
    printf("probe R=%d RW=%d MINB=%d: %d blocks an SM, %d blocks\n", R, RW, MINB, per_sm, blocks);
  }
  kernel<<<blocks, threads, smem, c10::cuda::getCurrentCUDAStream()>>>(
      reinterpret_cast<const __nv_bfloat16*>(x.data_ptr()), reinterpret_cast<const __nv_bfloat16*>(w.data_ptr()),
      reinterpret_cast<const __nv_bfloat16*>(b.data_ptr()), reinterpret_cast<__nv_bfloat16*>(y.data_ptr()), parts);
}

void fwd(torch::Tensor x, torch::Tensor w, torch::Tensor b, torch::Tensor y, int64_t r, int64_t rw, int64_t minb, bool stage_out, int64_t parts) {
  TORCH_CHECK(x.is_contiguous() && w.is_contiguous() && y.is_contiguous() && x.scalar_type() == torch::kBFloat16);
  TORCH_CHECK(x.size(0) == 16 && x.size(1) == 3 && x.size(2) == 64 && x.size(3) == 64 && x.size(4) == 64 &&
              w.size(0) == 64 && w.size(2) == 3 && w.size(3) == 3 && w.size(4) == 3, "the probe has seed-b's sizes only");
#define PROBE_CASE(R, RW, MINB, S) \
  if (r == R && rw == RW && minb == MINB && stage_out == S) { launch<R, RW, MINB, S>(x, w, b, y, parts); C10_CUDA_KERNEL_LAUNCH_CHECK(); return; }
  PROBE_CASE(16, 1, 2, false)
  PROBE_CASE(4, 1, 3, true) PROBE_CASE(4, 2, 2, true) PROBE_CASE(6, 1, 2, true) PROBE_CASE(6, 2, 2, true)
  PROBE_CASE(8, 1, 1, true) PROBE_CASE(8, 2, 1, true) PROBE_CASE(8, 4, 1, true)
#undef PROBE_CASE
  TORCH_CHECK(false, "no such configuration in the probe");
}
#endif
