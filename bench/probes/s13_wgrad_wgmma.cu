// Session 13 probe: the weight gradient of seed-a in bf16 (x 16 x 3 x 64^3, grad_out 16 x 64 x 62x60x58,
// 3x5x7) as warpgroup matrix products (wgmma, sm_90a) per grad_out row.
//
//   dW[co][ci][kd][kh][kw] = sum over (n, od, oh, ow) of dy[n][co][od][oh][ow] * x[n][ci][od + kd][oh + kh][ow + kw]
//
// For one grad_out row (n, od, oh) that is a product with M = 64 channels, N = the 45 input rows
// (kh, ci, kd) that reach it x 8 taps (kw = 7 and a 46th row are padding, dropped at the end), K =
// the row's 58 positions (64, the last 6 zero in A). A (the grad_out row) comes to the warpgroups'
// registers straight from global memory, as pairs of neighbours along ow. B[ow][(r, kw)] =
// x_r[ow + kw]: the Hankel blocks of the forward probe (s13_fwd_wgmma.cu), read the other way: a
// block (8 taps x 8 positions) is the core matrix of a K-major B with K = positions, so LBO (K) is
// the block stride and SBO (N) the row stride. Two warpgroups split N (rows 0-22 and 23-45: N = 184
// each, 92 accumulators a thread) and accumulate over every grad_out row their block owns; at the
// end each block writes its partial sums (fp32), and a second kernel adds the blocks' partials in a
// fixed order (deterministic) into dW (fp32).
//
// A block owns chunks of R = 4 grad_out rows (n, od, oh0 .. oh0 + 3) in turn. The chunk's x rows
// ((R + 4) x 9) are built into one of two Hankel buffers while the other chunk's last row's wgmmas
// run (loads and stores both after those wgmmas are issued: held longer, the loads' registers made
// ptxas move the accumulators and serialize the wgmmas, C7515). A grad_out row's A registers (16 a
// thread, a set per row of the chunk) are loaded DIST rows ahead, each after a wait for every wgmma of
// the thread: with one group left in flight (wait 1) ptxas serialized the wgmmas (C7513).
// A diagnostic, not a template: its sizes are seed-a's.
#include <cuda.h>
#include <cuda_bf16.h>
#include <cstdint>

namespace probe {

constexpr int CI = 3, D = 64, H = 64, W = 64, CO = 64, KD = 3, KH = 5, KW = 7;
constexpr int OD = D - KD + 1, OH = H - KH + 1, OW = W - KW + 1;  // 62, 60, 58
constexpr int PER_IH = CI * KD;                  // staged rows of one ih
constexpr int NROWS_WG = 23;                     // input rows of N a warpgroup takes (the second's last is padding)
constexpr int NW = NROWS_WG * 8;                 // N of a warpgroup's wgmma: 184
constexpr int NACC = NW / 2;                     // 92 accumulators a thread
constexpr int R = 4;
constexpr int CM = 144, RS = 8 * CM;             // Hankel block stride and row stride (bytes)
constexpr int ROWS = (R + KH - 1) * PER_IH;      // 72 staged rows a chunk
constexpr int HANKEL = (ROWS + 1) * RS;          // + a zero row
constexpr int SMEM = 2 * HANKEL;
constexpr int CHUNKS_H = OH / R;                 // 15
constexpr int ITEMS = ROWS * 8;                  // (row, block) pairs a chunk
constexpr int THREADS = 256;
constexpr int PER = (ITEMS + THREADS - 1) / THREADS;  // 3
constexpr int NPART = 2 * NW;                    // partial sums a channel: 368 (46 rows x 8 taps)

__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void wg_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" :: "n"(N) : "memory");
}
__device__ __forceinline__ void keep(float (&d)[NACC]) {
#pragma unroll
  for (int i = 0; i < NACC; ++i) asm volatile("" : "+f"(d[i]) :: "memory");
}
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
__device__ __forceinline__ void sts128(uint32_t addr, uint32_t a, uint32_t b, uint32_t c, uint32_t d) {
  asm volatile("st.shared.v4.b32 [%0], {%1, %2, %3, %4};\n" :: "r"(addr), "r"(a), "r"(b), "r"(c), "r"(d) : "memory");
}

// d += A (64 x 16, this thread's fragment) x B (16 x 184 by descriptor)
__device__ __forceinline__ void wgmma184(float (&d)[NACC], const uint32_t (&a)[4], uint64_t desc) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n184k16.f32.bf16.bf16 "
      "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,"
      "%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,"
      "%58,%59,%60,%61,%62,%63,%64,%65,%66,%67,%68,%69,%70,%71,%72,%73,%74,%75,%76,%77,%78,%79,%80,%81,%82,%83,%84,%85,"
      "%86,%87,%88,%89,%90,%91}, {%92,%93,%94,%95}, %96, p, 1, 1, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]),
        "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]),
        "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]),
        "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]),
        "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]),
        "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]),
        "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]),
        "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]),
        "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), "+f"(d[72]),
        "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]),
        "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]),
        "+f"(d[89]), "+f"(d[90]), "+f"(d[91])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc));
}

struct Chunk {
  int n, od, oh0;
  __device__ Chunk(int c) : n(c / CHUNKS_H / OD), od(c / CHUNKS_H % OD), oh0(c % CHUNKS_H * R) {}
};

// This thread's A fragments of grad_out row (n, od, oh): channel 16 warp + g (+ 8), positions 16 s + 2 t (+ 1) (+ 8);
// zero past OW.
__device__ __forceinline__ void load_a(uint32_t (&a)[4][4], const __nv_bfloat16* __restrict__ dy, int n, int od, int oh,
                                       int wq, int g, int t) {
  const __nv_bfloat16* row = dy + ((size_t(n) * CO + 16 * wq + g) * OD + od) * (OH * OW) + oh * OW;
#pragma unroll
  for (int s = 0; s < 4; ++s)
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int pos = 16 * s + 2 * t + 8 * (q >> 1);
      a[s][q] = pos < OW ? __ldg(reinterpret_cast<const unsigned int*>(row + 8 * (q & 1) * (OD * OH * OW) + pos)) : 0u;
    }
}

__device__ __forceinline__ void load_x(uint4 (&v0)[PER], uint4 (&v1)[PER], const __nv_bfloat16* __restrict__ x, const Chunk& c) {
#pragma unroll
  for (int k = 0; k < PER; ++k) {
    const int it = threadIdx.x + THREADS * k, j = it >> 3, b = it & 7;
    v0[k] = v1[k] = make_uint4(0, 0, 0, 0);
    if (it < ITEMS) {
      const int ih = c.oh0 + j / PER_IH, ci = (j % PER_IH) / KD, id = c.od + j % KD;
      const uint4* row = reinterpret_cast<const uint4*>(x + (((size_t(c.n) * CI + ci) * D + id) * H + ih) * W);
      v0[k] = __ldg(row + b);
      if (b < 7) v1[k] = __ldg(row + b + 1);
    }
  }
}

__device__ __forceinline__ void store_hankel(uint32_t buf, const uint4 (&v0)[PER], const uint4 (&v1)[PER]) {
#pragma unroll
  for (int k = 0; k < PER; ++k) {
    const int it = threadIdx.x + THREADS * k, j = it >> 3, b = it & 7;
    if (it < ITEMS) {
      const uint32_t e[8] = {v0[k].x, v0[k].y, v0[k].z, v0[k].w, v1[k].x, v1[k].y, v1[k].z, v1[k].w};
      const uint32_t blk = buf + j * RS + b * CM;
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        sts128(blk + 32 * q, e[q], e[q + 1], e[q + 2], e[q + 3]);
        sts128(blk + 32 * q + 16, __byte_perm(e[q], e[q + 1], 0x5432), __byte_perm(e[q + 1], e[q + 2], 0x5432),
               __byte_perm(e[q + 2], e[q + 3], 0x5432), __byte_perm(e[q + 3], e[q + 4], 0x5432));
      }
    }
  }
}

// parts (timing diagnostics; partials unchecked when set): 1 leaves out the Hankel stores, 2 loads every row's A
// from the block's first row (cache hits: what the grad_out stream's latency costs). (A flag around the
// wgmmas made ptxas serialize them, C7513, so the probe has none.)
template <int DIST>  // rows ahead that A is loaded: 2 or 3 (R = 4 register sets either way)
__global__ void __launch_bounds__(THREADS, 1)
wgrad_wgmma(const __nv_bfloat16* __restrict__ x, const __nv_bfloat16* __restrict__ dy, float* __restrict__ partial,
            int n_batch, int parts) {
  extern __shared__ __align__(128) unsigned char smem[];
  const uint32_t base = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  const int tid = threadIdx.x, wg = tid / 128, wq = tid / 32 % 4, lane = tid % 32, g = lane / 4, t = lane % 4;
  for (int i = tid; i < RS / 16; i += THREADS) {  // the zero row after each buffer's staged rows
    sts128(base + ROWS * RS + 16 * i, 0, 0, 0, 0);
    sts128(base + HANKEL + ROWS * RS + 16 * i, 0, 0, 0, 0);
  }
  // B descriptors: LBO = the next block of positions (K), SBO = the next input row (N), no swizzle
  const uint64_t desc_base = (uint64_t(CM >> 4) << 16) | (uint64_t(RS >> 4) << 32);
  float acc[NACC];
#pragma unroll
  for (int i = 0; i < NACC; ++i) acc[i] = 0.f;

  const int chunks = n_batch * OD * CHUNKS_H;
  int c = blockIdx.x;
  const int first_n = Chunk(c).n, first_od = Chunk(c).od, first_oh = Chunk(c).oh0;
  uint4 v0[PER], v1[PER];
  uint32_t a[R][4][4];  // row ol's A in set ol; rows two ahead load while a row's wgmmas run
  if (c < chunks) {
    const Chunk first(c);
    load_x(v0, v1, x, first);
    store_hankel(base, v0, v1);
#pragma unroll
    for (int r = 0; r < DIST; ++r) load_a(a[r], dy, first.n, first.od, first.oh0 + r, wq, g, t);
  }
  fence_proxy_async();
  __syncthreads();
  for (int it = 0; c < chunks; ++it, c += gridDim.x) {
    const bool more = c + gridDim.x < chunks;
    const Chunk cur(c), next(more ? c + gridDim.x : c);
    const uint32_t buf = base + (it & 1) * HANKEL, other = base + ((it + 1) & 1) * HANKEL;
#pragma unroll
    for (int ol = 0; ol < R; ++ol) {
      wg_fence();
      const uint64_t desc = desc_base | uint64_t(((buf + (PER_IH * ol + NROWS_WG * wg) * RS) & 0x3FFFF) >> 4);
#pragma unroll
      for (int s = 0; s < 4; ++s) wgmma184(acc, a[ol][s], desc + uint64_t((2 * s * CM) >> 4));
      wg_commit();
      if (ol == R - 1) {  // the next chunk's blocks, while this chunk's last row's wgmmas run
        load_x(v0, v1, x, next);
        if (!(parts & 1)) store_hankel(other, v0, v1);
      }
      wg_wait<0>();  // every wgmma of this thread is done: A registers may be written (a deeper wait serializes)
      if (ol + DIST < R || more) {
        const bool here = ol + DIST < R, fixed = parts & 2;
        load_a(a[(ol + DIST) % R], dy, fixed ? first_n : here ? cur.n : next.n, fixed ? first_od : here ? cur.od : next.od,
               fixed ? first_oh : (here ? cur.oh0 : next.oh0) + (ol + DIST) % R, wq, g, t);
      }
    }
    fence_proxy_async();
    __syncthreads();  // the next chunk's blocks are in
  }
  wg_wait<0>();
  keep(acc);
  // This block's partial sums: channel 16 wq + g (+ 8), N position 184 wg + 8 q + 2 t (+ 1).
  float* out = partial + size_t(blockIdx.x) * CO * NPART;
#pragma unroll
  for (int q = 0; q < NW / 8; ++q)
#pragma unroll
    for (int h = 0; h < 2; ++h)
      *reinterpret_cast<float2*>(out + (16 * wq + g + 8 * h) * NPART + NW * wg + 8 * q + 2 * t) =
          make_float2(acc[4 * q + 2 * h], acc[4 * q + 2 * h + 1]);
}

// The same product with A from shared memory as well (run 3): both operands by descriptor, so no
// register of a wgmma is written while a group is in flight, and one group per warpgroup stays in
// flight over the next row's issue. The grad_out rows come by cp.async (4-byte pieces: a chunk's rows
// start 116 bytes apart) into a ring of S slots, a row's slot written S - 2 rows ahead; a slot holds
// the core matrices of a K-major A (8 channels x 8 positions, 128 bytes), channel blocks 128 bytes
// apart (SBO) and position blocks 1040 (LBO: 16 bytes of padding put a warp's 4-byte pieces of one
// channel's row on distinct banks). Positions 58-63 stay zero from the start.
constexpr int A_LBO = 1040;                    // bytes from one 8-position block of a slot to the next
constexpr int SLOT = 8 * A_LBO;                // one grad_out row, 64 channels x 64 positions
template <int S> constexpr int smem_ss() { return 2 * HANKEL + S * SLOT; }  // S row slots

__device__ __forceinline__ void wgmma184_ss(float (&d)[NACC], uint64_t desc_a, uint64_t desc_b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n184k16.f32.bf16.bf16 "
      "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,"
      "%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,"
      "%58,%59,%60,%61,%62,%63,%64,%65,%66,%67,%68,%69,%70,%71,%72,%73,%74,%75,%76,%77,%78,%79,%80,%81,%82,%83,%84,%85,"
      "%86,%87,%88,%89,%90,%91}, %92, %93, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]),
        "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]),
        "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]),
        "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]),
        "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]),
        "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]),
        "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]),
        "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]),
        "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), "+f"(d[72]),
        "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]),
        "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]),
        "+f"(d[89]), "+f"(d[90]), "+f"(d[91])
      : "l"(desc_a), "l"(desc_b));
}
__device__ __forceinline__ void cp_async4(uint32_t dst, const void* src) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" :: "r"(dst), "l"(src) : "memory");
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_wait() { asm volatile("cp.async.wait_group %0;\n" :: "n"(N) : "memory"); }

// Grad_out row oh of (n, od) into a slot: warp w copies channels w, w + 8, ..., lane l the pair of positions 2 l (l < 29).
__device__ __forceinline__ void fetch_row(uint32_t slot, const __nv_bfloat16* __restrict__ dy, int n, int od, int oh) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane >= OW / 2) return;
#pragma unroll
  for (int k = 0; k < CO / (THREADS / 32); ++k) {
    const int co = warp + (THREADS / 32) * k;
    cp_async4(slot + (lane / 4) * A_LBO + (co / 8) * 128 + (co % 8) * 16 + (lane % 4) * 4,
              dy + ((size_t(n) * CO + co) * OD + od) * (OH * OW) + oh * OW + 2 * lane);
  }
}

// S slots (run 4: 4 or 5): grad_out row q goes to slot q % S and is fetched S - 2 rows ahead. parts 2 fetches
// every row from the block's first (cache hits; unchecked).
template <int S>
__global__ void __launch_bounds__(THREADS, 1)
wgrad_wgmma_ss(const __nv_bfloat16* __restrict__ x, const __nv_bfloat16* __restrict__ dy, float* __restrict__ partial,
               int n_batch, int parts) {
  extern __shared__ __align__(128) unsigned char smem[];
  const uint32_t base = static_cast<uint32_t>(__cvta_generic_to_shared(smem)), slots = base + 2 * HANKEL;
  const int tid = threadIdx.x, wg = tid / 128, wq = tid / 32 % 4, lane = tid % 32, g = lane / 4, t = lane % 4;
  for (int i = tid; i < RS / 16; i += THREADS) {
    sts128(base + ROWS * RS + 16 * i, 0, 0, 0, 0);
    sts128(base + HANKEL + ROWS * RS + 16 * i, 0, 0, 0, 0);
  }
  for (int i = tid; i < S * SLOT / 16; i += THREADS) sts128(slots + 16 * i, 0, 0, 0, 0);
  __syncthreads();  // the slots' zeros before any copy into them
  const uint64_t desc_b0 = (uint64_t(CM >> 4) << 16) | (uint64_t(RS >> 4) << 32);
  const uint64_t desc_a0 = (uint64_t(A_LBO >> 4) << 16) | (uint64_t(128 >> 4) << 32);
  float acc[NACC];
#pragma unroll
  for (int i = 0; i < NACC; ++i) acc[i] = 0.f;

  const int chunks = n_batch * OD * CHUNKS_H;
  int c = blockIdx.x;
  uint4 v0[PER], v1[PER];
  if (c < chunks) {
    const Chunk first(c);
    load_x(v0, v1, x, first);
    store_hankel(base, v0, v1);
#pragma unroll
    for (int r = 0; r < S - 2; ++r) {
      fetch_row(slots + r * SLOT, dy, first.n, first.od, first.oh0 + r);
      cp_commit();
    }
  }
  const int n0 = Chunk(c).n, od0 = Chunk(c).od, oh00 = Chunk(c).oh0;
  for (int it = 0; c < chunks; ++it, c += gridDim.x) {
    const bool more = c + gridDim.x < chunks;
    const Chunk cur(c), next(more ? c + gridDim.x : c);
    const uint32_t buf = base + (it & 1) * HANKEL, other = base + ((it + 1) & 1) * HANKEL;
#pragma unroll
    for (int ol = 0; ol < R; ++ol) {
      const int q = it * R + ol;  // the block's row count
      cp_wait<S - 3>();     // this thread's copies of row q are in (the S - 3 rows after it may not be)
      fence_proxy_async();  // they, and the chunk's blocks, are read next by the tensor cores
      __syncthreads();      // every thread's; and both warpgroups are past row q - 1's wait: row q - 2's slot is free
      const uint32_t fetch_slot = slots + ((q + S - 2) % S) * SLOT;
      if (parts & 2) fetch_row(fetch_slot, dy, n0, od0, oh00);
      else if (ol + S - 2 < R) fetch_row(fetch_slot, dy, cur.n, cur.od, cur.oh0 + ol + S - 2);
      else if (more) fetch_row(fetch_slot, dy, next.n, next.od, next.oh0 + ol + S - 2 - R);
      cp_commit();
      wg_fence();
      const uint64_t db = desc_b0 | uint64_t(((buf + (PER_IH * ol + NROWS_WG * wg) * RS) & 0x3FFFF) >> 4);
      const uint64_t da = desc_a0 | uint64_t(((slots + (q % S) * SLOT) & 0x3FFFF) >> 4);
#pragma unroll
      for (int s = 0; s < 4; ++s) wgmma184_ss(acc, da + uint64_t((2 * s * A_LBO) >> 4), db + uint64_t((2 * s * CM) >> 4));
      wg_commit();
      wg_wait<1>();  // row ol - 1's wgmmas are done (this warpgroup's)
      if (ol == R - 1) {  // the next chunk's blocks, while this chunk's last row's wgmmas run
        load_x(v0, v1, x, next);
        store_hankel(other, v0, v1);
      }
    }
  }
  wg_wait<0>();
  keep(acc);
  float* out = partial + size_t(blockIdx.x) * CO * NPART;
#pragma unroll
  for (int q = 0; q < NW / 8; ++q)
#pragma unroll
    for (int h = 0; h < 2; ++h)
      *reinterpret_cast<float2*>(out + (16 * wq + g + 8 * h) * NPART + NW * wg + 8 * q + 2 * t) =
          make_float2(acc[4 * q + 2 * h], acc[4 * q + 2 * h + 1]);
}

// Session 14 (run 5): the grad_out stream by bulk copies. A chunk's 4 rows of one channel are 464 contiguous,
// 16-byte-aligned bytes, so each chunk arrives as 64 bulk copies (cp.async.bulk, completed on an mbarrier) into
// one of two staging buffers, issued two chunk-halves before it is needed; each row is then regrouped from the
// staging buffer into its core-matrix slot with 32-bit shared loads and stores, two rows ahead (warp w: channels
// w + 8 k; lane l < 29: the pair of positions 2 l). The shared memory that the staging takes is won back by
// building the Hankel blocks of half a chunk at a time (2 grad_out rows: 54 staged rows, 63 KB a buffer).
constexpr int HR = 2;                                      // grad_out rows a Hankel buffer serves
constexpr int HROWS = (HR + KH - 1) * PER_IH;              // 54 staged rows
constexpr int HANKEL2 = (HROWS + 1) * RS;                  // + a zero row: 63360 bytes
constexpr int HITEMS = HROWS * 8;
constexpr int HPER = (HITEMS + THREADS - 1) / THREADS;     // 2
constexpr int CHUNK_CH = R * OW * 2;                       // 464 bytes: a channel's 4 rows
constexpr int STAGE = CO * CHUNK_CH;                       // 29696 bytes
constexpr int BULK_SLOTS = 4;
constexpr int SLOTS_AT = 2 * HANKEL2, STAGE_AT = SLOTS_AT + BULK_SLOTS * SLOT, BAR_AT = STAGE_AT + 2 * STAGE;
constexpr int SMEM_BULK = BAR_AT + 16, SMEM_BULK5 = SMEM_BULK + SLOT;
static_assert(SMEM_BULK5 <= 232448, "over the 227 KB a block may have");
static_assert(CHUNK_CH % 16 == 0 && (OH * OW * 2) % 16 == 0 && OH % R == 0, "bulk copies need 16-byte pieces");

__device__ __forceinline__ void load_x_half(uint4 (&v0)[HPER], uint4 (&v1)[HPER], const __nv_bfloat16* __restrict__ x,
                                            int n, int od, int ih0) {
#pragma unroll
  for (int k = 0; k < HPER; ++k) {
    const int it = threadIdx.x + THREADS * k, j = it >> 3, b = it & 7;
    v0[k] = v1[k] = make_uint4(0, 0, 0, 0);
    if (it < HITEMS) {
      const int ih = ih0 + j / PER_IH, ci = (j % PER_IH) / KD, id = od + j % KD;
      const uint4* row = reinterpret_cast<const uint4*>(x + (((size_t(n) * CI + ci) * D + id) * H + ih) * W);
      v0[k] = __ldg(row + b);
      if (b < 7) v1[k] = __ldg(row + b + 1);
    }
  }
}

__device__ __forceinline__ void store_hankel_half(uint32_t buf, const uint4 (&v0)[HPER], const uint4 (&v1)[HPER]) {
#pragma unroll
  for (int k = 0; k < HPER; ++k) {
    const int it = threadIdx.x + THREADS * k, j = it >> 3, b = it & 7;
    if (it < HITEMS) {
      const uint32_t e[8] = {v0[k].x, v0[k].y, v0[k].z, v0[k].w, v1[k].x, v1[k].y, v1[k].z, v1[k].w};
      const uint32_t blk = buf + j * RS + b * CM;
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        sts128(blk + 32 * q, e[q], e[q + 1], e[q + 2], e[q + 3]);
        sts128(blk + 32 * q + 16, __byte_perm(e[q], e[q + 1], 0x5432), __byte_perm(e[q + 1], e[q + 2], 0x5432),
               __byte_perm(e[q + 2], e[q + 3], 0x5432), __byte_perm(e[q + 3], e[q + 4], 0x5432));
      }
    }
  }
}

__device__ __forceinline__ void mbar_init(uint32_t bar) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n" :: "r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_expect(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" :: "r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  asm volatile(
      "{\n.reg .pred done;\nwait_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra wait_%=;\n}\n" :: "r"(bar), "r"(parity) : "memory");
}
__device__ __forceinline__ void bulk_copy(uint32_t dst, const void* src, uint32_t bytes, uint32_t bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n"
               :: "r"(dst), "l"(src), "r"(bytes), "r"(bar) : "memory");
}
__device__ __forceinline__ uint32_t lds32(uint32_t addr) {
  uint32_t v;
  asm volatile("ld.shared.b32 %0, [%1];\n" : "=r"(v) : "r"(addr) : "memory");
  return v;
}
__device__ __forceinline__ void sts32(uint32_t addr, uint32_t v) {
  asm volatile("st.shared.b32 [%0], %1;\n" :: "r"(addr), "r"(v) : "memory");
}

// Chunk c's grad_out (64 channels x 4 rows) into a staging buffer: by warp 0 alone (each lane two channels), or
// (SPREAD) by lanes 0-7 of every warp; the expected bytes were set on the mbarrier before the barrier that
// precedes this call. (A bulk copy takes uniform operands: per-lane addresses make ptxas loop over the lanes.)
template <bool SPREAD>
__device__ __forceinline__ void fetch_chunk(uint32_t stage, uint32_t bar, const __nv_bfloat16* __restrict__ dy, const Chunk& c) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (SPREAD ? lane < 8 : warp == 0)
#pragma unroll
    for (int k = 0; k < (SPREAD ? 1 : CO / 32); ++k) {
      const int co = SPREAD ? warp * 8 + lane : lane + 32 * k;
      bulk_copy(stage + co * CHUNK_CH, dy + ((size_t(c.n) * CO + co) * OD + c.od) * (OH * OW) + c.oh0 * OW, CHUNK_CH, bar);
    }
}

// Row r of a staged chunk into a slot (the core matrices of a K-major A); positions 58-63 stay zero.
__device__ __forceinline__ void regroup_row(uint32_t slot, uint32_t stage, int r) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane >= OW / 2) return;
  uint32_t v[CO / (THREADS / 32)];  // all loads first, then all stores
#pragma unroll
  for (int k = 0; k < CO / (THREADS / 32); ++k) v[k] = lds32(stage + (warp + (THREADS / 32) * k) * CHUNK_CH + r * (OW * 2) + 4 * lane);
#pragma unroll
  for (int k = 0; k < CO / (THREADS / 32); ++k) {
    const int co = warp + (THREADS / 32) * k;
    sts32(slot + (lane / 4) * A_LBO + (co / 8) * 128 + (co % 8) * 16 + (lane % 4) * 4, v[k]);
  }
}

// V (run 6): bit 0 spreads the bulk copies over the 8 warps; bit 1 loads the x rows of the next Hankel half one
// row before they are stored; bit 2 (run 9) issues the copies after the row's wgmmas, not before; bit 3 (run 11)
// regroups two rows at a time at rows 0 and 2 of a chunk, the rows that store no Hankel blocks (5 slots). parts (timing diagnostics, unchecked): 1 leaves out the Hankel stores, 2 copies
// every chunk from the block's first (L2 hits), 4 leaves out the regroup.
template <int V>
__global__ void __launch_bounds__(THREADS, 1)
wgrad_wgmma_bulk(const __nv_bfloat16* __restrict__ x, const __nv_bfloat16* __restrict__ dy, float* __restrict__ partial,
                 int n_batch, int parts) {
  constexpr bool SPREAD = V & 1, EARLY = V & 2, LATE = V & 4, PAIRS = V & 8;
  constexpr int NS = PAIRS ? 5 : BULK_SLOTS;  // row slots
  constexpr int STAGE_AT_V = SLOTS_AT + NS * SLOT, BAR_AT_V = STAGE_AT_V + 2 * STAGE;
  extern __shared__ __align__(128) unsigned char smem[];
  const uint32_t base = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  const uint32_t slots = base + SLOTS_AT, stage0 = base + STAGE_AT_V, bar0 = base + BAR_AT_V;
  const int tid = threadIdx.x, wg = tid / 128, warp = tid / 32;
  for (int i = tid; i < RS / 16; i += THREADS) {
    sts128(base + HROWS * RS + 16 * i, 0, 0, 0, 0);
    sts128(base + HANKEL2 + HROWS * RS + 16 * i, 0, 0, 0, 0);
  }
  for (int i = tid; i < NS * SLOT / 16; i += THREADS) sts128(slots + 16 * i, 0, 0, 0, 0);
  const int chunks = n_batch * OD * CHUNKS_H;
  int c = blockIdx.x;
  if (tid == 0) {
    mbar_init(bar0);
    mbar_init(bar0 + 8);
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    if (c < chunks) mbar_expect(bar0, STAGE);
    if (c + gridDim.x < chunks) mbar_expect(bar0 + 8, STAGE);
  }
  fence_proxy_async();
  __syncthreads();
  const uint64_t desc_b0 = (uint64_t(CM >> 4) << 16) | (uint64_t(RS >> 4) << 32);
  const uint64_t desc_a0 = (uint64_t(A_LBO >> 4) << 16) | (uint64_t(128 >> 4) << 32);
  float acc[NACC];
#pragma unroll
  for (int i = 0; i < NACC; ++i) acc[i] = 0.f;

  const Chunk origin(c < chunks ? c : 0);
  auto source = [&](int chunk) { return parts & 2 ? origin : Chunk(chunk); };
  uint4 v0[HPER], v1[HPER];
  if (c < chunks) {
    fetch_chunk<SPREAD>(stage0, bar0, dy, source(c));
    if (c + gridDim.x < chunks) fetch_chunk<SPREAD>(stage0 + STAGE, bar0 + 8, dy, source(c + gridDim.x));
    const Chunk first(c);
    load_x_half(v0, v1, x, first.n, first.od, first.oh0);
    store_hankel_half(base, v0, v1);
    mbar_wait(bar0, 0);
    regroup_row(slots, stage0, 0);
    regroup_row(slots + SLOT, stage0, 1);
  }
  for (int it = 0; c < chunks; ++it, c += gridDim.x) {
    const bool more = c + gridDim.x < chunks, again = c + 2 * gridDim.x < chunks;
    const Chunk cur(c), next(more ? c + gridDim.x : c);
    const uint32_t stage = stage0 + (it & 1) * STAGE, stage_next = stage0 + ((it + 1) & 1) * STAGE;
#pragma unroll
    for (int ol = 0; ol < R; ++ol) {
      const int q = it * R + ol;
      if (ol == 1 && tid == 0 && again) mbar_expect(bar0 + 8 * (it & 1), STAGE);  // for the copies after the barrier
      fence_proxy_async();  // this thread's regrouped rows and Hankel blocks are read next by the tensor cores
      __syncthreads();      // everyone's; both warpgroups are past row q - 1's wait, so row q - 2's slot is free
      if (!LATE && ol == 2 && again)  // this chunk's staging was last read at row 1
        fetch_chunk<SPREAD>(stage, bar0 + 8 * (it & 1), dy, source(c + 2 * gridDim.x));
      wg_fence();
      const uint64_t db = desc_b0 | uint64_t(((base + (ol / HR) * HANKEL2 + (PER_IH * (ol % HR) + NROWS_WG * wg) * RS) & 0x3FFFF) >> 4);
      const uint64_t da = desc_a0 | uint64_t(((slots + (q % NS) * SLOT) & 0x3FFFF) >> 4);
#pragma unroll
      for (int s = 0; s < 4; ++s) wgmma184_ss(acc, da + uint64_t((2 * s * A_LBO) >> 4), db + uint64_t((2 * s * CM) >> 4));
      wg_commit();
      if (LATE && ol == 2 && again) fetch_chunk<SPREAD>(stage, bar0 + 8 * (it & 1), dy, source(c + 2 * gridDim.x));
      wg_wait<1>();  // row q - 1's wgmmas are done (this warpgroup's)
      const uint32_t fill = slots + ((q + 2) % NS) * SLOT;
      if (parts & 4) {
      } else if (PAIRS) {  // rows q + 2 and q + 3 at rows 0 and 2 (the rows that store no Hankel blocks)
        if (ol == 0) {
          regroup_row(fill, stage, 2);
          regroup_row(slots + ((q + 3) % NS) * SLOT, stage, 3);
        } else if (ol == 2 && more) {
          mbar_wait(bar0 + 8 * ((it + 1) & 1), ((it + 1) >> 1) & 1);
          regroup_row(fill, stage_next, 0);
          regroup_row(slots + ((q + 3) % NS) * SLOT, stage_next, 1);
        }
      } else if (ol + 2 < R) regroup_row(fill, stage, ol + 2);
      else if (more) {
        if (ol == 2) mbar_wait(bar0 + 8 * ((it + 1) & 1), ((it + 1) >> 1) & 1);
        regroup_row(fill, stage_next, ol - 2);
      }
      // the second half's blocks go into the buffer rows 2-3 of the last chunk read (stored at row 1), the next
      // chunk's first half into the one rows 0-1 read (stored at row 3); EARLY loads them a row before
      if (ol == (EARLY ? 0 : 1)) load_x_half(v0, v1, x, cur.n, cur.od, cur.oh0 + HR);
      if (ol == (EARLY ? 2 : 3) && more) load_x_half(v0, v1, x, next.n, next.od, next.oh0);
      if (!(parts & 1) && (ol == 1 || (ol == 3 && more))) store_hankel_half(base + (ol == 1) * HANKEL2, v0, v1);
    }
  }
  wg_wait<0>();
  keep(acc);
  const int wq = tid / 32 % 4, lane = tid % 32, g = lane / 4, t = lane % 4;
  float* out = partial + size_t(blockIdx.x) * CO * NPART;
#pragma unroll
  for (int q = 0; q < NW / 8; ++q)
#pragma unroll
    for (int h = 0; h < 2; ++h)
      *reinterpret_cast<float2*>(out + (16 * wq + g + 8 * h) * NPART + NW * wg + 8 * q + 2 * t) =
          make_float2(acc[4 * q + 2 * h], acc[4 * q + 2 * h + 1]);
}

// Run 7: the same buffers with the work split by warpgroup. Warpgroups 0 and 1 only issue wgmmas; warpgroup 2
// (the producer) asks for the grad_out chunks, regroups their rows into the slots and builds the Hankel halves,
// so none of that waits in the consumers' row. Named barriers hand each slot and each Hankel buffer back and
// forth: FULL (the producer's 128 threads arrive, the consumers' 256 wait) and EMPTY (the other way). Each
// producer warp owns channels w + 4 k of the staging buffers, with its own mbarrier per buffer, so a warp
// reuses a buffer after its own reads alone.
constexpr int THREADS_WS = 384;
constexpr int BAR_FULL = 1, BAR_EMPTY = 5, BAR_FULL_H = 9, BAR_EMPTY_H = 11;  // + slot (4) or Hankel buffer (2)
constexpr int HPER_WS = (HITEMS + 127) / 128;  // 4 (items of a Hankel half a producer thread builds)
constexpr int SMEM_WS = BAR_AT + 64;            // 8 mbarriers
static_assert(SMEM_WS <= 232448, "over the 227 KB a block may have");

__device__ __forceinline__ void bar_sync(int id) { asm volatile("bar.sync %0, 384;\n" :: "r"(id) : "memory"); }
__device__ __forceinline__ void bar_arrive(int id) { asm volatile("bar.arrive %0, 384;\n" :: "r"(id) : "memory"); }

template <int PRODUCERS>  // 1 (run 7): one warpgroup copies, regroups and builds the Hankel halves; 2 (run 10): one
                          // copies and regroups, another builds the Hankel halves (registers moved by setmaxnreg)
__global__ void __launch_bounds__(128 * (2 + PRODUCERS), 1)
wgrad_wgmma_ws(const __nv_bfloat16* __restrict__ x, const __nv_bfloat16* __restrict__ dy, float* __restrict__ partial,
               int n_batch, int parts) {
  extern __shared__ __align__(128) unsigned char smem[];
  const uint32_t base = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  const uint32_t slots = base + SLOTS_AT, stage0 = base + STAGE_AT, bar0 = base + BAR_AT;
  const int tid = threadIdx.x, wg = tid / 128, warp = tid / 32, lane = tid % 32;
  for (int i = tid; i < RS / 16; i += blockDim.x) {
    sts128(base + HROWS * RS + 16 * i, 0, 0, 0, 0);
    sts128(base + HANKEL2 + HROWS * RS + 16 * i, 0, 0, 0, 0);
  }
  for (int i = tid; i < BULK_SLOTS * SLOT / 16; i += blockDim.x) sts128(slots + 16 * i, 0, 0, 0, 0);
  if (tid == 0) {
    for (int i = 0; i < 8; ++i) mbar_init(bar0 + 8 * i);
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  fence_proxy_async();
  __syncthreads();
  const int chunks = n_batch * OD * CHUNKS_H;
  const int G = gridDim.x, nc = blockIdx.x < chunks ? (chunks - blockIdx.x + G - 1) / G : 0;
  auto chunk_of = [&](int it) { return Chunk(parts & 2 ? blockIdx.x : blockIdx.x + it * G); };

  if (wg >= 2) {  // the producers
    if (PRODUCERS == 2) asm volatile("setmaxnreg.dec.sync.aligned.u32 72;\n" ::: "memory");
    const bool rows = PRODUCERS == 1 || wg == 2, blocks = PRODUCERS == 1 || wg == 3;
    const int pw = warp % 4, ptid = tid % 128;
    auto fetch = [&](int it) {  // this warp's 16 channels of chunk it into staging buffer it % 2
      const uint32_t bar = bar0 + 8 * (4 * (it & 1) + pw), stage = stage0 + (it & 1) * STAGE;
      const Chunk c = chunk_of(it);
      if (lane == 0) mbar_expect(bar, STAGE / 4);
      __syncwarp();
      if (lane < 16) {
        const int co = pw + 4 * lane;
        bulk_copy(stage + co * CHUNK_CH, dy + ((size_t(c.n) * CO + co) * OD + c.od) * (OH * OW) + c.oh0 * OW, CHUNK_CH, bar);
      }
    };
    if (rows && nc > 0) fetch(0);
    if (rows && nc > 1) fetch(1);
    for (int it = 0; it < nc; ++it) {
      const Chunk cur(blockIdx.x + it * G);
      const uint32_t stage = stage0 + (it & 1) * STAGE;
      for (int h = 0; h < 2; ++h) {
        const int k = 2 * it + h;  // the block's Hankel half count; buffer h
        if (blocks) {
        uint4 v0[HPER_WS], v1[HPER_WS];
#pragma unroll
        for (int i = 0; i < HPER_WS; ++i) {
          const int item = ptid + 128 * i, j = item >> 3, b = item & 7;
          v0[i] = v1[i] = make_uint4(0, 0, 0, 0);
          if (item < HITEMS) {
            const int ih = cur.oh0 + HR * h + j / PER_IH, ci = (j % PER_IH) / KD, id = cur.od + j % KD;
            const uint4* row = reinterpret_cast<const uint4*>(x + (((size_t(cur.n) * CI + ci) * D + id) * H + ih) * W);
            v0[i] = __ldg(row + b);
            if (b < 7) v1[i] = __ldg(row + b + 1);
          }
        }
        if (k >= 2) bar_sync(BAR_EMPTY_H + h);
#pragma unroll
        for (int i = 0; i < HPER_WS; ++i) {
          const int item = ptid + 128 * i, j = item >> 3, b = item & 7;
          if (item < HITEMS) {
            const uint32_t e[8] = {v0[i].x, v0[i].y, v0[i].z, v0[i].w, v1[i].x, v1[i].y, v1[i].z, v1[i].w};
            const uint32_t blk = base + h * HANKEL2 + j * RS + b * CM;
#pragma unroll
            for (int q = 0; q < 4; ++q) {
              sts128(blk + 32 * q, e[q], e[q + 1], e[q + 2], e[q + 3]);
              sts128(blk + 32 * q + 16, __byte_perm(e[q], e[q + 1], 0x5432), __byte_perm(e[q + 1], e[q + 2], 0x5432),
                     __byte_perm(e[q + 2], e[q + 3], 0x5432), __byte_perm(e[q + 3], e[q + 4], 0x5432));
            }
          }
        }
        fence_proxy_async();
        bar_arrive(BAR_FULL_H + h);
        }
        if (!rows) continue;
        if (h == 0) mbar_wait(bar0 + 8 * (4 * (it & 1) + pw), (it >> 1) & 1);  // this warp's channels of the chunk
        for (int r = 2 * h; r < 2 * h + 2; ++r) {
          const int q = 4 * it + r, slot = q % BULK_SLOTS;
          if (q >= BULK_SLOTS) bar_sync(BAR_EMPTY + slot);
          if (lane < OW / 2) {
            uint32_t v[CO / 4];
#pragma unroll
            for (int m = 0; m < CO / 4; ++m) v[m] = lds32(stage + (pw + 4 * m) * CHUNK_CH + r * (OW * 2) + 4 * lane);
#pragma unroll
            for (int m = 0; m < CO / 4; ++m) {
              const int co = pw + 4 * m;
              sts32(slots + slot * SLOT + (lane / 4) * A_LBO + (co / 8) * 128 + (co % 8) * 16 + (lane % 4) * 4, v[m]);
            }
          }
          fence_proxy_async();
          bar_arrive(BAR_FULL + slot);
        }
      }
      if (!rows) continue;
      __syncwarp();
      fence_proxy_async();  // this warp's reads of the buffer come before the copies that overwrite it
      if (it + 2 < nc) fetch(it + 2);
    }
    return;
  }
  if (PRODUCERS == 2) asm volatile("setmaxnreg.inc.sync.aligned.u32 184;\n" ::: "memory");

  // the consumers
  const uint64_t desc_b0 = (uint64_t(CM >> 4) << 16) | (uint64_t(RS >> 4) << 32);
  const uint64_t desc_a0 = (uint64_t(A_LBO >> 4) << 16) | (uint64_t(128 >> 4) << 32);
  float acc[NACC];
#pragma unroll
  for (int i = 0; i < NACC; ++i) acc[i] = 0.f;
  for (int it = 0; it < nc; ++it) {
#pragma unroll
    for (int ol = 0; ol < R; ++ol) {
      const int q = 4 * it + ol;
      if (ol % HR == 0) bar_sync(BAR_FULL_H + ol / HR);
      bar_sync(BAR_FULL + q % BULK_SLOTS);
      wg_fence();
      const uint64_t db = desc_b0 | uint64_t(((base + (ol / HR) * HANKEL2 + (PER_IH * (ol % HR) + NROWS_WG * wg) * RS) & 0x3FFFF) >> 4);
      const uint64_t da = desc_a0 | uint64_t(((slots + (q % BULK_SLOTS) * SLOT) & 0x3FFFF) >> 4);
#pragma unroll
      for (int s = 0; s < 4; ++s) wgmma184_ss(acc, da + uint64_t((2 * s * A_LBO) >> 4), db + uint64_t((2 * s * CM) >> 4));
      wg_commit();
      wg_wait<1>();  // row q - 1's wgmmas are done (this warpgroup's)
      if (q >= 1) {
        bar_arrive(BAR_EMPTY + (q - 1) % BULK_SLOTS);
        if (ol % HR == 0) bar_arrive(BAR_EMPTY_H + (ol / HR + 1) % 2);  // row q - 1 was its half's last
      }
    }
  }
  wg_wait<0>();
  keep(acc);
  const int wq = warp % 4, g = lane / 4, t = lane % 4;
  float* out = partial + size_t(blockIdx.x) * CO * NPART;
#pragma unroll
  for (int q = 0; q < NW / 8; ++q)
#pragma unroll
    for (int h = 0; h < 2; ++h)
      *reinterpret_cast<float2*>(out + (16 * wq + g + 8 * h) * NPART + NW * wg + 8 * q + 2 * t) =
          make_float2(acc[4 * q + 2 * h], acc[4 * q + 2 * h + 1]);
}

// Run 8 (wgrad_wgmma_tma): run 4's schedule (A from shared memory, a ring of S row slots, Hankel blocks of whole
// chunks in two buffers), each grad_out row fetched by the bulk tensor copy engine straight into its slot's
// core-matrix layout. The tensor map sees grad_out as (OH * OW positions, OD, CO, N) (every stride a multiple of
// 16 bytes) and a box is (8 positions, 1, 64 channels, 1): 64 rows of 16 bytes, exactly the 8 core matrices
// of one 8-position block of A (SBO 128, LBO 1024). A row is 8 boxes at flat positions oh * OW + 8 b, issued
// by one thread S - 2 rows ahead, completing on the slot's mbarrier. The last block's positions past OW
// hold the next row's values (or zeros past the tensor's end); the Hankel blocks hold zeros there, so they
// add nothing.
constexpr int TSLOT = 8 * 1024;
template <int S> constexpr int smem_tma() { return 2 * HANKEL + S * TSLOT + 8 * S; }

// Like store_hankel, with the last block's positions past OW (2 of 8) zero.
__device__ __forceinline__ void store_hankel_masked(uint32_t buf, const uint4 (&v0)[PER], const uint4 (&v1)[PER]) {
  static_assert(OW - 56 == 2, "the mask keeps one word of a row of the last block");
#pragma unroll
  for (int k = 0; k < PER; ++k) {
    const int it = threadIdx.x + THREADS * k, j = it >> 3, b = it & 7;
    if (it < ITEMS) {
      const uint32_t e[8] = {v0[k].x, v0[k].y, v0[k].z, v0[k].w, v1[k].x, v1[k].y, v1[k].z, v1[k].w};
      const uint32_t blk = buf + j * RS + b * CM, keep = b < 7 ? 0xFFFFFFFFu : 0u;
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        sts128(blk + 32 * q, e[q], e[q + 1] & keep, e[q + 2] & keep, e[q + 3] & keep);
        sts128(blk + 32 * q + 16, __byte_perm(e[q], e[q + 1], 0x5432), __byte_perm(e[q + 1], e[q + 2], 0x5432) & keep,
               __byte_perm(e[q + 2], e[q + 3], 0x5432) & keep, __byte_perm(e[q + 3], e[q + 4], 0x5432) & keep);
      }
    }
  }
}

__device__ __forceinline__ void tma_box(uint32_t dst, const CUtensorMap* map, int pos, int od, int n, uint32_t bar) {
  asm volatile("cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, %5}], [%6];\n"
               :: "r"(dst), "l"(reinterpret_cast<uint64_t>(map)), "r"(pos), "r"(od), "r"(0), "r"(n), "r"(bar) : "memory");
}

// Thread 0 asks for grad_out row oh of (n, od) into a slot (8 boxes).
__device__ __forceinline__ void fetch_row_tma(uint32_t slot, uint32_t bar, const CUtensorMap* map, int n, int od, int oh) {
  mbar_expect(bar, TSLOT);
#pragma unroll
  for (int b = 0; b < 8; ++b) tma_box(slot + b * 1024, map, oh * OW + 8 * b, od, n, bar);
}

template <int S>
__global__ void __launch_bounds__(THREADS, 1)
wgrad_wgmma_tma(const __grid_constant__ CUtensorMap dy_map, const __nv_bfloat16* __restrict__ x, float* __restrict__ partial,
                int n_batch, int parts) {
  extern __shared__ __align__(128) unsigned char smem[];
  const uint32_t base = static_cast<uint32_t>(__cvta_generic_to_shared(smem)), slots = base + 2 * HANKEL;
  const uint32_t bars = slots + S * TSLOT;
  const int tid = threadIdx.x, wg = tid / 128;
  for (int i = tid; i < RS / 16; i += THREADS) {
    sts128(base + ROWS * RS + 16 * i, 0, 0, 0, 0);
    sts128(base + HANKEL + ROWS * RS + 16 * i, 0, 0, 0, 0);
  }
  if (tid == 0) {
    for (int i = 0; i < S; ++i) mbar_init(bars + 8 * i);
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  const uint64_t desc_b0 = (uint64_t(CM >> 4) << 16) | (uint64_t(RS >> 4) << 32);
  const uint64_t desc_a0 = (uint64_t(1024 >> 4) << 16) | (uint64_t(128 >> 4) << 32);
  float acc[NACC];
#pragma unroll
  for (int i = 0; i < NACC; ++i) acc[i] = 0.f;

  const int chunks = n_batch * OD * CHUNKS_H;
  int c = blockIdx.x;
  const Chunk origin(c < chunks ? c : 0);
  uint4 v0[PER], v1[PER];
  __syncthreads();  // the mbarriers are initialized
  if (c < chunks) {
    const Chunk first(c);
    load_x(v0, v1, x, first);
    store_hankel_masked(base, v0, v1);
    if (tid == 0)
      for (int r = 0; r < S - 2; ++r) fetch_row_tma(slots + r * TSLOT, bars + 8 * r, &dy_map, first.n, first.od, first.oh0 + r);
  }
  for (int it = 0; c < chunks; ++it, c += gridDim.x) {
    const bool more = c + gridDim.x < chunks;
    const Chunk cur(c), next(more ? c + gridDim.x : c);
    const uint32_t buf = base + (it & 1) * HANKEL, other = base + ((it + 1) & 1) * HANKEL;
#pragma unroll
    for (int ol = 0; ol < R; ++ol) {
      const int q = it * R + ol;
      fence_proxy_async();  // the chunk's Hankel blocks are read next by the tensor cores
      __syncthreads();      // and both warpgroups are past row q - 1's wait: row q - 2's slot is free
      if (tid == 0) {
        const int f = (q + S - 2) % S;
        if (parts & 2) fetch_row_tma(slots + f * TSLOT, bars + 8 * f, &dy_map, origin.n, origin.od, origin.oh0);
        else if (ol + S - 2 < R) fetch_row_tma(slots + f * TSLOT, bars + 8 * f, &dy_map, cur.n, cur.od, cur.oh0 + ol + S - 2);
        else if (more) fetch_row_tma(slots + f * TSLOT, bars + 8 * f, &dy_map, next.n, next.od, next.oh0 + ol + S - 2 - R);
      }
      mbar_wait(bars + 8 * (q % S), (q / S) & 1);  // row q is in its slot
      wg_fence();
      const uint64_t db = desc_b0 | uint64_t(((buf + (PER_IH * ol + NROWS_WG * wg) * RS) & 0x3FFFF) >> 4);
      const uint64_t da = desc_a0 | uint64_t(((slots + (q % S) * TSLOT) & 0x3FFFF) >> 4);
#pragma unroll
      for (int s = 0; s < 4; ++s) wgmma184_ss(acc, da + uint64_t((2 * s * 1024) >> 4), db + uint64_t((2 * s * CM) >> 4));
      wg_commit();
      wg_wait<1>();  // row q - 1's wgmmas are done (this warpgroup's)
      if (ol == R - 1) {  // the next chunk's blocks, while this chunk's last row's wgmmas run
        load_x(v0, v1, x, next);
        store_hankel_masked(other, v0, v1);
      }
    }
  }
  wg_wait<0>();
  keep(acc);
  const int wq = tid / 32 % 4, lane = tid % 32, g = lane / 4, t = lane % 4;
  float* out = partial + size_t(blockIdx.x) * CO * NPART;
#pragma unroll
  for (int q = 0; q < NW / 8; ++q)
#pragma unroll
    for (int h = 0; h < 2; ++h)
      *reinterpret_cast<float2*>(out + (16 * wq + g + 8 * h) * NPART + NW * wg + 8 * q + 2 * t) =
          make_float2(acc[4 * q + 2 * h], acc[4 * q + 2 * h + 1]);
}

// dW[co][ci][kd][kh][kw] (fp32) = the blocks' partials added in block order.
__global__ void reduce_partials(const float* __restrict__ partial, int blocks, float* __restrict__ dw) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= CO * CI * KD * KH * KW) return;
  const int kw = i % KW, kh = i / KW % KH, kd = i / (KW * KH) % KD, ci = i / (KW * KH * KD) % CI, co = i / (KW * KH * KD * CI);
  const int n = (kh * PER_IH + ci * KD + kd) * 8 + kw;
  float s = 0.f;
  for (int b = 0; b < blocks; ++b) s += partial[(size_t(b) * CO + co) * NPART + n];
  dw[i] = s;
}

}  // namespace probe

#ifdef PROBE_KERNEL_ONLY  // nvcc alone (no torch), for ptxas's report
template __global__ void probe::wgrad_wgmma<2>(const __nv_bfloat16*, const __nv_bfloat16*, float*, int, int);
template __global__ void probe::wgrad_wgmma<3>(const __nv_bfloat16*, const __nv_bfloat16*, float*, int, int);
template __global__ void probe::wgrad_wgmma_ss<4>(const __nv_bfloat16*, const __nv_bfloat16*, float*, int, int);
template __global__ void probe::wgrad_wgmma_ss<5>(const __nv_bfloat16*, const __nv_bfloat16*, float*, int, int);
template __global__ void probe::wgrad_wgmma_bulk<0>(const __nv_bfloat16*, const __nv_bfloat16*, float*, int, int);
template __global__ void probe::wgrad_wgmma_bulk<1>(const __nv_bfloat16*, const __nv_bfloat16*, float*, int, int);
template __global__ void probe::wgrad_wgmma_bulk<2>(const __nv_bfloat16*, const __nv_bfloat16*, float*, int, int);
template __global__ void probe::wgrad_wgmma_bulk<3>(const __nv_bfloat16*, const __nv_bfloat16*, float*, int, int);
template __global__ void probe::wgrad_wgmma_bulk<7>(const __nv_bfloat16*, const __nv_bfloat16*, float*, int, int);
template __global__ void probe::wgrad_wgmma_bulk<15>(const __nv_bfloat16*, const __nv_bfloat16*, float*, int, int);
template __global__ void probe::wgrad_wgmma_ws<1>(const __nv_bfloat16*, const __nv_bfloat16*, float*, int, int);
template __global__ void probe::wgrad_wgmma_ws<2>(const __nv_bfloat16*, const __nv_bfloat16*, float*, int, int);
template __global__ void probe::wgrad_wgmma_tma<4>(const __grid_constant__ CUtensorMap, const __nv_bfloat16*, float*, int, int);
template __global__ void probe::wgrad_wgmma_tma<5>(const __grid_constant__ CUtensorMap, const __nv_bfloat16*, float*, int, int);
#else
#include <torch/extension.h>
#include <c10/cuda/CUDAStream.h>
#include <cudaTypedefs.h>

// grad_out as (OH * OW, OD, CO, N), boxes of (8, 1, 64, 1), zeros out of bounds
static CUtensorMap dy_tensor_map(const torch::Tensor& dy) {
  static PFN_cuTensorMapEncodeTiled_v12000 encode = nullptr;
  if (!encode) {
    cudaDriverEntryPointQueryResult got;
    TORCH_CHECK(cudaGetDriverEntryPoint("cuTensorMapEncodeTiled", reinterpret_cast<void**>(&encode), cudaEnableDefault, &got) ==
                cudaSuccess && got == cudaDriverEntryPointSuccess, "no cuTensorMapEncodeTiled");
  }
  CUtensorMap map;
  const cuuint64_t dims[4] = {probe::OH * probe::OW, probe::OD, probe::CO, cuuint64_t(dy.size(0))};
  const cuuint64_t strides[3] = {probe::OH * probe::OW * 2, cuuint64_t(probe::OD) * probe::OH * probe::OW * 2,
                                 cuuint64_t(probe::CO) * probe::OD * probe::OH * probe::OW * 2};
  const cuuint32_t box[4] = {8, 1, probe::CO, 1}, elem[4] = {1, 1, 1, 1};
  const CUresult r = encode(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 4, dy.data_ptr(), dims, strides, box, elem,
                            CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_NONE, CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
                            CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  TORCH_CHECK(r == CUDA_SUCCESS, "cuTensorMapEncodeTiled failed: ", int(r));
  return map;
}

void wgrad(torch::Tensor x, torch::Tensor dy, torch::Tensor partial, torch::Tensor dw, int64_t dist, int64_t parts) {
  TORCH_CHECK(x.is_contiguous() && dy.is_contiguous() && x.scalar_type() == torch::kBFloat16 && dy.scalar_type() == torch::kBFloat16);
  TORCH_CHECK(x.size(1) == 3 && x.size(2) == 64 && x.size(3) == 64 && x.size(4) == 64 && dy.size(1) == 64 &&
              dy.size(2) == 62 && dy.size(3) == 60 && dy.size(4) == 58, "the probe has seed-a's sizes only");
  static int blocks = 0;
  if (blocks == 0) {
    cudaFuncSetAttribute(probe::wgrad_wgmma<2>, cudaFuncAttributeMaxDynamicSharedMemorySize, probe::SMEM);
    cudaFuncSetAttribute(probe::wgrad_wgmma<3>, cudaFuncAttributeMaxDynamicSharedMemorySize, probe::SMEM);
    cudaFuncSetAttribute(probe::wgrad_wgmma_ss<4>, cudaFuncAttributeMaxDynamicSharedMemorySize, probe::smem_ss<4>());
    cudaFuncSetAttribute(probe::wgrad_wgmma_ss<5>, cudaFuncAttributeMaxDynamicSharedMemorySize, probe::smem_ss<5>());
    cudaFuncSetAttribute(probe::wgrad_wgmma_bulk<0>, cudaFuncAttributeMaxDynamicSharedMemorySize, probe::SMEM_BULK);
    cudaFuncSetAttribute(probe::wgrad_wgmma_bulk<1>, cudaFuncAttributeMaxDynamicSharedMemorySize, probe::SMEM_BULK);
    cudaFuncSetAttribute(probe::wgrad_wgmma_bulk<2>, cudaFuncAttributeMaxDynamicSharedMemorySize, probe::SMEM_BULK);
    cudaFuncSetAttribute(probe::wgrad_wgmma_bulk<3>, cudaFuncAttributeMaxDynamicSharedMemorySize, probe::SMEM_BULK);
    cudaFuncSetAttribute(probe::wgrad_wgmma_bulk<7>, cudaFuncAttributeMaxDynamicSharedMemorySize, probe::SMEM_BULK);
    cudaFuncSetAttribute(probe::wgrad_wgmma_bulk<15>, cudaFuncAttributeMaxDynamicSharedMemorySize, probe::SMEM_BULK5);
    cudaFuncSetAttribute(probe::wgrad_wgmma_ws<1>, cudaFuncAttributeMaxDynamicSharedMemorySize, probe::SMEM_WS);
    cudaFuncSetAttribute(probe::wgrad_wgmma_ws<2>, cudaFuncAttributeMaxDynamicSharedMemorySize, probe::SMEM_WS);
    cudaFuncSetAttribute(probe::wgrad_wgmma_tma<4>, cudaFuncAttributeMaxDynamicSharedMemorySize, probe::smem_tma<4>());
    cudaFuncSetAttribute(probe::wgrad_wgmma_tma<5>, cudaFuncAttributeMaxDynamicSharedMemorySize, probe::smem_tma<5>());
    cudaDeviceGetAttribute(&blocks, cudaDevAttrMultiProcessorCount, x.get_device());
    printf("probe wgrad: %d B smem, %d blocks\n", probe::SMEM, blocks);
  }
  TORCH_CHECK(partial.numel() >= int64_t(blocks) * probe::CO * probe::NPART && dw.numel() == 64 * 3 * 105);
  auto stream = c10::cuda::getCurrentCUDAStream();
  if (dist == 44 || dist == 45) {  // grad_out rows by the bulk tensor copy engine (wgrad_wgmma_tma<S>, run 8)
    auto kernel = dist == 45 ? probe::wgrad_wgmma_tma<5> : probe::wgrad_wgmma_tma<4>;
    kernel<<<blocks, probe::THREADS, dist == 45 ? probe::smem_tma<5>() : probe::smem_tma<4>(), stream>>>(
        dy_tensor_map(dy), reinterpret_cast<const __nv_bfloat16*>(x.data_ptr()), partial.data_ptr<float>(), int(x.size(0)),
        int(parts));
  } else if (dist == 34 || dist == 35) {  // the work split by warpgroup (wgrad_wgmma_ws<dist - 33>, runs 7 and 10)
    auto kernel = dist == 35 ? probe::wgrad_wgmma_ws<2> : probe::wgrad_wgmma_ws<1>;
    kernel<<<blocks, 128 * (dist - 33 + 2), probe::SMEM_WS, stream>>>(
        reinterpret_cast<const __nv_bfloat16*>(x.data_ptr()), reinterpret_cast<const __nv_bfloat16*>(dy.data_ptr()),
        partial.data_ptr<float>(), int(x.size(0)), int(parts));
  } else if ((dist >= 24 && dist <= 31) || dist == 39) {  // grad_out by bulk copies (wgrad_wgmma_bulk<dist - 24>, runs 5, 6, 9, 11)
    auto kernel = dist == 24 ? probe::wgrad_wgmma_bulk<0> : dist == 25 ? probe::wgrad_wgmma_bulk<1>
                : dist == 26 ? probe::wgrad_wgmma_bulk<2> : dist == 31 ? probe::wgrad_wgmma_bulk<7> : probe::wgrad_wgmma_bulk<3>;
    if (dist == 39) kernel = probe::wgrad_wgmma_bulk<15>;
    kernel<<<blocks, probe::THREADS, dist == 39 ? probe::SMEM_BULK5 : probe::SMEM_BULK, stream>>>(
        reinterpret_cast<const __nv_bfloat16*>(x.data_ptr()), reinterpret_cast<const __nv_bfloat16*>(dy.data_ptr()),
        partial.data_ptr<float>(), int(x.size(0)), int(parts));
  } else if (dist == 14 || dist == 15) {  // A from shared memory too (wgrad_wgmma_ss), 4 or 5 row slots
    auto kernel = dist == 15 ? probe::wgrad_wgmma_ss<5> : probe::wgrad_wgmma_ss<4>;
    kernel<<<blocks, probe::THREADS, dist == 15 ? probe::smem_ss<5>() : probe::smem_ss<4>(), stream>>>(
        reinterpret_cast<const __nv_bfloat16*>(x.data_ptr()), reinterpret_cast<const __nv_bfloat16*>(dy.data_ptr()),
        partial.data_ptr<float>(), int(x.size(0)), int(parts));
  } else {
    auto kernel = dist == 3 ? probe::wgrad_wgmma<3> : probe::wgrad_wgmma<2>;
    kernel<<<blocks, probe::THREADS, probe::SMEM, stream>>>(
        reinterpret_cast<const __nv_bfloat16*>(x.data_ptr()), reinterpret_cast<const __nv_bfloat16*>(dy.data_ptr()),
        partial.data_ptr<float>(), int(x.size(0)), int(parts));
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  probe::reduce_partials<<<(64 * 3 * 105 + 255) / 256, 256, 0, stream>>>(partial.data_ptr<float>(), blocks, dw.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
#endif
