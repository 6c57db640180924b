// Session 10 probe: dgrad (the gradient of the input) of a stride-1 convolution with 3 input and
// 64 output channels, bf16, as a matrix product per grad_out row followed by col2im in shared
// memory, instead of a convolution of grad_out with the flipped weights (N = 3 input channels is
// too narrow for the tensor cores; here M = the 3 x taps (ci, kd, kh, kw), N = 64 positions of a
// grad_out row along w, K = 64 output channels).
//
//   C[(ci, kd, kh, kw)][ow] = sum over co of W[co][ci][kd][kh][kw] * g[n][co][od][oh][ow]
//   dx[n][ci][od - PD + kd][oh - PH + kh][ow - PW + kw] += C[(ci, kd, kh, kw)][ow]
//
// A block owns HR input rows (ih from h0) of DCH input planes (id from d0) of one sample, all of w,
// and walks the grad_out rows that reach them in order (od, then oh), each one a product on the
// tensor cores (mma.sync m16n8k16; the weights stay in registers, the row comes in by cp.async,
// two rows in flight). The products go to shared memory (bf16, two buffers: one barrier a row);
// for each (ci, kd, kh) that lands inside the block, a thread per iw sums the KW taps and adds the
// sum to a rolling buffer of KD input planes (fp32, shared memory). A plane is written out (bf16) once the last grad_out plane that reaches it
// has been walked. Rows and planes next to a block's edges are walked by both neighbours (each
// keeps what lands inside itself): no atomics, the same result every run.
// A diagnostic, not a template: its sizes are those of the seed workloads (W = 64, OW <= 64), and
// it reads a row as the 16-byte pieces around it, so the last row of grad_out reads up to 20 bytes
// past the tensor's end (inside the caching allocator's segment here; a template must not).
#include <cuda_bf16.h>
#include <cstdint>

namespace probe {

constexpr int CI = 3, CO = 64, WMAX = 64;
constexpr int G_PITCH = CO + 8;        // Ws row pitch (elements): 144 bytes, ldmatrix rows on distinct banks
constexpr int B_PITCH = WMAX + 8;      // Gs row pitch (elements) per output channel: 9 pieces of 16 bytes
constexpr int NT = B_PITCH / 8;        // n8 tiles of a row: its 16-byte pieces from the one at or before its start
constexpr int C_PITCH = B_PITCH + 4;   // Cs row pitch (bf16 elements)

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}
__device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" :: "r"(dst), "l"(src));
}
__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t (&r)[2], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(addr));
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n"); }
template <int N> __device__ __forceinline__ void cp_wait() { asm volatile("cp.async.wait_group %0;\n" :: "n"(N)); }

template <int KD, int KH, int KW, int PD, int PH, int PW, int MTW, int MINB>
struct Dgrad {
  static constexpr int STAGES = 3;  // row buffers: two rows in flight
  static constexpr int R = CI * KD * KH * KW, MT = (R + 15) / 16, RP = MT * 16;
  static constexpr int WARPS = MT / MTW, THREADS = WARPS * 32;
  static_assert(MT % MTW == 0, "whole m16 tiles per warp");
  static constexpr int COMBOS = CI * KD * KH;
  // Gs, then two Cs (bf16; the weights pass through the same bytes before the walk), then the plane buffer.
  static constexpr int WS_BYTES = RP * G_PITCH * 2, GS_BYTES = STAGES * CO * B_PITCH * 2, CS_BYTES = RP * C_PITCH * 2;
  static constexpr int MID_BYTES = (WS_BYTES > 2 * CS_BYTES ? WS_BYTES : 2 * CS_BYTES) + 15 & ~15;  // Cs twice
  static int smem(int hr) { return GS_BYTES + MID_BYTES + CI * KD * hr * WMAX * 4; }
};

template <int KD, int KH, int KW, int PD, int PH, int PW, int MTW, int MINB>
__global__ void __launch_bounds__(Dgrad<KD, KH, KW, PD, PH, PW, MTW, MINB>::THREADS, MINB)
dgrad_col2im(const __nv_bfloat16* __restrict__ g, const __nv_bfloat16* __restrict__ w, __nv_bfloat16* __restrict__ dx,
             int D, int H, int W, int OD, int OH, int OW, int HR, int DCH, int strips, int chunks) {
  using P = Dgrad<KD, KH, KW, PD, PH, PW, MTW, MINB>;
  constexpr int STAGES = P::STAGES;
  constexpr int R = P::R, RP = P::RP, THREADS = P::THREADS;
  extern __shared__ __align__(128) unsigned char smem[];
  __nv_bfloat16* gs = reinterpret_cast<__nv_bfloat16*>(smem);
  __nv_bfloat16* ws = reinterpret_cast<__nv_bfloat16*>(smem + P::GS_BYTES);  // until the walk
  __nv_bfloat16* cs_pair = ws;                                                // during the walk: Cs twice
  float* acc_s = reinterpret_cast<float*>(smem + P::GS_BYTES + P::MID_BYTES);  // [CI][KD][HR][WMAX]
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, g8 = lane / 4, t4 = lane % 4;

  int b = blockIdx.x;
  const int chunk = b % chunks; b /= chunks;
  const int strip = b % strips; const int n = b / strips;
  const int h0 = strip * HR, d0 = chunk * DCH, d1 = min(D, d0 + DCH), h1 = min(H, h0 + HR);

  // Weights: ws[r][co] = W[co][r], rows past R zero. Gs columns past OW stay zero (cp.async never writes them).
  for (int i = tid; i < RP * CO; i += THREADS) {
    const int r = i / CO, co = i % CO;
    ws[r * G_PITCH + co] = r < R ? w[co * R + r] : __float2bfloat16(0.f);
  }
  for (int i = tid; i < STAGES * CO * B_PITCH; i += THREADS) gs[i] = __float2bfloat16(0.f);
  for (int i = tid; i < CI * KD * HR * WMAX; i += THREADS) acc_s[i] = 0.f;
  __syncthreads();

  // This warp's A fragments (its MTW m16 tiles x 4 k16 steps), resident for the whole block.
  uint32_t a[MTW][4][4];
  const uint32_t ws_addr = static_cast<uint32_t>(__cvta_generic_to_shared(ws));
#pragma unroll
  for (int mt = 0; mt < MTW; ++mt)
#pragma unroll
    for (int ks = 0; ks < 4; ++ks) {
      const int row = (warp * MTW + mt) * 16 + (lane / 8 % 2) * 8 + lane % 8, col = ks * 16 + lane / 16 * 8;
      ldmatrix_x4(a[mt][ks], ws_addr + (row * G_PITCH + col) * 2);
    }

  // The grad_out rows this block walks: od in [od_lo, od_hi], oh in [oh_lo, oh_hi].
  const int od_lo = max(0, d0 + PD - (KD - 1)), od_hi = min(OD - 1, d1 - 1 + PD);
  const int oh_lo = max(0, h0 + PH - (KH - 1)), oh_hi = min(OH - 1, h1 - 1 + PH);
  const int rows_per_plane = oh_hi - oh_lo + 1;
  const int total = od_hi >= od_lo && rows_per_plane > 0 ? (od_hi - od_lo + 1) * rows_per_plane : 0;
  const long long plane_g = static_cast<long long>(OH) * OW, chan_g = plane_g * OD;
  const __nv_bfloat16* gn = g + static_cast<long long>(n) * CO * chan_g;
  const uint32_t gs_addr = static_cast<uint32_t>(__cvta_generic_to_shared(gs));
  // A grad_out row starts 4-byte aligned; every channel's copy of it at the same offset within 16
  // bytes (a channel is a multiple of 16 bytes): a row is read as the 9 pieces of 16 bytes from the
  // one holding its start, and its positions sit `shift` elements into the staged row (the
  // columns before and after hold the neighbouring rows: their products are never read).
  auto row_at = [&](int od, int oh) { return gn + od * plane_g + static_cast<long long>(oh) * OW; };
  auto shift_of = [&](const __nv_bfloat16* row) { return static_cast<int>(reinterpret_cast<uintptr_t>(row) % 16) / 2; };

  // This thread's pieces of a staged row, the same every row: piece i = tid + j * THREADS is
  // (channel, piece) = divmod(i, NT); its offset in grad_out from the row's first piece, and in Gs.
  constexpr int PIECES = (CO * NT + THREADS - 1) / THREADS;
  long long piece_src[PIECES];
  uint32_t piece_dst[PIECES];
#pragma unroll
  for (int j = 0; j < PIECES; ++j) {
    const int i = tid + j * THREADS, co = i / NT, e = i % NT;
    piece_src[j] = (co * chan_g + 8 * e) * 2;
    piece_dst[j] = i < CO * NT ? (co * B_PITCH + 8 * e) * 2 : 0xffffffffu;
  }
  int issue_od = od_lo, issue_oh = oh_lo, issued = 0;
  auto issue = [&]() {  // the walk's next row into buffer issued % STAGES
    if (issued < total) {
      const __nv_bfloat16* row = row_at(issue_od, issue_oh);
      const unsigned char* src = reinterpret_cast<const unsigned char*>(row) - shift_of(row) * 2;
      const uint32_t dst = gs_addr + (issued % STAGES) * CO * B_PITCH * 2;
#pragma unroll
      for (int j = 0; j < PIECES; ++j)
        if (piece_dst[j] != 0xffffffffu) cp_async16(dst + piece_dst[j], src + piece_src[j]);
      ++issued;
      if (++issue_oh > oh_hi) issue_oh = oh_lo, ++issue_od;
    }
    cp_commit();
  };

  auto flush = [&](int id) {  // input plane id is complete: out to dx, its slot zeroed
    if (id < d0 || id >= d1) return;
    float* slot = acc_s + (id % KD) * HR * WMAX;
    for (int i = tid; i < CI * HR * (WMAX / 2); i += THREADS) {
      const int ci = i / (HR * (WMAX / 2)), rest = i % (HR * (WMAX / 2)), r = rest / (WMAX / 2), e = rest % (WMAX / 2);
      float* s = slot + ci * KD * HR * WMAX + r * WMAX + 2 * e;
      if (h0 + r < H && 2 * e < W) {
        __nv_bfloat162 v = __floats2bfloat162_rn(s[0], s[1]);
        *reinterpret_cast<__nv_bfloat162*>(dx + (((static_cast<long long>(n) * CI + ci) * D + id) * H + h0 + r) * W + 2 * e) = v;
      }
      s[0] = 0.f; s[1] = 0.f;
    }
  };

  // This thread's col2im items (see the walk), fixed for the block: item j is (combo, iw) =
  // divmod(tid + j * THREADS, WMAX); its row of Cs (tap kw = 0, at ow = iw + PW), which taps reach a
  // grad_out position inside the row, its place in the plane buffer, and (kd, kh) (-1: no item).
  // Per row, item j adds into plane slot (id % KD) = r + kd - (r >= KD - kd ? KD : 0) with r =
  // (od - PD) mod KD, row ih - h0 = oh - PH - h0 + kh: a_off holds what is fixed of that place.
  constexpr int ITEMS = (P::COMBOS * WMAX + THREADS - 1) / THREADS;
  int c_off[ITEMS], a_off[ITEMS], item_kd[ITEMS], item_kh[ITEMS];
  unsigned kw_mask[ITEMS];
#pragma unroll
  for (int j = 0; j < ITEMS; ++j) {
    const int i = tid + j * THREADS, combo = i / WMAX, iw = i % WMAX;
    const int ci = combo / (KD * KH), kd = combo / KH % KD, kh = combo % KH;
    const bool item = combo < P::COMBOS && iw < W;
    c_off[j] = ((ci * KD + kd) * KH + kh) * KW * C_PITCH + iw + PW;
    a_off[j] = ((ci * KD + kd) * HR + kh) * WMAX + iw;
    item_kd[j] = item ? kd : -1024;  // no item: outside every row's range
    item_kh[j] = kh;
    kw_mask[j] = 0;
    for (int kw = 0; kw < KW; ++kw)
      if (iw + PW - kw >= 0 && iw + PW - kw < OW) kw_mask[j] |= 1u << kw;
  }

  // One barrier a row: before it, row k's products go to Cs[k % 2] and row k + 1 has come in;
  // after it, row k + 2 is started and row k's col2im runs while the next row's product fills the other Cs.
  for (int k = 0; k + 1 < STAGES; ++k) issue();
  cp_wait<STAGES - 2>();
  __syncthreads();  // row 0 is in
  int od = od_lo, oh = oh_lo;
  for (int k = 0; k < total; ++k) {
    __nv_bfloat16* const cs = cs_pair + (k % 2) * RP * C_PITCH;

    // The product: this warp's MTW m16 tiles x 8 n8 tiles, K = 64.
    float c[MTW][NT][4] = {};
    const uint32_t b_base = gs_addr + (k % STAGES) * CO * B_PITCH * 2;
#pragma unroll
    for (int ks = 0; ks < 4; ++ks)
#pragma unroll
      for (int np = 0; np < 4; ++np) {  // n8 tiles 2np, 2np + 1
        uint32_t bf[4];
        const int krow = ks * 16 + (lane / 8 % 2) * 8 + lane % 8, ncol = np * 16 + lane / 16 * 8;
        ldmatrix_x4_trans(bf, b_base + (krow * B_PITCH + ncol) * 2);
#pragma unroll
        for (int mt = 0; mt < MTW; ++mt) {
          mma(c[mt][2 * np], a[mt][ks], bf[0], bf[1]);
          mma(c[mt][2 * np + 1], a[mt][ks], bf[2], bf[3]);
        }
      }
#pragma unroll
    for (int ks = 0; ks < 4; ++ks) {  // the ninth n8 tile
      uint32_t bf[2];
      ldmatrix_x2_trans(bf, b_base + ((ks * 16 + (lane / 8 % 2) * 8 + lane % 8) * B_PITCH + 64) * 2);
#pragma unroll
      for (int mt = 0; mt < MTW; ++mt) mma(c[mt][8], a[mt][ks], bf[0], bf[1]);
    }
#pragma unroll
    for (int mt = 0; mt < MTW; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const int row = (warp * MTW + mt) * 16 + g8, col = nt * 8 + 2 * t4;
        *reinterpret_cast<__nv_bfloat162*>(cs + row * C_PITCH + col) = __floats2bfloat162_rn(c[mt][nt][0], c[mt][nt][1]);
        *reinterpret_cast<__nv_bfloat162*>(cs + (row + 8) * C_PITCH + col) = __floats2bfloat162_rn(c[mt][nt][2], c[mt][nt][3]);
      }
    cp_wait<STAGES - 3>();
    __syncthreads();  // Cs[k % 2] complete, row k + 1 in, row k's buffer and Cs[(k + 1) % 2] free
    issue();

    // col2im: for each (ci, kd, kh) landing inside the block, iw per thread: the KW taps summed,
    // then added to the plane buffer. A thread's items are the same every row (set up before the
    // walk); all of a row's loads of Cs are issued before any store, then the buffer's loads, then its stores.
    float v[ITEMS], old[ITEMS];
    const int sh = shift_of(row_at(od, oh));
#pragma unroll
    for (int j = 0; j < ITEMS; ++j) {
      v[j] = 0.f;
#pragma unroll
      for (int kw = 0; kw < KW; ++kw)
        if (kw_mask[j] >> kw & 1) v[j] += __bfloat162float(cs[c_off[j] + sh + kw * (C_PITCH - 1)]);
    }
    // Which (kd, kh) land inside the block this row: kd - kd_lo in [0, d1 - d0), kh - kh_lo in [0, h1 - h0).
    const int od0 = od - PD, oh0 = oh - PH, kd_lo = d0 - od0, kh_lo = h0 - oh0;
    const int r = (od0 % KD + KD) % KD, row_base = (r * HR + oh0 - h0) * WMAX;
    bool live[ITEMS];
    int at[ITEMS];
#pragma unroll
    for (int j = 0; j < ITEMS; ++j) {
      live[j] = static_cast<unsigned>(item_kd[j] - kd_lo) < static_cast<unsigned>(d1 - d0) &&
                static_cast<unsigned>(item_kh[j] - kh_lo) < static_cast<unsigned>(h1 - h0);
      at[j] = a_off[j] + row_base - (r >= KD - item_kd[j] ? KD * HR * WMAX : 0);
      if (live[j]) old[j] = acc_s[at[j]];
    }
#pragma unroll
    for (int j = 0; j < ITEMS; ++j)
      if (live[j]) acc_s[at[j]] = old[j] + v[j];
    if (oh == oh_hi) {  // the last row of grad_out plane od: input plane od - PD is complete
      __syncthreads();
      flush(od - PD);
      oh = oh_lo, ++od;
    } else {
      ++oh;
    }
  }
  __syncthreads();
  // Planes no later grad_out plane reaches (the last KD - 1 - PD of the sample, or of the chunk).
  for (int id = (total > 0 ? od_hi - PD + 1 : d0); id < d1; ++id) {
    flush(id);
    __syncthreads();
  }
  cp_wait<0>();
}

}  // namespace probe

#ifdef PROBE_KERNEL_ONLY  // nvcc alone (no torch): the instances, for ptxas's report
template __global__ void probe::dgrad_col2im<3, 3, 3, 0, 0, 0, 1, 2>(const __nv_bfloat16*, const __nv_bfloat16*, __nv_bfloat16*, int, int, int, int, int, int, int, int, int, int);
template __global__ void probe::dgrad_col2im<3, 3, 3, 0, 0, 0, 1, 3>(const __nv_bfloat16*, const __nv_bfloat16*, __nv_bfloat16*, int, int, int, int, int, int, int, int, int, int);
template __global__ void probe::dgrad_col2im<3, 3, 3, 0, 0, 0, 1, 4>(const __nv_bfloat16*, const __nv_bfloat16*, __nv_bfloat16*, int, int, int, int, int, int, int, int, int, int);
template __global__ void probe::dgrad_col2im<3, 5, 7, 0, 0, 0, 2, 1>(const __nv_bfloat16*, const __nv_bfloat16*, __nv_bfloat16*, int, int, int, int, int, int, int, int, int, int);
template __global__ void probe::dgrad_col2im<3, 5, 7, 0, 0, 0, 2, 2>(const __nv_bfloat16*, const __nv_bfloat16*, __nv_bfloat16*, int, int, int, int, int, int, int, int, int, int);
#else
#include <torch/extension.h>
#include <c10/cuda/CUDAStream.h>

template <int KD, int KH, int KW, int MTW, int MINB>
static void launch(torch::Tensor g, torch::Tensor w, torch::Tensor dx, int hr, int dch) {
  using P = probe::Dgrad<KD, KH, KW, 0, 0, 0, MTW, MINB>;
  const int N = dx.size(0), D = dx.size(2), H = dx.size(3), W = dx.size(4);
  const int OD = g.size(2), OH = g.size(3), OW = g.size(4);
  const int strips = (H + hr - 1) / hr, chunks = (D + dch - 1) / dch;
  auto kernel = probe::dgrad_col2im<KD, KH, KW, 0, 0, 0, MTW, MINB>;
  const int smem = P::smem(hr);
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  kernel<<<N * strips * chunks, P::THREADS, smem, c10::cuda::getCurrentCUDAStream()>>>(
      reinterpret_cast<const __nv_bfloat16*>(g.data_ptr()), reinterpret_cast<const __nv_bfloat16*>(w.data_ptr()),
      reinterpret_cast<__nv_bfloat16*>(dx.data_ptr()), D, H, W, OD, OH, OW, hr, dch, strips, chunks);
}

void dgrad(torch::Tensor g, torch::Tensor w, torch::Tensor dx, int64_t hr, int64_t dch, int64_t mtw, int64_t minb) {
  TORCH_CHECK(g.is_contiguous() && w.is_contiguous() && dx.is_contiguous() && g.scalar_type() == torch::kBFloat16);
  TORCH_CHECK(dx.size(1) == 3 && g.size(1) == 64 && dx.size(4) == 64 && g.size(4) % 2 == 0);
  TORCH_CHECK(g.size(2) * g.size(3) * g.size(4) % 8 == 0, "a channel of grad_out a multiple of 16 bytes");
  const auto k = w.sizes();
  if (k[2] == 3 && k[3] == 3 && k[4] == 3 && mtw == 1 && minb == 2) launch<3, 3, 3, 1, 2>(g, w, dx, hr, dch);
  else if (k[2] == 3 && k[3] == 3 && k[4] == 3 && mtw == 1 && minb == 3) launch<3, 3, 3, 1, 3>(g, w, dx, hr, dch);
  else if (k[2] == 3 && k[3] == 3 && k[4] == 3 && mtw == 1 && minb == 4) launch<3, 3, 3, 1, 4>(g, w, dx, hr, dch);
  else if (k[2] == 3 && k[3] == 5 && k[4] == 7 && mtw == 2 && minb == 1) launch<3, 5, 7, 2, 1>(g, w, dx, hr, dch);
  else if (k[2] == 3 && k[3] == 5 && k[4] == 7 && mtw == 2 && minb == 2) launch<3, 5, 7, 2, 2>(g, w, dx, hr, dch);
  else TORCH_CHECK(false, "the probe has 3x3x3 (mtw 1, 2-4 blocks an SM) and 3x5x7 (mtw 2, 1-2 blocks an SM)");
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
#endif
