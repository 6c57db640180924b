// A CPU emulator of just enough CUDA to run one emitted kernel source (rendered with emulate=True)
// under g++ on a machine without a GPU, for the unit tests. It is not fast and not general:
//
// - Every CUDA thread of a block is a fiber (its own stack, switched with a few lines of x86-64
//   assembly); all fibers of a block run on the calling OS thread, one at a time, switching only
//   where a thread waits: __syncthreads(), and the warp-wide ldmatrix and mma.sync (m16n8k16 on
//   16-bit types, m16n8k8 on tf32), which each gather the 32 lanes' operands behind a warp
//   barrier. Blocks of the grid run one after another.
// - Shared memory is a byte array per block, filled with 0xff (NaN in every float format) so a
//   read of anything never written shows in the result. Every shared access goes through the
//   primitives below and is checked for bounds and alignment; global loads and stores are checked
//   against the ranges the test registered (emu_register).
// - cp.async copies land when the thread waits for their group (lazy: a read before the wait sees
//   stale bytes) or when issued (eager: an overwrite of a buffer other warps still read shows);
//   the tests run both.
// - A violation is recorded (emu_error) and the launch returns an error; a barrier that can never
//   complete (some threads exited, or wait elsewhere) is reported as a deadlock.
//
// The entry point is the emitted C launcher itself; cudaGetDevice, the occupancy query and the
// device attribute query answer from emu_configure.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <functional>
#include <string>
#include <vector>

#define __launch_bounds__(...)
#define __syncthreads() emu::syncthreads()
#define threadIdx (emu::fiber().thread_idx)
#define blockIdx (emu::block().block_idx)
#define gridDim (emu::block().grid_dim)
#define blockDim (emu::block().block_dim)

#define cudaGetLastError() emu::last_error()
#define cudaGetErrorString(code) emu::error_string(code)
#define cudaGetDevice(p) (*(p) = emu::config().device, cudaSuccess)
#define cudaFuncSetAttribute(...) cudaSuccess
#define cudaOccupancyMaxActiveBlocksPerMultiprocessor(p, ...) (*(p) = emu::config().blocks_per_sm, cudaSuccess)
#define cudaDeviceGetAttribute(p, ...) (*(p) = emu::config().sms, cudaSuccess)

extern "C" void emu_switch(void** save_sp, void* next_sp);
// Saves the callee-saved registers on the current stack, stores the stack pointer in *save_sp,
// and resumes the stack next_sp (made by this function, or by Block::start for a new fiber).
asm(R"(
    .text
    .globl emu_switch
    .hidden emu_switch
    .type emu_switch, @function
emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch, .-emu_switch
)");

namespace emu {
namespace {

struct Config {
  int sms = 2, blocks_per_sm = 1, device = 0;
  bool eager_copies = false;
};

Config& config() {
  static Config c;
  return c;
}

std::string& error() {
  static std::string e;
  return e;
}

void fail(const std::string& what) {
  if (error().empty()) error() = what;
}

cudaError_t last_error() { return error().empty() ? cudaSuccess : cudaErrorLaunchFailure; }

const char* error_string(cudaError_t code) { return code == cudaSuccess ? "no error" : error().c_str(); }

struct Range {
  uintptr_t begin, end;
};

std::vector<Range>& ranges() {
  static std::vector<Range> r;
  return r;
}

bool in_global(const void* p, size_t bytes) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  for (const Range& r : ranges())
    if (a >= r.begin && a + bytes <= r.end) return true;
  return false;
}

struct Copy {
  uint32_t dst;
  const unsigned char* src;
  int bytes;  // 4, or 0: zeros
};

struct Barrier {
  int count = 0, arrived = 0;
  unsigned long generation = 0;
};

constexpr size_t STACK_BYTES = 256 * 1024;

struct Fiber {
  void* sp = nullptr;
  std::vector<unsigned char> stack;
  bool done = false;
  uint3 thread_idx{};
  std::vector<Copy> open;                 // cp.async not yet committed
  std::deque<std::vector<Copy>> groups;   // committed, not yet landed (lazy mode)
};

struct Warp {
  Barrier bar;
  uint32_t addr[32];
  uint32_t a[32][4], b[32][2];
  float c[32][4];
};

struct Block {
  dim3 block_idx, grid_dim, block_dim;
  std::vector<unsigned char> smem;
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  Barrier bar;
  std::function<void()> body;
  int current = 0;
  void* scheduler_sp = nullptr;
  unsigned long progress = 0;  // arrivals, completed barriers, finished threads
};

Block*& current_block() {
  static Block* b = nullptr;
  return b;
}

Block& block() { return *current_block(); }
Fiber& fiber() { return block().fibers[block().current]; }
int lane_id() { return block().current % 32; }
Warp& warp() { return block().warps[block().current / 32]; }

void yield() { emu_switch(&fiber().sp, block().scheduler_sp); }

void wait(Barrier& bar) {
  Block& b = block();
  ++b.progress;
  const unsigned long generation = bar.generation;
  if (++bar.arrived == bar.count) {
    bar.arrived = 0;
    ++bar.generation;
    return;
  }
  while (bar.generation == generation) yield();
}

void syncthreads() { wait(block().bar); }

// ---- shared memory ----

unsigned char* shared_at(uint32_t addr, uint32_t bytes, uint32_t alignment, const char* what) {
  static unsigned char scratch[64];
  Block& b = block();
  if (addr % alignment) {
    char text[160];
    snprintf(text, sizeof text, "%s: shared address %u not %u-byte aligned (thread %d of block %u,%u)", what, addr,
             alignment, b.current, b.block_idx.x, b.block_idx.y);
    fail(text);
    return scratch;
  }
  if (static_cast<size_t>(addr) + bytes > b.smem.size()) {
    char text[160];
    snprintf(text, sizeof text, "%s: shared bytes %u..%u past the %zu of the block (thread %d)", what, addr,
             addr + bytes, b.smem.size(), b.current);
    fail(text);
    return scratch;
  }
  return b.smem.data() + addr;
}

uint16_t shared16(uint32_t addr, const char* what) {
  uint16_t v;
  memcpy(&v, shared_at(addr, 2, 2, what), 2);
  return v;
}

uint32_t shared32(uint32_t addr, const char* what) {
  uint32_t v;
  memcpy(&v, shared_at(addr, 4, 4, what), 4);
  return v;
}

unsigned char* dynamic_shared() { return block().smem.data(); }

// ---- cp.async ----

void land(const Copy& c) {
  unsigned char* d = shared_at(c.dst, 4, 4, "cp.async destination");
  if (c.bytes)
    memcpy(d, c.src, 4);
  else
    memset(d, 0, 4);
}

void land_all(Fiber& f) {
  for (auto& group : f.groups)
    for (const Copy& c : group) land(c);
  f.groups.clear();
  for (const Copy& c : f.open) land(c);
  f.open.clear();
}

// ---- mma.sync.m16n8k16 .row.col f32 += (bf16 | f16) ----

float element(uint32_t bits, bool bf16) {
  const uint16_t h = static_cast<uint16_t>(bits);
  if (bf16) {
    const uint32_t f = static_cast<uint32_t>(h) << 16;
    float v;
    memcpy(&v, &f, 4);
    return v;
  }
  return __half2float(__ushort_as_half(h));
}

// One warp's mma.sync: the lanes' operands exchanged, then C register `reg` of each lane (row
// g + 8 * (reg / 2), column 2t + reg % 2; C row r, column n is in lane (r % 8) * 4 + n / 2,
// register 2 * (r / 8) + n % 2) plus the sum over k < K of product(W, row, col, k).
template <int K, typename Product>
void warp_mma(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], Product product) {
  Warp& W = warp();
  const int lane = lane_id();
  memcpy(W.a[lane], a, sizeof a);
  memcpy(W.b[lane], b, sizeof b);
  memcpy(W.c[lane], c, sizeof c);
  wait(W.bar);
  const int g = lane / 4, t = lane % 4;
  float out[4];
  for (int reg = 0; reg < 4; ++reg) {
    const int row = g + 8 * (reg / 2), col = 2 * t + reg % 2;
    float sum = W.c[lane][reg];
    for (int k = 0; k < K; ++k) sum += product(W, row, col, k);
    out[reg] = sum;
  }
  wait(W.bar);
  memcpy(c, out, sizeof out);
}

void mma_m16n8k16(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], bool bf16) {
  // PTX ISA fragments: A row r, column k is in lane (r % 8) * 4 + (k % 8) / 2, register
  // r / 8 + 2 * (k / 8), half k % 2; B row k, column n in lane n * 4 + (k % 8) / 2, register
  // k / 8, half k % 2.
  warp_mma<16>(c, a, b, [bf16](const Warp& W, int row, int col, int k) {
    const uint32_t av = W.a[(row % 8) * 4 + (k % 8) / 2][row / 8 + 2 * (k / 8)] >> (16 * (k % 2));
    const uint32_t bv = W.b[col * 4 + (k % 8) / 2][k / 8] >> (16 * (k % 2));
    return element(av, bf16) * element(bv, bf16);
  });
}

// ---- tf32: cvt.rna.tf32.f32 and mma.sync.m16n8k8 .row.col f32 += tf32 x tf32 ----

// float32 -> tf32 rounded to nearest, ties away from zero (the low 13 bits of the result zero);
// NaN and infinity pass unchanged.
uint32_t cvt_rna_tf32(float v) {
  uint32_t bits;
  memcpy(&bits, &v, 4);
  if ((bits & 0x7f800000u) == 0x7f800000u) return bits;
  return (bits + 0x1000u) & ~0x1fffu;  // sign and magnitude: adding half an ulp to the magnitude rounds ties away
}

// What the tensor cores take of a 32-bit operand: its tf32 part (the low 13 mantissa bits dropped).
float tf32_operand(uint32_t bits) {
  bits &= ~0x1fffu;
  float v;
  memcpy(&v, &bits, 4);
  return v;
}

void mma_m16n8k8_tf32(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  // PTX ISA fragments: A row r, column k is in lane (r % 8) * 4 + k % 4, register r / 8 + 2 * (k / 4);
  // B row k, column n in lane n * 4 + k % 4, register k / 4.
  warp_mma<8>(c, a, b, [](const Warp& W, int row, int col, int k) {
    return tf32_operand(W.a[(row % 8) * 4 + k % 4][row / 8 + 2 * (k / 4)]) *
           tf32_operand(W.b[col * 4 + k % 4][k / 4]);
  });
}

// ---- ldmatrix (shared, b16, 8x8 matrices; lanes 8j..8j+7 give the row addresses of matrix j) ----

template <int MATRICES, bool TRANS>
void ldmatrix(uint32_t (&r)[MATRICES], uint32_t addr) {
  Warp& W = warp();
  const int lane = lane_id();
  W.addr[lane] = addr;
  wait(W.bar);
  const int g = lane / 4, t = lane % 4;
  for (int j = 0; j < MATRICES; ++j) {
    for (int i = 0; i < 8; ++i)  // every row address must be a 16-byte aligned row inside shared memory
      shared_at(W.addr[8 * j + i], 16, 16, "ldmatrix row");
    if (TRANS)  // lane (g, t): (row 2t, column g), (row 2t + 1, column g)
      r[j] = shared16(W.addr[8 * j + 2 * t] + 2 * g, "ldmatrix") |
             static_cast<uint32_t>(shared16(W.addr[8 * j + 2 * t + 1] + 2 * g, "ldmatrix")) << 16;
    else  // lane (g, t): row g, columns 2t, 2t + 1
      r[j] = shared32(W.addr[8 * j + g] + 4 * t, "ldmatrix");
  }
  wait(W.bar);
}

// ---- running a grid ----

void trampoline() {
  Block& b = block();
  b.body();
  Fiber& f = fiber();
  land_all(f);
  f.done = true;
  ++b.progress;
  emu_switch(&f.sp, b.scheduler_sp);
  __builtin_unreachable();
}

void run_block(Block& b, int threads) {
  b.fibers.resize(threads);  // kept from block to block of a launch: a stack is allocated once
  for (Fiber& f : b.fibers) {
    f.done = false;
    f.open.clear();
    f.groups.clear();
  }
  b.warps.assign((threads + 31) / 32, Warp{});
  for (Warp& w : b.warps) w.bar.count = 32;
  b.bar = Barrier{};
  b.bar.count = threads;
  for (int i = 0; i < threads; ++i) {
    Fiber& f = b.fibers[i];
    f.stack.resize(STACK_BYTES);
    void** sp = reinterpret_cast<void**>(reinterpret_cast<uintptr_t>(f.stack.data() + STACK_BYTES) & ~uintptr_t(15));
    *--sp = nullptr;                                   // the trampoline's return address: never used
    *--sp = reinterpret_cast<void*>(&trampoline);      // where emu_switch's ret goes
    for (int r = 0; r < 6; ++r) *--sp = nullptr;       // rbp, rbx, r12-r15
    f.sp = sp;
    f.thread_idx = uint3{static_cast<unsigned>(i), 0u, 0u};
  }
  int live = threads;
  while (live > 0) {
    const unsigned long before = b.progress;
    for (int i = 0; i < threads; ++i) {
      if (b.fibers[i].done) continue;
      b.current = i;
      emu_switch(&b.scheduler_sp, b.fibers[i].sp);
      if (b.fibers[i].done) --live;
    }
    if (live > 0 && b.progress == before) {
      char text[160];
      snprintf(text, sizeof text, "deadlock in block %u,%u: %d of %d threads wait at barriers that cannot complete",
               b.block_idx.x, b.block_idx.y, live, threads);
      fail(text);
      return;
    }
  }
}

void launch(dim3 grid, dim3 threads, size_t smem_bytes, const std::function<void()>& kernel) {
  Block b;
  b.grid_dim = grid;
  b.block_dim = threads;
  b.body = kernel;
  current_block() = &b;
  for (unsigned y = 0; y < grid.y && error().empty(); ++y)
    for (unsigned x = 0; x < grid.x && error().empty(); ++x) {
      b.block_idx = dim3(x, y, 1);
      b.smem.assign(smem_bytes, 0xff);
      run_block(b, static_cast<int>(threads.x));
    }
  current_block() = nullptr;
}

}  // namespace
}  // namespace emu

// ---- what the kernel calls by CUDA's names ----

template <class T>
T __ldg(const T* p) {
  if (!emu::in_global(p, sizeof(T))) {
    emu::fail("global load outside the registered tensors");
    return T{};
  }
  return *p;
}

template <class T>
void __stcs(T* p, T v) {
  if (!emu::in_global(p, sizeof(T))) {
    emu::fail("global store outside the registered tensors");
    return;
  }
  *p = v;
}

inline size_t __cvta_generic_to_shared(const void* p) {
  return static_cast<size_t>(static_cast<const unsigned char*>(p) - emu::block().smem.data());
}

inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }

inline void cp_async4(uint32_t dst, const void* src, int src_bytes) {
  emu::shared_at(dst, 4, 4, "cp.async destination");
  if (src_bytes != 0 && (src_bytes != 4 || reinterpret_cast<uintptr_t>(src) % 4 || !emu::in_global(src, 4))) {
    emu::fail("cp.async source outside the registered tensors or not 4-byte aligned");
    src_bytes = 0;
  }
  const emu::Copy c{dst, static_cast<const unsigned char*>(src), src_bytes};
  if (emu::config().eager_copies)
    emu::land(c);
  else
    emu::fiber().open.push_back(c);
}

inline void cp_async_commit() {
  emu::Fiber& f = emu::fiber();
  f.groups.push_back(std::move(f.open));
  f.open.clear();
}

template <int N>
void cp_async_wait() {
  auto& groups = emu::fiber().groups;
  while (static_cast<int>(groups.size()) > N) {
    for (const emu::Copy& c : groups.front()) emu::land(c);
    groups.pop_front();
  }
}

inline void st_shared_u16(uint32_t addr, unsigned short v) { memcpy(emu::shared_at(addr, 2, 2, "st.shared.u16"), &v, 2); }
inline void st_shared_u32(uint32_t addr, uint32_t v) { memcpy(emu::shared_at(addr, 4, 4, "st.shared.u32"), &v, 4); }
inline void st_shared_f32(uint32_t addr, float v) { memcpy(emu::shared_at(addr, 4, 4, "st.shared.f32"), &v, 4); }

inline float ld_shared_f32(uint32_t addr) {
  float v;
  memcpy(&v, emu::shared_at(addr, 4, 4, "ld.shared.f32"), 4);
  return v;
}

inline void ldmatrix_x2_trans(uint32_t& r0, uint32_t& r1, uint32_t addr) {
  uint32_t r[2];
  emu::ldmatrix<2, true>(r, addr);
  r0 = r[0], r1 = r[1];
}

inline void ldmatrix_x2(uint32_t& r0, uint32_t& r1, uint32_t addr) {
  uint32_t r[2];
  emu::ldmatrix<2, false>(r, addr);
  r0 = r[0], r1 = r[1];
}

inline void ldmatrix_x4(uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3, uint32_t addr) {
  uint32_t r[4];
  emu::ldmatrix<4, false>(r, addr);
  r0 = r[0], r1 = r[1], r2 = r[2], r3 = r[3];
}

// ---- the test's controls ----

extern "C" void emu_configure(int sms, int blocks_per_sm, int eager_copies) {
  emu::config().sms = sms;
  emu::config().blocks_per_sm = blocks_per_sm;
  emu::config().device = sms * 8 + blocks_per_sm;  // a launcher caches its grid size per device
  emu::config().eager_copies = eager_copies != 0;
}

extern "C" void emu_register(const void* p, size_t bytes) {
  emu::ranges().push_back({reinterpret_cast<uintptr_t>(p), reinterpret_cast<uintptr_t>(p) + bytes});
}

extern "C" void emu_reset() {
  emu::ranges().clear();
  emu::error().clear();
}

extern "C" const char* emu_error() { return emu::error().c_str(); }
