#include <cuda_runtime.h>

namespace {

// Storage type of input, weight, bias and output; arithmetic is always in float.
using scalar_t = float;
__device__ __forceinline__ float load(const float* p) { return __ldg(p); }
__device__ __forceinline__ void store(float* p, float v) { *p = v; }

}  // namespace


namespace {

constexpr int CI = 3, CO = 64;
constexpr int CIG = 3, COG = 64;  // per group
constexpr int KW = 7, KVOL = 105;  // taps along w, taps in all
constexpr int SD = 1, SH = 1, SW = 1;
constexpr int PD = 0, PH = 0, PW = 0;  // zeros before each dimension
constexpr int DW = 1;  // dilation along w; those along d and h are in the row offsets
constexpr int COT = 8;    // output channels per thread
constexpr int WT = 4;      // consecutive outputs along w per thread
constexpr int BLOCK = 128;
constexpr int CIC = 3;    // input channels whose weights sit in shared memory at once
constexpr int ROW = (WT - 1) * SW + (KW - 1) * DW + 1;  // inputs along w one thread reads per row

static_assert(COG % COT == 0 && CIG % CIC == 0, "tiles must divide the group");

using index_t = int;  // offsets in 32 bits: every tensor of this call is below 2^30 elements

// One tap: acc[c][j] += weight[c] * input[j * SW + OFF], OFF being the tap's place in the row.
template <int OFF>
__device__ __forceinline__ void tap(float (&acc)[COT][WT], const float (&xr)[ROW],
                                    const float* __restrict__ ws) {
  float wr[COT];
#pragma unroll
  for (int c = 0; c < COT; ++c) wr[c] = ws[c];
#pragma unroll
  for (int c = 0; c < COT; ++c)
#pragma unroll
    for (int j = 0; j < WT; ++j) acc[c][j] = fmaf(wr[c], xr[j * SW + OFF], acc[c][j]);
}

__device__ __forceinline__ bool inside(int i, int size) {
  return static_cast<unsigned>(i) < static_cast<unsigned>(size);
}

// The ROW inputs of one row, from column iw0 on (CI elements apart: channels are innermost).
__device__ __forceinline__ void load_row(float (&xr)[ROW], const scalar_t* __restrict__ p, int iw0, int w) {
#pragma unroll
  for (int i = 0; i < ROW; ++i) {
    xr[i] = load(p + i * CI);
  }
}

// The storage bits of v in the low bits of a word.
__device__ __forceinline__ unsigned bits(float v) {
  return __float_as_uint(v);
}

// A thread's COT channels of one output position, neighbours in NDHWC: 16-byte stores.
// p is aligned: channel offsets are multiples of COT and the launcher's caller aligns y.
__device__ __forceinline__ void store_channels(scalar_t* __restrict__ p, const float (&v)[COT]) {
  constexpr int WORDS = COT / 1, PER_STORE = 4;  // 32-bit words
  unsigned word[WORDS];
#pragma unroll
  for (int k = 0; k < WORDS; ++k) {
    word[k] = bits(v[k]);
  }
#pragma unroll
  for (int k = 0; k < WORDS / PER_STORE; ++k) {
    reinterpret_cast<uint4*>(p)[k] = make_uint4(word[4 * k], word[4 * k + 1], word[4 * k + 2], word[4 * k + 3]);
  }
}

}  // namespace

// 512 threads per SM caps registers at 128; without a cap ptxas picks its own limit per
// variant and some spill.
extern "C" __global__ void __launch_bounds__(BLOCK, 512 / BLOCK)
conv3d_fwd_k3x5x7_s1_p0_d1_g1_ci3_co64_f32_cl(const scalar_t* __restrict__ x, const scalar_t* __restrict__ weight,
    const scalar_t* __restrict__ bias, scalar_t* __restrict__ y,
    int n, int d, int h, int w, int od, int oh, int ow) {
  __shared__ __align__(16) float ws[CIC * KVOL * COT];  // [ci][tap][c]

  // This thread's outputs: channels co0..co0+COT-1, row (ni, odi, ohi), columns ow0..ow0+WT-1.
  const int co0 = static_cast<int>(blockIdx.x % (CO / COT)) * COT;  // channel blocks vary fastest
  const int ci0 = co0 / COG * CIG;  // first input channel of the group
  const int owc = (ow + WT - 1) / WT;
  index_t item = static_cast<index_t>(blockIdx.x / (CO / COT)) * BLOCK + threadIdx.x;
  const int ow0 = min(static_cast<int>(item % owc) * WT, ow - WT);  // the launcher ensures ow >= WT
  item /= owc;
  const int ohi = static_cast<int>(item % oh);
  item /= oh;
  const int odi = static_cast<int>(item % od);
  const index_t ni = item / od;
  const bool active = ni < n;  // the last block has idle threads; they still stage weights

  const int id0 = odi * SD - PD, ih0 = ohi * SH - PH, iw0 = ow0 * SW - PW;
  const index_t wc = static_cast<index_t>(w) * CI, hwc = wc * h;  // NDHWC strides of h and d
  const scalar_t* xg = x + (ni * d + id0) * hwc + static_cast<index_t>(ih0) * wc + static_cast<index_t>(iw0) * CI + ci0;

  float acc[COT][WT] = {};
  {
    constexpr int cc = 0;  // all CIG input channels fit in one chunk
    for (int i = threadIdx.x; i < CIC * KVOL * COT; i += BLOCK) {
      const int c = i % COT, t = i / COT;
      ws[i] = load(weight + static_cast<index_t>(co0 + c) * CIG * KVOL + cc * KVOL + t);
    }
    __syncthreads();
    if (active) {
      const scalar_t* xc = xg + cc;
      if (inside(id0, d) && inside(ih0, h)) {  // ci=0 kd=0 kh=0
        float xr[ROW];
        load_row(xr, xc + 0, iw0, w);
        tap<0>(acc, xr, ws + 0);  // kd=0 kh=0 kw=0
        tap<1>(acc, xr, ws + 8);  // kd=0 kh=0 kw=1
        tap<2>(acc, xr, ws + 16);  // kd=0 kh=0 kw=2
        tap<3>(acc, xr, ws + 24);  // kd=0 kh=0 kw=3
        tap<4>(acc, xr, ws + 32);  // kd=0 kh=0 kw=4
        tap<5>(acc, xr, ws + 40);  // kd=0 kh=0 kw=5
        tap<6>(acc, xr, ws + 48);  // kd=0 kh=0 kw=6
      }
      if (inside(id0, d) && inside(ih0 + 1, h)) {  // ci=0 kd=0 kh=1
        float xr[ROW];
        load_row(xr, xc + 1 * wc, iw0, w);
        tap<0>(acc, xr, ws + 56);  // kd=0 kh=1 kw=0
        tap<1>(acc, xr, ws + 64);  // kd=0 kh=1 kw=1
        tap<2>(acc, xr, ws + 72);  // kd=0 kh=1 kw=2
        tap<3>(acc, xr, ws + 80);  // kd=0 kh=1 kw=3
        tap<4>(acc, xr, ws + 88);  // kd=0 kh=1 kw=4
        tap<5>(acc, xr, ws + 96);  // kd=0 kh=1 kw=5
        tap<6>(acc, xr, ws + 104);  // kd=0 kh=1 kw=6
      }
      if (inside(id0, d) && inside(ih0 + 2, h)) {  // ci=0 kd=0 kh=2
        float xr[ROW];
        load_row(xr, xc + 2 * wc, iw0, w);
        tap<0>(acc, xr, ws + 112);  // kd=0 kh=2 kw=0
        tap<1>(acc, xr, ws + 120);  // kd=0 kh=2 kw=1
        tap<2>(acc, xr, ws + 128);  // kd=0 kh=2 kw=2
        tap<3>(acc, xr, ws + 136);  // kd=0 kh=2 kw=3
        tap<4>(acc, xr, ws + 144);  // kd=0 kh=2 kw=4
        tap<5>(acc, xr, ws + 152);  // kd=0 kh=2 kw=5
        tap<6>(acc, xr, ws + 160);  // kd=0 kh=2 kw=6
      }
      if (inside(id0, d) && inside(ih0 + 3, h)) {  // ci=0 kd=0 kh=3
        float xr[ROW];
        load_row(xr, xc + 3 * wc, iw0, w);
        tap<0>(acc, xr, ws + 168);  // kd=0 kh=3 kw=0
        tap<1>(acc, xr, ws + 176);  // kd=0 kh=3 kw=1
        tap<2>(acc, xr, ws + 184);  // kd=0 kh=3 kw=2
        tap<3>(acc, xr, ws + 192);  // kd=0 kh=3 kw=3
        tap<4>(acc, xr, ws + 200);  // kd=0 kh=3 kw=4
        tap<5>(acc, xr, ws + 208);  // kd=0 kh=3 kw=5
        tap<6>(acc, xr, ws + 216);  // kd=0 kh=3 kw=6
      }
      if (inside(id0, d) && inside(ih0 + 4, h)) {  // ci=0 kd=0 kh=4
        float xr[ROW];
        load_row(xr, xc + 4 * wc, iw0, w);
        tap<0>(acc, xr, ws + 224);  // kd=0 kh=4 kw=0
        tap<1>(acc, xr, ws + 232);  // kd=0 kh=4 kw=1
        tap<2>(acc, xr, ws + 240);  // kd=0 kh=4 kw=2
        tap<3>(acc, xr, ws + 248);  // kd=0 kh=4 kw=3
        tap<4>(acc, xr, ws + 256);  // kd=0 kh=4 kw=4
        tap<5>(acc, xr, ws + 264);  // kd=0 kh=4 kw=5
        tap<6>(acc, xr, ws + 272);  // kd=0 kh=4 kw=6
      }
      if (inside(id0 + 1, d) && inside(ih0, h)) {  // ci=0 kd=1 kh=0
        float xr[ROW];
        load_row(xr, xc + 1 * hwc, iw0, w);
        tap<0>(acc, xr, ws + 280);  // kd=1 kh=0 kw=0
        tap<1>(acc, xr, ws + 288);  // kd=1 kh=0 kw=1
        tap<2>(acc, xr, ws + 296);  // kd=1 kh=0 kw=2
        tap<3>(acc, xr, ws + 304);  // kd=1 kh=0 kw=3
        tap<4>(acc, xr, ws + 312);  // kd=1 kh=0 kw=4
        tap<5>(acc, xr, ws + 320);  // kd=1 kh=0 kw=5
        tap<6>(acc, xr, ws + 328);  // kd=1 kh=0 kw=6
      }
      if (inside(id0 + 1, d) && inside(ih0 + 1, h)) {  // ci=0 kd=1 kh=1
        float xr[ROW];
        load_row(xr, xc + 1 * hwc + 1 * wc, iw0, w);
        tap<0>(acc, xr, ws + 336);  // kd=1 kh=1 kw=0
        tap<1>(acc, xr, ws + 344);  // kd=1 kh=1 kw=1
        tap<2>(acc, xr, ws + 352);  // kd=1 kh=1 kw=2
        tap<3>(acc, xr, ws + 360);  // kd=1 kh=1 kw=3
        tap<4>(acc, xr, ws + 368);  // kd=1 kh=1 kw=4
        tap<5>(acc, xr, ws + 376);  // kd=1 kh=1 kw=5
        tap<6>(acc, xr, ws + 384);  // kd=1 kh=1 kw=6
      }
      if (inside(id0 + 1, d) && inside(ih0 + 2, h)) {  // ci=0 kd=1 kh=2
        float xr[ROW];
        load_row(xr, xc + 1 * hwc + 2 * wc, iw0, w);
        tap<0>(acc, xr, ws + 392);  // kd=1 kh=2 kw=0
        tap<1>(acc, xr, ws + 400);  // kd=1 kh=2 kw=1
        tap<2>(acc, xr, ws + 408);  // kd=1 kh=2 kw=2
        tap<3>(acc, xr, ws + 416);  // kd=1 kh=2 kw=3
        tap<4>(acc, xr, ws + 424);  // kd=1 kh=2 kw=4
        tap<5>(acc, xr, ws + 432);  // kd=1 kh=2 kw=5
        tap<6>(acc, xr, ws + 440);  // kd=1 kh=2 kw=6
      }
      if (inside(id0 + 1, d) && inside(ih0 + 3, h)) {  // ci=0 kd=1 kh=3
        float xr[ROW];
        load_row(xr, xc + 1 * hwc + 3 * wc, iw0, w);
        tap<0>(acc, xr, ws + 448);  // kd=1 kh=3 kw=0
        tap<1>(acc, xr, ws + 456);  // kd=1 kh=3 kw=1
        tap<2>(acc, xr, ws + 464);  // kd=1 kh=3 kw=2
        tap<3>(acc, xr, ws + 472);  // kd=1 kh=3 kw=3
        tap<4>(acc, xr, ws + 480);  // kd=1 kh=3 kw=4
        tap<5>(acc, xr, ws + 488);  // kd=1 kh=3 kw=5
        tap<6>(acc, xr, ws + 496);  // kd=1 kh=3 kw=6
      }
      if (inside(id0 + 1, d) && inside(ih0 + 4, h)) {  // ci=0 kd=1 kh=4
        float xr[ROW];
        load_row(xr, xc + 1 * hwc + 4 * wc, iw0, w);
        tap<0>(acc, xr, ws + 504);  // kd=1 kh=4 kw=0
        tap<1>(acc, xr, ws + 512);  // kd=1 kh=4 kw=1
        tap<2>(acc, xr, ws + 520);  // kd=1 kh=4 kw=2
        tap<3>(acc, xr, ws + 528);  // kd=1 kh=4 kw=3
        tap<4>(acc, xr, ws + 536);  // kd=1 kh=4 kw=4
        tap<5>(acc, xr, ws + 544);  // kd=1 kh=4 kw=5
        tap<6>(acc, xr, ws + 552);  // kd=1 kh=4 kw=6
      }
      if (inside(id0 + 2, d) && inside(ih0, h)) {  // ci=0 kd=2 kh=0
        float xr[ROW];
        load_row(xr, xc + 2 * hwc, iw0, w);
        tap<0>(acc, xr, ws + 560);  // kd=2 kh=0 kw=0
        tap<1>(acc, xr, ws + 568);  // kd=2 kh=0 kw=1
        tap<2>(acc, xr, ws + 576);  // kd=2 kh=0 kw=2
        tap<3>(acc, xr, ws + 584);  // kd=2 kh=0 kw=3
        tap<4>(acc, xr, ws + 592);  // kd=2 kh=0 kw=4
        tap<5>(acc, xr, ws + 600);  // kd=2 kh=0 kw=5
        tap<6>(acc, xr, ws + 608);  // kd=2 kh=0 kw=6
      }
      if (inside(id0 + 2, d) && inside(ih0 + 1, h)) {  // ci=0 kd=2 kh=1
        float xr[ROW];
        load_row(xr, xc + 2 * hwc + 1 * wc, iw0, w);
        tap<0>(acc, xr, ws + 616);  // kd=2 kh=1 kw=0
        tap<1>(acc, xr, ws + 624);  // kd=2 kh=1 kw=1
        tap<2>(acc, xr, ws + 632);  // kd=2 kh=1 kw=2
        tap<3>(acc, xr, ws + 640);  // kd=2 kh=1 kw=3
        tap<4>(acc, xr, ws + 648);  // kd=2 kh=1 kw=4
        tap<5>(acc, xr, ws + 656);  // kd=2 kh=1 kw=5
        tap<6>(acc, xr, ws + 664);  // kd=2 kh=1 kw=6
      }
      if (inside(id0 + 2, d) && inside(ih0 + 2, h)) {  // ci=0 kd=2 kh=2
        float xr[ROW];
        load_row(xr, xc + 2 * hwc + 2 * wc, iw0, w);
        tap<0>(acc, xr, ws + 672);  // kd=2 kh=2 kw=0
        tap<1>(acc, xr, ws + 680);  // kd=2 kh=2 kw=1
        tap<2>(acc, xr, ws + 688);  // kd=2 kh=2 kw=2
        tap<3>(acc, xr, ws + 696);  // kd=2 kh=2 kw=3
        tap<4>(acc, xr, ws + 704);  // kd=2 kh=2 kw=4
        tap<5>(acc, xr, ws + 712);  // kd=2 kh=2 kw=5
        tap<6>(acc, xr, ws + 720);  // kd=2 kh=2 kw=6
      }
      if (inside(id0 + 2, d) && inside(ih0 + 3, h)) {  // ci=0 kd=2 kh=3
        float xr[ROW];
        load_row(xr, xc + 2 * hwc + 3 * wc, iw0, w);
        tap<0>(acc, xr, ws + 728);  // kd=2 kh=3 kw=0
        tap<1>(acc, xr, ws + 736);  // kd=2 kh=3 kw=1
        tap<2>(acc, xr, ws + 744);  // kd=2 kh=3 kw=2
        tap<3>(acc, xr, ws + 752);  // kd=2 kh=3 kw=3
        tap<4>(acc, xr, ws + 760);  // kd=2 kh=3 kw=4
        tap<5>(acc, xr, ws + 768);  // kd=2 kh=3 kw=5
        tap<6>(acc, xr, ws + 776);  // kd=2 kh=3 kw=6
      }
      if (inside(id0 + 2, d) && inside(ih0 + 4, h)) {  // ci=0 kd=2 kh=4
        float xr[ROW];
        load_row(xr, xc + 2 * hwc + 4 * wc, iw0, w);
        tap<0>(acc, xr, ws + 784);  // kd=2 kh=4 kw=0
        tap<1>(acc, xr, ws + 792);  // kd=2 kh=4 kw=1
        tap<2>(acc, xr, ws + 800);  // kd=2 kh=4 kw=2
        tap<3>(acc, xr, ws + 808);  // kd=2 kh=4 kw=3
        tap<4>(acc, xr, ws + 816);  // kd=2 kh=4 kw=4
        tap<5>(acc, xr, ws + 824);  // kd=2 kh=4 kw=5
        tap<6>(acc, xr, ws + 832);  // kd=2 kh=4 kw=6
      }
      if (inside(id0, d) && inside(ih0, h)) {  // ci=1 kd=0 kh=0
        float xr[ROW];
        load_row(xr, xc + 1, iw0, w);
        tap<0>(acc, xr, ws + 840);  // kd=0 kh=0 kw=0
        tap<1>(acc, xr, ws + 848);  // kd=0 kh=0 kw=1
        tap<2>(acc, xr, ws + 856);  // kd=0 kh=0 kw=2
        tap<3>(acc, xr, ws + 864);  // kd=0 kh=0 kw=3
        tap<4>(acc, xr, ws + 872);  // kd=0 kh=0 kw=4
        tap<5>(acc, xr, ws + 880);  // kd=0 kh=0 kw=5
        tap<6>(acc, xr, ws + 888);  // kd=0 kh=0 kw=6
      }
      if (inside(id0, d) && inside(ih0 + 1, h)) {  // ci=1 kd=0 kh=1
        float xr[ROW];
        load_row(xr, xc + 1 + 1 * wc, iw0, w);
        tap<0>(acc, xr, ws + 896);  // kd=0 kh=1 kw=0
        tap<1>(acc, xr, ws + 904);  // kd=0 kh=1 kw=1
        tap<2>(acc, xr, ws + 912);  // kd=0 kh=1 kw=2
        tap<3>(acc, xr, ws + 920);  // kd=0 kh=1 kw=3
        tap<4>(acc, xr, ws + 928);  // kd=0 kh=1 kw=4
        tap<5>(acc, xr, ws + 936);  // kd=0 kh=1 kw=5
        tap<6>(acc, xr, ws + 944);  // kd=0 kh=1 kw=6
      }
      if (inside(id0, d) && inside(ih0 + 2, h)) {  // ci=1 kd=0 kh=2
        float xr[ROW];
        load_row(xr, xc + 1 + 2 * wc, iw0, w);
        tap<0>(acc, xr, ws + 952);  // kd=0 kh=2 kw=0
        tap<1>(acc, xr, ws + 960);  // kd=0 kh=2 kw=1
        tap<2>(acc, xr, ws + 968);  // kd=0 kh=2 kw=2
        tap<3>(acc, xr, ws + 976);  // kd=0 kh=2 kw=3
        tap<4>(acc, xr, ws + 984);  // kd=0 kh=2 kw=4
        tap<5>(acc, xr, ws + 992);  // kd=0 kh=2 kw=5
        tap<6>(acc, xr, ws + 1000);  // kd=0 kh=2 kw=6
      }
      if (inside(id0, d) && inside(ih0 + 3, h)) {  // ci=1 kd=0 kh=3
        float xr[ROW];
        load_row(xr, xc + 1 + 3 * wc, iw0, w);
        tap<0>(acc, xr, ws + 1008);  // kd=0 kh=3 kw=0
        tap<1>(acc, xr, ws + 1016);  // kd=0 kh=3 kw=1
        tap<2>(acc, xr, ws + 1024);  // kd=0 kh=3 kw=2
        tap<3>(acc, xr, ws + 1032);  // kd=0 kh=3 kw=3
        tap<4>(acc, xr, ws + 1040);  // kd=0 kh=3 kw=4
        tap<5>(acc, xr, ws + 1048);  // kd=0 kh=3 kw=5
        tap<6>(acc, xr, ws + 1056);  // kd=0 kh=3 kw=6
      }
      if (inside(id0, d) && inside(ih0 + 4, h)) {  // ci=1 kd=0 kh=4
        float xr[ROW];
        load_row(xr, xc + 1 + 4 * wc, iw0, w);
        tap<0>(acc, xr, ws + 1064);  // kd=0 kh=4 kw=0
        tap<1>(acc, xr, ws + 1072);  // kd=0 kh=4 kw=1
        tap<2>(acc, xr, ws + 1080);  // kd=0 kh=4 kw=2
        tap<3>(acc, xr, ws + 1088);  // kd=0 kh=4 kw=3
        tap<4>(acc, xr, ws + 1096);  // kd=0 kh=4 kw=4
        tap<5>(acc, xr, ws + 1104);  // kd=0 kh=4 kw=5
        tap<6>(acc, xr, ws + 1112);  // kd=0 kh=4 kw=6
      }
      if (inside(id0 + 1, d) && inside(ih0, h)) {  // ci=1 kd=1 kh=0
        float xr[ROW];
        load_row(xr, xc + 1 + 1 * hwc, iw0, w);
        tap<0>(acc, xr, ws + 1120);  // kd=1 kh=0 kw=0
        tap<1>(acc, xr, ws + 1128);  // kd=1 kh=0 kw=1
        tap<2>(acc, xr, ws + 1136);  // kd=1 kh=0 kw=2
        tap<3>(acc, xr, ws + 1144);  // kd=1 kh=0 kw=3
        tap<4>(acc, xr, ws + 1152);  // kd=1 kh=0 kw=4
        tap<5>(acc, xr, ws + 1160);  // kd=1 kh=0 kw=5
        tap<6>(acc, xr, ws + 1168);  // kd=1 kh=0 kw=6
      }
      if (inside(id0 + 1, d) && inside(ih0 + 1, h)) {  // ci=1 kd=1 kh=1
        float xr[ROW];
        load_row(xr, xc + 1 + 1 * hwc + 1 * wc, iw0, w);
        tap<0>(acc, xr, ws + 1176);  // kd=1 kh=1 kw=0
        tap<1>(acc, xr, ws + 1184);  // kd=1 kh=1 kw=1
        tap<2>(acc, xr, ws + 1192);  // kd=1 kh=1 kw=2
        tap<3>(acc, xr, ws + 1200);  // kd=1 kh=1 kw=3
        tap<4>(acc, xr, ws + 1208);  // kd=1 kh=1 kw=4
        tap<5>(acc, xr, ws + 1216);  // kd=1 kh=1 kw=5
        tap<6>(acc, xr, ws + 1224);  // kd=1 kh=1 kw=6
      }
      if (inside(id0 + 1, d) && inside(ih0 + 2, h)) {  // ci=1 kd=1 kh=2
        float xr[ROW];
        load_row(xr, xc + 1 + 1 * hwc + 2 * wc, iw0, w);
        tap<0>(acc, xr, ws + 1232);  // kd=1 kh=2 kw=0
        tap<1>(acc, xr, ws + 1240);  // kd=1 kh=2 kw=1
        tap<2>(acc, xr, ws + 1248);  // kd=1 kh=2 kw=2
        tap<3>(acc, xr, ws + 1256);  // kd=1 kh=2 kw=3
        tap<4>(acc, xr, ws + 1264);  // kd=1 kh=2 kw=4
        tap<5>(acc, xr, ws + 1272);  // kd=1 kh=2 kw=5
        tap<6>(acc, xr, ws + 1280);  // kd=1 kh=2 kw=6
      }
      if (inside(id0 + 1, d) && inside(ih0 + 3, h)) {  // ci=1 kd=1 kh=3
        float xr[ROW];
        load_row(xr, xc + 1 + 1 * hwc + 3 * wc, iw0, w);
        tap<0>(acc, xr, ws + 1288);  // kd=1 kh=3 kw=0
        tap<1>(acc, xr, ws + 1296);  // kd=1 kh=3 kw=1
        tap<2>(acc, xr, ws + 1304);  // kd=1 kh=3 kw=2
        tap<3>(acc, xr, ws + 1312);  // kd=1 kh=3 kw=3
        tap<4>(acc, xr, ws + 1320);  // kd=1 kh=3 kw=4
        tap<5>(acc, xr, ws + 1328);  // kd=1 kh=3 kw=5
        tap<6>(acc, xr, ws + 1336);  // kd=1 kh=3 kw=6
      }
      if (inside(id0 + 1, d) && inside(ih0 + 4, h)) {  // ci=1 kd=1 kh=4
        float xr[ROW];
        load_row(xr, xc + 1 + 1 * hwc + 4 * wc, iw0, w);
        tap<0>(acc, xr, ws + 1344);  // kd=1 kh=4 kw=0
        tap<1>(acc, xr, ws + 1352);  // kd=1 kh=4 kw=1
        tap<2>(acc, xr, ws + 1360);  // kd=1 kh=4 kw=2
        tap<3>(acc, xr, ws + 1368);  // kd=1 kh=4 kw=3
        tap<4>(acc, xr, ws + 1376);  // kd=1 kh=4 kw=4
        tap<5>(acc, xr, ws + 1384);  // kd=1 kh=4 kw=5
        tap<6>(acc, xr, ws + 1392);  // kd=1 kh=4 kw=6
      }
      if (inside(id0 + 2, d) && inside(ih0, h)) {  // ci=1 kd=2 kh=0
        float xr[ROW];
        load_row(xr, xc + 1 + 2 * hwc, iw0, w);
        tap<0>(acc, xr, ws + 1400);  // kd=2 kh=0 kw=0
        tap<1>(acc, xr, ws + 1408);  // kd=2 kh=0 kw=1
        tap<2>(acc, xr, ws + 1416);  // kd=2 kh=0 kw=2
        tap<3>(acc, xr, ws + 1424);  // kd=2 kh=0 kw=3
        tap<4>(acc, xr, ws + 1432);  // kd=2 kh=0 kw=4
        tap<5>(acc, xr, ws + 1440);  // kd=2 kh=0 kw=5
        tap<6>(acc, xr, ws + 1448);  // kd=2 kh=0 kw=6
      }
      if (inside(id0 + 2, d) && inside(ih0 + 1, h)) {  // ci=1 kd=2 kh=1
        float xr[ROW];
        load_row(xr, xc + 1 + 2 * hwc + 1 * wc, iw0, w);
        tap<0>(acc, xr, ws + 1456);  // kd=2 kh=1 kw=0
        tap<1>(acc, xr, ws + 1464);  // kd=2 kh=1 kw=1
        tap<2>(acc, xr, ws + 1472);  // kd=2 kh=1 kw=2
        tap<3>(acc, xr, ws + 1480);  // kd=2 kh=1 kw=3
        tap<4>(acc, xr, ws + 1488);  // kd=2 kh=1 kw=4
        tap<5>(acc, xr, ws + 1496);  // kd=2 kh=1 kw=5
        tap<6>(acc, xr, ws + 1504);  // kd=2 kh=1 kw=6
      }
      if (inside(id0 + 2, d) && inside(ih0 + 2, h)) {  // ci=1 kd=2 kh=2
        float xr[ROW];
        load_row(xr, xc + 1 + 2 * hwc + 2 * wc, iw0, w);
        tap<0>(acc, xr, ws + 1512);  // kd=2 kh=2 kw=0
        tap<1>(acc, xr, ws + 1520);  // kd=2 kh=2 kw=1
        tap<2>(acc, xr, ws + 1528);  // kd=2 kh=2 kw=2
        tap<3>(acc, xr, ws + 1536);  // kd=2 kh=2 kw=3
        tap<4>(acc, xr, ws + 1544);  // kd=2 kh=2 kw=4
        tap<5>(acc, xr, ws + 1552);  // kd=2 kh=2 kw=5
        tap<6>(acc, xr, ws + 1560);  // kd=2 kh=2 kw=6
      }
      if (inside(id0 + 2, d) && inside(ih0 + 3, h)) {  // ci=1 kd=2 kh=3
        float xr[ROW];
        load_row(xr, xc + 1 + 2 * hwc + 3 * wc, iw0, w);
        tap<0>(acc, xr, ws + 1568);  // kd=2 kh=3 kw=0
        tap<1>(acc, xr, ws + 1576);  // kd=2 kh=3 kw=1
        tap<2>(acc, xr, ws + 1584);  // kd=2 kh=3 kw=2
        tap<3>(acc, xr, ws + 1592);  // kd=2 kh=3 kw=3
        tap<4>(acc, xr, ws + 1600);  // kd=2 kh=3 kw=4
        tap<5>(acc, xr, ws + 1608);  // kd=2 kh=3 kw=5
        tap<6>(acc, xr, ws + 1616);  // kd=2 kh=3 kw=6
      }
      if (inside(id0 + 2, d) && inside(ih0 + 4, h)) {  // ci=1 kd=2 kh=4
        float xr[ROW];
        load_row(xr, xc + 1 + 2 * hwc + 4 * wc, iw0, w);
        tap<0>(acc, xr, ws + 1624);  // kd=2 kh=4 kw=0
        tap<1>(acc, xr, ws + 1632);  // kd=2 kh=4 kw=1
        tap<2>(acc, xr, ws + 1640);  // kd=2 kh=4 kw=2
        tap<3>(acc, xr, ws + 1648);  // kd=2 kh=4 kw=3
        tap<4>(acc, xr, ws + 1656);  // kd=2 kh=4 kw=4
        tap<5>(acc, xr, ws + 1664);  // kd=2 kh=4 kw=5
        tap<6>(acc, xr, ws + 1672);  // kd=2 kh=4 kw=6
      }
      if (inside(id0, d) && inside(ih0, h)) {  // ci=2 kd=0 kh=0
        float xr[ROW];
        load_row(xr, xc + 2, iw0, w);
        tap<0>(acc, xr, ws + 1680);  // kd=0 kh=0 kw=0
        tap<1>(acc, xr, ws + 1688);  // kd=0 kh=0 kw=1
        tap<2>(acc, xr, ws + 1696);  // kd=0 kh=0 kw=2
        tap<3>(acc, xr, ws + 1704);  // kd=0 kh=0 kw=3
        tap<4>(acc, xr, ws + 1712);  // kd=0 kh=0 kw=4
        tap<5>(acc, xr, ws + 1720);  // kd=0 kh=0 kw=5
        tap<6>(acc, xr, ws + 1728);  // kd=0 kh=0 kw=6
      }
      if (inside(id0, d) && inside(ih0 + 1, h)) {  // ci=2 kd=0 kh=1
        float xr[ROW];
        load_row(xr, xc + 2 + 1 * wc, iw0, w);
        tap<0>(acc, xr, ws + 1736);  // kd=0 kh=1 kw=0
        tap<1>(acc, xr, ws + 1744);  // kd=0 kh=1 kw=1
        tap<2>(acc, xr, ws + 1752);  // kd=0 kh=1 kw=2
        tap<3>(acc, xr, ws + 1760);  // kd=0 kh=1 kw=3
        tap<4>(acc, xr, ws + 1768);  // kd=0 kh=1 kw=4
        tap<5>(acc, xr, ws + 1776);  // kd=0 kh=1 kw=5
        tap<6>(acc, xr, ws + 1784);  // kd=0 kh=1 kw=6
      }
      if (inside(id0, d) && inside(ih0 + 2, h)) {  // ci=2 kd=0 kh=2
        float xr[ROW];
        load_row(xr, xc + 2 + 2 * wc, iw0, w);
        tap<0>(acc, xr, ws + 1792);  // kd=0 kh=2 kw=0
        tap<1>(acc, xr, ws + 1800);  // kd=0 kh=2 kw=1
        tap<2>(acc, xr, ws + 1808);  // kd=0 kh=2 kw=2
        tap<3>(acc, xr, ws + 1816);  // kd=0 kh=2 kw=3
        tap<4>(acc, xr, ws + 1824);  // kd=0 kh=2 kw=4
        tap<5>(acc, xr, ws + 1832);  // kd=0 kh=2 kw=5
        tap<6>(acc, xr, ws + 1840);  // kd=0 kh=2 kw=6
      }
      if (inside(id0, d) && inside(ih0 + 3, h)) {  // ci=2 kd=0 kh=3
        float xr[ROW];
        load_row(xr, xc + 2 + 3 * wc, iw0, w);
        tap<0>(acc, xr, ws + 1848);  // kd=0 kh=3 kw=0
        tap<1>(acc, xr, ws + 1856);  // kd=0 kh=3 kw=1
        tap<2>(acc, xr, ws + 1864);  // kd=0 kh=3 kw=2
        tap<3>(acc, xr, ws + 1872);  // kd=0 kh=3 kw=3
        tap<4>(acc, xr, ws + 1880);  // kd=0 kh=3 kw=4
        tap<5>(acc, xr, ws + 1888);  // kd=0 kh=3 kw=5
        tap<6>(acc, xr, ws + 1896);  // kd=0 kh=3 kw=6
      }
      if (inside(id0, d) && inside(ih0 + 4, h)) {  // ci=2 kd=0 kh=4
        float xr[ROW];
        load_row(xr, xc + 2 + 4 * wc, iw0, w);
        tap<0>(acc, xr, ws + 1904);  // kd=0 kh=4 kw=0
        tap<1>(acc, xr, ws + 1912);  // kd=0 kh=4 kw=1
        tap<2>(acc, xr, ws + 1920);  // kd=0 kh=4 kw=2
        tap<3>(acc, xr, ws + 1928);  // kd=0 kh=4 kw=3
        tap<4>(acc, xr, ws + 1936);  // kd=0 kh=4 kw=4
        tap<5>(acc, xr, ws + 1944);  // kd=0 kh=4 kw=5
        tap<6>(acc, xr, ws + 1952);  // kd=0 kh=4 kw=6
      }
      if (inside(id0 + 1, d) && inside(ih0, h)) {  // ci=2 kd=1 kh=0
        float xr[ROW];
        load_row(xr, xc + 2 + 1 * hwc, iw0, w);
        tap<0>(acc, xr, ws + 1960);  // kd=1 kh=0 kw=0
        tap<1>(acc, xr, ws + 1968);  // kd=1 kh=0 kw=1
        tap<2>(acc, xr, ws + 1976);  // kd=1 kh=0 kw=2
        tap<3>(acc, xr, ws + 1984);  // kd=1 kh=0 kw=3
        tap<4>(acc, xr, ws + 1992);  // kd=1 kh=0 kw=4
        tap<5>(acc, xr, ws + 2000);  // kd=1 kh=0 kw=5
        tap<6>(acc, xr, ws + 2008);  // kd=1 kh=0 kw=6
      }
      if (inside(id0 + 1, d) && inside(ih0 + 1, h)) {  // ci=2 kd=1 kh=1
        float xr[ROW];
        load_row(xr, xc + 2 + 1 * hwc + 1 * wc, iw0, w);
        tap<0>(acc, xr, ws + 2016);  // kd=1 kh=1 kw=0
        tap<1>(acc, xr, ws + 2024);  // kd=1 kh=1 kw=1
        tap<2>(acc, xr, ws + 2032);  // kd=1 kh=1 kw=2
        tap<3>(acc, xr, ws + 2040);  // kd=1 kh=1 kw=3
        tap<4>(acc, xr, ws + 2048);  // kd=1 kh=1 kw=4
        tap<5>(acc, xr, ws + 2056);  // kd=1 kh=1 kw=5
        tap<6>(acc, xr, ws + 2064);  // kd=1 kh=1 kw=6
      }
      if (inside(id0 + 1, d) && inside(ih0 + 2, h)) {  // ci=2 kd=1 kh=2
        float xr[ROW];
        load_row(xr, xc + 2 + 1 * hwc + 2 * wc, iw0, w);
        tap<0>(acc, xr, ws + 2072);  // kd=1 kh=2 kw=0
        tap<1>(acc, xr, ws + 2080);  // kd=1 kh=2 kw=1
        tap<2>(acc, xr, ws + 2088);  // kd=1 kh=2 kw=2
        tap<3>(acc, xr, ws + 2096);  // kd=1 kh=2 kw=3
        tap<4>(acc, xr, ws + 2104);  // kd=1 kh=2 kw=4
        tap<5>(acc, xr, ws + 2112);  // kd=1 kh=2 kw=5
        tap<6>(acc, xr, ws + 2120);  // kd=1 kh=2 kw=6
      }
      if (inside(id0 + 1, d) && inside(ih0 + 3, h)) {  // ci=2 kd=1 kh=3
        float xr[ROW];
        load_row(xr, xc + 2 + 1 * hwc + 3 * wc, iw0, w);
        tap<0>(acc, xr, ws + 2128);  // kd=1 kh=3 kw=0
        tap<1>(acc, xr, ws + 2136);  // kd=1 kh=3 kw=1
        tap<2>(acc, xr, ws + 2144);  // kd=1 kh=3 kw=2
        tap<3>(acc, xr, ws + 2152);  // kd=1 kh=3 kw=3
        tap<4>(acc, xr, ws + 2160);  // kd=1 kh=3 kw=4
        tap<5>(acc, xr, ws + 2168);  // kd=1 kh=3 kw=5
        tap<6>(acc, xr, ws + 2176);  // kd=1 kh=3 kw=6
      }
      if (inside(id0 + 1, d) && inside(ih0 + 4, h)) {  // ci=2 kd=1 kh=4
        float xr[ROW];
        load_row(xr, xc + 2 + 1 * hwc + 4 * wc, iw0, w);
        tap<0>(acc, xr, ws + 2184);  // kd=1 kh=4 kw=0
        tap<1>(acc, xr, ws + 2192);  // kd=1 kh=4 kw=1
        tap<2>(acc, xr, ws + 2200);  // kd=1 kh=4 kw=2
        tap<3>(acc, xr, ws + 2208);  // kd=1 kh=4 kw=3
        tap<4>(acc, xr, ws + 2216);  // kd=1 kh=4 kw=4
        tap<5>(acc, xr, ws + 2224);  // kd=1 kh=4 kw=5
        tap<6>(acc, xr, ws + 2232);  // kd=1 kh=4 kw=6
      }
      if (inside(id0 + 2, d) && inside(ih0, h)) {  // ci=2 kd=2 kh=0
        float xr[ROW];
        load_row(xr, xc + 2 + 2 * hwc, iw0, w);
        tap<0>(acc, xr, ws + 2240);  // kd=2 kh=0 kw=0
        tap<1>(acc, xr, ws + 2248);  // kd=2 kh=0 kw=1
        tap<2>(acc, xr, ws + 2256);  // kd=2 kh=0 kw=2
        tap<3>(acc, xr, ws + 2264);  // kd=2 kh=0 kw=3
        tap<4>(acc, xr, ws + 2272);  // kd=2 kh=0 kw=4
        tap<5>(acc, xr, ws + 2280);  // kd=2 kh=0 kw=5
        tap<6>(acc, xr, ws + 2288);  // kd=2 kh=0 kw=6
      }
      if (inside(id0 + 2, d) && inside(ih0 + 1, h)) {  // ci=2 kd=2 kh=1
        float xr[ROW];
        load_row(xr, xc + 2 + 2 * hwc + 1 * wc, iw0, w);
        tap<0>(acc, xr, ws + 2296);  // kd=2 kh=1 kw=0
        tap<1>(acc, xr, ws + 2304);  // kd=2 kh=1 kw=1
        tap<2>(acc, xr, ws + 2312);  // kd=2 kh=1 kw=2
        tap<3>(acc, xr, ws + 2320);  // kd=2 kh=1 kw=3
        tap<4>(acc, xr, ws + 2328);  // kd=2 kh=1 kw=4
        tap<5>(acc, xr, ws + 2336);  // kd=2 kh=1 kw=5
        tap<6>(acc, xr, ws + 2344);  // kd=2 kh=1 kw=6
      }
      if (inside(id0 + 2, d) && inside(ih0 + 2, h)) {  // ci=2 kd=2 kh=2
        float xr[ROW];
        load_row(xr, xc + 2 + 2 * hwc + 2 * wc, iw0, w);
        tap<0>(acc, xr, ws + 2352);  // kd=2 kh=2 kw=0
        tap<1>(acc, xr, ws + 2360);  // kd=2 kh=2 kw=1
        tap<2>(acc, xr, ws + 2368);  // kd=2 kh=2 kw=2
        tap<3>(acc, xr, ws + 2376);  // kd=2 kh=2 kw=3
        tap<4>(acc, xr, ws + 2384);  // kd=2 kh=2 kw=4
        tap<5>(acc, xr, ws + 2392);  // kd=2 kh=2 kw=5
        tap<6>(acc, xr, ws + 2400);  // kd=2 kh=2 kw=6
      }
      if (inside(id0 + 2, d) && inside(ih0 + 3, h)) {  // ci=2 kd=2 kh=3
        float xr[ROW];
        load_row(xr, xc + 2 + 2 * hwc + 3 * wc, iw0, w);
        tap<0>(acc, xr, ws + 2408);  // kd=2 kh=3 kw=0
        tap<1>(acc, xr, ws + 2416);  // kd=2 kh=3 kw=1
        tap<2>(acc, xr, ws + 2424);  // kd=2 kh=3 kw=2
        tap<3>(acc, xr, ws + 2432);  // kd=2 kh=3 kw=3
        tap<4>(acc, xr, ws + 2440);  // kd=2 kh=3 kw=4
        tap<5>(acc, xr, ws + 2448);  // kd=2 kh=3 kw=5
        tap<6>(acc, xr, ws + 2456);  // kd=2 kh=3 kw=6
      }
      if (inside(id0 + 2, d) && inside(ih0 + 4, h)) {  // ci=2 kd=2 kh=4
        float xr[ROW];
        load_row(xr, xc + 2 + 2 * hwc + 4 * wc, iw0, w);
        tap<0>(acc, xr, ws + 2464);  // kd=2 kh=4 kw=0
        tap<1>(acc, xr, ws + 2472);  // kd=2 kh=4 kw=1
        tap<2>(acc, xr, ws + 2480);  // kd=2 kh=4 kw=2
        tap<3>(acc, xr, ws + 2488);  // kd=2 kh=4 kw=3
        tap<4>(acc, xr, ws + 2496);  // kd=2 kh=4 kw=4
        tap<5>(acc, xr, ws + 2504);  // kd=2 kh=4 kw=5
        tap<6>(acc, xr, ws + 2512);  // kd=2 kh=4 kw=6
      }
    }
  }

  if (!active) return;
  scalar_t* yp = y + (((ni * od + odi) * oh + ohi) * static_cast<index_t>(ow) + ow0) * CO + co0;
  float b[COT];
#pragma unroll
  for (int c = 0; c < COT; ++c) b[c] = load(bias + co0 + c);
#pragma unroll
  for (int j = 0; j < WT; ++j) {
    float v[COT];
#pragma unroll
    for (int c = 0; c < COT; ++c) v[c] = acc[c][j] + b[c];
    store_channels(yp + j * CO, v);
  }
}

extern "C" const char* conv3d_codegen_error_string(int code) {
  return cudaGetErrorString(static_cast<cudaError_t>(code));
}

extern "C" int conv3d_fwd_k3x5x7_s1_p0_d1_g1_ci3_co64_f32_cl_launch(const void* x, const void* weight, const void* bias, void* y,
                           const long long* args, int nargs, void* stream_handle) {
  if (nargs != 7) return static_cast<int>(cudaErrorInvalidValue);
  const long long n = args[0];
  const long long d = args[1];
  const long long h = args[2];
  const long long w = args[3];
  const long long od = args[4];
  const long long oh = args[5];
  const long long ow = args[6];
  const cudaStream_t stream = static_cast<cudaStream_t>(stream_handle);
  const long long items = n * od * oh * ((ow + WT - 1) / WT);  // one per thread
  if (items == 0) return static_cast<int>(cudaSuccess);
  if (ow < WT) return static_cast<int>(cudaErrorInvalidValue);  // the dispatcher sends these to the generic kernel
  const long long blocks = (items + BLOCK - 1) / BLOCK;
  if (blocks * (CO / COT) > 0x7fffffffLL) return static_cast<int>(cudaErrorInvalidConfiguration);
  const dim3 grid(static_cast<unsigned>(blocks * (CO / COT)));  // channel blocks fastest
  conv3d_fwd_k3x5x7_s1_p0_d1_g1_ci3_co64_f32_cl<<<grid, BLOCK, 0, stream>>>(
      static_cast<const scalar_t*>(x), static_cast<const scalar_t*>(weight),
      static_cast<const scalar_t*>(bias), static_cast<scalar_t*>(y),
      static_cast<int>(n), static_cast<int>(d), static_cast<int>(h), static_cast<int>(w),
      static_cast<int>(od), static_cast<int>(oh), static_cast<int>(ow));

  return static_cast<int>(cudaGetLastError());
}
