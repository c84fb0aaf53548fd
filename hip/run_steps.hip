// GPU XLA FFI handler `fumjax_run_steps`: T whole simulation steps (dynamics._simulate) in one call,
// CUDA (through hip_compat.h) or ROCm. Same operands, attributes, results and in-place aliasing as the
// CPU handler in cpp/run_steps.cc; semantics and FMA placements follow cpp/run_steps_compute.h:
//   LIF:          v' = fma(dt/tau, v_rest - v, v) + I          (I = ring[slot] + i_ext, rounded first)
//   traces:       x' = fma(x, decay_x, spiked) ; y' = fma(y, decay_y, spiked)
//   eligibility:  e_hat' = fma(dw, inv_pow[step + 1 - t0], e_hat)
//   everything else one rounding per operation (explicit _rn intrinsics, built with --fmad=false).
//
// Three execution paths, chosen from N, D and the dtype, or by the attribute gpu_path (fused.py sets it at
// trace time from FUMJAX_GPU_RUN_PATH = auto|block|multi|cluster; cluster is opt-in, see its section below).
// Synapse operands (issue 5): row_ptr / in_ptr / in_syn uint32 (E < 2^32, 64-bit index arithmetic), post int32,
// pre_bucket int32 + attribute pre_shift instead of a per-synapse pre (PreOfSlot), delay (E,) or (0,) = all 1;
// w / elig / gamma^k in the state's dtype or float16 / bfloat16 with float32 state (Ld / St).
//
// * cluster (CUDA, compute capability >= 9.0): a thread-block cluster, synapses staged in shared memory by post,
//   spike flags exchanged through distributed shared memory, one cluster barrier per step, inputs summed in
//   the reference's order (bit-exact by construction).
// * block: ONE persistent thread block (768 threads up to N = 1536 in float, 512 up to 4096, else 1024) runs
//   all T steps. Each thread owns R consecutive neurons (v, dt/tau, v_th, refrac, window count in registers);
//   traces, spike flags, the spike list and, staged once per call, row_ptr, in_ptr, the pre codes, a fine
//   pre-of-slot table and (E < 2^16) in_syn live in shared memory; the input ring stays in global memory (L2).
//   Per step: (A) input + LIF + pending trace update of the previous step, the spike list appended by one
//   shared atomic per warp with spikes; barrier; (C) warp tasks: the outgoing row of each spiking neuron
//   (transmission by global atomicAdd into the ring, then STDP on the same synapse with the weight read before
//   it) and its incoming list (STDP of synapses whose pre did not spike), every global load of a lane's
//   synapses issued before the first use; barrier. Each synapse is updated by exactly one thread.
//   2 __syncthreads per step; no launches, no host round trips. Under rstdp in float with N <= 1024 the block
//   is split instead (RunStepsBlockSplitKernel): 512 threads run the neuron pass and the transmission, 512 the
//   STDP and the traces, up to 3 steps behind, handed over through named barriers.
// * multi: for large networks (7M x 500), per step a flush kernel (returns at once unless a segment of deferred
//   LTP ends or the eligibility is renormalized: then one pass over every row), a neuron kernel (grid over N;
//   a spike list) and a synapse kernel (a fixed grid of warps over balanced tasks: parts of each spike's
//   outgoing row, with the LTP its synapses deferred; global atomicAdd into the ring), then a last flush and a
//   finalize kernel; its section below has the details. Everything is enqueued on XLA's stream: no host
//   synchronization, no allocation (the scratch is an extra result), so the handler is CUDA-graph (command
//   buffer) compatible.
//
// Trace bookkeeping: the reference uses xd = x*decay (rounded) inside STDP and stores fma(x, decay, spike).
// The block and cluster paths keep x (pre-decay) during step t's STDP, compute xd on the fly, and apply
// fma(x, decay, spike_t) at the start of step t+1 (or at the end of the call); the multi path stores the
// decayed values its synapse kernel needs in the scratch and updates x, y at once: the same operations on
// the same values.
//
// The eligibility clock is a closed form of (step, elig_t0) at the call's start, so no kernel needs a value
// another kernel of the same step writes: renormalizations happen at r1, r1+K, r1+2K, ... with
// r1 = step0 if step0 - t0 >= K else t0 + K.
//
// Rounding difference vs the CPU: several spikes reaching one neuron in one step are summed by atomicAdd,
// in whatever order the threads arrive, while the CPU adds them in ascending synapse order. With two
// addends (into a zeroed slot) the result is the same either way (0 + a + b is commutative); from three on
// the sum may differ by an ulp, which can flip a spike that sits exactly at threshold. Rasters therefore
// match the CPU exactly in most runs, not all (tests/test_fused_gpu.py measures how often).
// Index arrays are bounds-guarded on the device (out-of-range entries are skipped), not reported as errors
// as on the CPU: reporting would need a host synchronization.

#include <climits>
#include <cstdint>
#include <cstdlib>
#include <algorithm>
#include <cstring>
#include <mutex>
#include <string>
#include <type_traits>

#include "hip_compat.h"
#include "xla/ffi/api/ffi.h"

#if !defined(FUMJAX_USE_HIP)
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
using Half = __half;
using BFloat16 = __nv_bfloat16;
#else
#include <hip/hip_bf16.h>
#include <hip/hip_fp16.h>
using Half = __half;
using BFloat16 = __hip_bfloat16;
#endif

#if !defined(FUMJAX_USE_HIP)
#define hipMemcpyAsync cudaMemcpyAsync
#define hipMemsetAsync cudaMemsetAsync
#define hipMemcpyDeviceToDevice cudaMemcpyDeviceToDevice
#define hipFuncSetAttribute cudaFuncSetAttribute
#define hipOccupancyMaxActiveBlocksPerMultiprocessor cudaOccupancyMaxActiveBlocksPerMultiprocessor
#define hipFuncAttributeMaxDynamicSharedMemorySize cudaFuncAttributeMaxDynamicSharedMemorySize
#define hipGetDevice cudaGetDevice
#define hipDeviceGetAttribute cudaDeviceGetAttribute
#define hipDevAttrMaxSharedMemoryPerBlockOptin cudaDevAttrMaxSharedMemoryPerBlockOptin
#define hipDevAttrMultiProcessorCount cudaDevAttrMultiProcessorCount
#define hipDevAttrComputeCapabilityMajor cudaDevAttrComputeCapabilityMajor
#define FUMJAX_FULL_MASK 0xffffffffu
#define FUMJAX_WARP 32
#else
#define hipDevAttrMaxSharedMemoryPerBlockOptin hipDeviceAttributeSharedMemPerBlockOptin
#define hipDevAttrMultiProcessorCount hipDeviceAttributeMultiprocessorCount
#define hipDevAttrComputeCapabilityMajor hipDeviceAttributeComputeCapabilityMajor
#define FUMJAX_FULL_MASK 0xffffffffffffffffull
#define FUMJAX_WARP 64
#endif

namespace ffi = xla::ffi;

namespace fumjax {
namespace {

// ---------------------------------------------------------------- arithmetic (one rounding each)
__device__ __forceinline__ float Div(float a, float b) { return __fdiv_rn(a, b); }
__device__ __forceinline__ float Mul(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ float Add(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ float Sub(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ float Fma(float a, float b, float c) { return __fmaf_rn(a, b, c); }
__device__ __forceinline__ double Div(double a, double b) { return __ddiv_rn(a, b); }
__device__ __forceinline__ double Mul(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ double Add(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ double Sub(double a, double b) { return __dsub_rn(a, b); }
__device__ __forceinline__ double Fma(double a, double b, double c) { return __fma_rn(a, b, c); }

// ---------------------------------------------------------------- synapse storage W (w, elig, gamma^k)
// float/double are stored as themselves; float16/bfloat16 (with float32 state T) are widened to T, updated
// in T with the same operations, and rounded back to nearest even (cpp/run_steps_compute.h, Store<T, W>).
__device__ __forceinline__ float Ld(float x) { return x; }
__device__ __forceinline__ double Ld(double x) { return x; }
__device__ __forceinline__ float Ld(Half x) { return __half2float(x); }
__device__ __forceinline__ float Ld(BFloat16 x) { return __bfloat162float(x); }
template <typename W, typename T>
__device__ __forceinline__ W St(T x) {
  return x;
}
template <>
__device__ __forceinline__ Half St<Half, float>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ BFloat16 St<BFloat16, float>(float x) {
  return __float2bfloat16_rn(x);
}

template <typename T, typename W>
struct GpuArgs {
  int32_t n = 0, d = 1, t_steps = 0, k_max = 0, mode = 0, refractory_steps = 0, pre_shift = 9;
  int64_t e = 0;  // synapses (< 2^32): every synapse index is 64-bit arithmetic
  T v_rest{}, v_reset{}, dt{}, g_syn{}, a_plus{}, a_minus{}, w_clip{}, decay_x{}, decay_y{};
  // State (result buffers, updated in place).
  T* v;
  int32_t* refrac;
  T* x;
  T* y;
  T* ring;
  W* w;
  W* elig;
  int32_t* elig_t0;
  int32_t* window_spikes;
  int32_t* step;
  uint8_t* spikes;  // (T, N)
  T* work;          // (16 / sizeof(T) + L + 3, N + 2) scratch of the multi path (an extra result, discarded)
  // Read-only.
  const T* tau;
  const T* v_th;
  const T* i_ext;
  const uint32_t* row_ptr;    // (N+1,)
  const int32_t* pre_bucket;  // ((E-1 >> pre_shift) + 1,)
  const int32_t* post;        // (E,)
  const int32_t* delay;       // (E,), or null when D == 1 (all delays 1)
  const uint32_t* in_ptr;     // (N+1,)
  const uint32_t* in_syn;     // (E,)
  const uint8_t* excitatory;
  const W* gamma_pow;
  const T* inv_pow;
};

// Presynaptic neuron of CSR slot s (0 <= s < E), without a per-synapse pre array: the bucket's first
// candidate, then forward to the row that holds s. Always in [0, N) (a bad table gives a wrong neuron, never
// an out-of-range access; fused.py builds or takes the table, the CPU handler checks it).
template <typename T, typename W>
__device__ __forceinline__ int32_t PreOfSlot(const GpuArgs<T, W>& a, int64_t s) {
  int32_t i = __ldg(a.pre_bucket + (s >> a.pre_shift));
  i = i < 0 ? 0 : (i >= a.n ? a.n - 1 : i);
  while (i + 1 < a.n && static_cast<int64_t>(__ldg(a.row_ptr + i + 1)) <= s) ++i;
  return i;
}

__device__ __forceinline__ int32_t FloorMod(int32_t a, int32_t m) {
  int32_t r = a % m;
  return (r != 0 && ((r < 0) != (m < 0))) ? r + m : r;
}

// jnp indexing of a length-`len` table with a traced index: negative wraps once, then clamps.
__device__ __forceinline__ int32_t JnpIndex(int64_t i, int32_t len) {
  if (i < 0) i += len;
  if (i < 0) i = 0;
  if (i > len - 1) i = len - 1;
  return static_cast<int32_t>(i);
}

// Eligibility clock at step s (s >= s0) of a call that started at (s0, t0_init): whether step s
// renormalizes, with which table index, and the origin t0 in effect for s's additions.
struct EligClock {
  bool renorm;
  int32_t scale_idx;
  int32_t t0;
};
__device__ __forceinline__ EligClock ClockAt(int32_t s0, int32_t t0_init, int32_t k, int32_t s) {
  EligClock c{false, 0, t0_init};
  const int32_t since0 = s0 - t0_init;
  const int32_t r1 = since0 >= k ? s0 : t0_init + k;
  if (s < r1) return c;
  const int32_t m = (s - r1) / k;
  c.t0 = r1 + m * k;
  c.renorm = (s == c.t0);
  const int32_t since = (s == r1) ? s - t0_init : k;
  c.scale_idx = JnpIndex(since < k ? since : k, k + 1);
  return c;
}

// w clipped to [-w_clip, w_clip].
template <typename T, typename W>
__device__ __forceinline__ T ClipW(const GpuArgs<T, W>& a, T x) {
  const T lo = x < -a.w_clip ? -a.w_clip : x;
  return lo > a.w_clip ? a.w_clip : lo;
}

// One synapse's update by dw, its current values loaded (wk = w[k], ek = elig[k], in T): eligibility =
// fma(dw, inv, ek) (rstdp) or w = clip(wk + dw) (stdp).
template <typename T, typename W, typename I>
__device__ __forceinline__ void StoreDw(const GpuArgs<T, W>& a, I k, T dw, bool rstdp, T inv, T wk, T ek) {
  if (rstdp) {
    a.elig[k] = St<W>(Fma(dw, inv, ek));
  } else {
    a.w[k] = St<W>(ClipW(a, Add(wk, dw)));
  }
}

// The STDP weight change of a synapse whose pre has code 0 (inhibitory) or 1 (excitatory); code 2 (static)
// is the caller's to skip.
template <typename T, typename W>
__device__ __forceinline__ T StdpDw(const GpuArgs<T, W>& a, T xj, T yi, bool spk_i, bool spk_j, uint8_t code) {
  const T zero = T(0);
  const T ltp = spk_i ? Mul(a.a_plus, Mul(xj, a.decay_x)) : zero;
  const T ltd = spk_j ? Mul(a.a_minus, Mul(yi, a.decay_y)) : zero;
  return code == 1 ? Sub(ltp, ltd) : -Sub(ltp, ltd);
}

// LIF for one neuron; returns whether it spiked.
template <typename T, typename W>
__device__ __forceinline__ bool Lif(const GpuArgs<T, W>& a, T& v, int32_t& r, T ratio, T v_th, T cur) {
  const T vn = Add(Fma(ratio, Sub(a.v_rest, v), v), cur);
  const bool free = r <= 0;
  const bool ge = vn >= v_th;
  const bool spiked = ge & free;
  const bool keep = free & !ge;
  v = keep ? vn : a.v_reset;
  const int32_t dec = static_cast<int32_t>(static_cast<uint32_t>(r) - 1u);
  const int32_t held = dec > 0 ? dec : 0;
  r = spiked ? a.refractory_steps : held;
  return spiked;
}

// =====================================================================================================
// Block path: one persistent block.
// =====================================================================================================
// Dense eligibility renormalization elig[k] *= scale by kThreads threads (tid in [0, kThreads)): 16-byte
// vectors, 4 in flight per thread (one L2 round trip per 4 x 16 x kThreads bytes), then the unaligned tail.
template <typename T, typename W, int kThreads>
__device__ __forceinline__ void RenormBlock(W* elig, int64_t e, T scale, int tid) {
  constexpr int kV = 16 / sizeof(W);
  constexpr int kU = 4;
  int64_t nv = 0;
  if ((reinterpret_cast<uintptr_t>(elig) & 15u) == 0) {
    nv = e / kV;
    uint4* vp = reinterpret_cast<uint4*>(elig);
    for (int64_t b = tid; b < nv; b += kU * kThreads) {
      uint4 buf[kU];
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        if (b + u * kThreads < nv) buf[u] = vp[b + u * kThreads];
      }
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        if (b + u * kThreads >= nv) continue;
        W* x = reinterpret_cast<W*>(&buf[u]);
#pragma unroll
        for (int c = 0; c < kV; ++c) x[c] = St<W>(Mul(Ld(x[c]), scale));
        vp[b + u * kThreads] = buf[u];
      }
    }
  }
  for (int64_t k = nv * kV + tid; k < e; k += kThreads) elig[k] = St<W>(Mul(Ld(elig[k]), scale));
}

// PreOfSlot over the block path's staged row_ptr and pre table (shared memory); 32-bit slots (the block path
// takes E < 2^31).
__device__ __forceinline__ int32_t PreOfSlotShared(const int32_t* ptab, const uint32_t* rp, int32_t ts, int32_t n,
                                                   uint32_t s) {
  int32_t i = ptab[s >> ts];
  i = i < 0 ? 0 : (i >= n ? n - 1 : i);
  while (i + 1 < n && rp[i + 1] <= s) ++i;
  return i;
}

// Block path, per-call staging (shared memory, once per call): row_ptr, in_ptr, the pre codes, a fine
// pre-of-slot table ptab[b] = the row that holds slot b << ts (built in the kernel from the staged row_ptr;
// PreOfSlot then walks forward over row_ptr in shared memory, ~0-1 rows at ts = 5 and K = 50) and, where
// E < 2^16 and it fits, in_syn as uint16. A step's dependent chain then holds one L2 round trip per synapse
// (the out-row's post/w/eligibility loads, issued together; the in-list's eligibility or weight load, issued
// as soon as in_syn gives its index and before the pre lookup) instead of 2 (out-row) and 4-10 (in-list:
// in_ptr -> in_syn -> pre_bucket -> row_ptr walk -> eligibility). The spike list is appended by one
// shared-memory atomic per warp with spikes (its order does not matter: each synapse has one writer, and the
// ring's atomic sums have no fixed order anyway), so a step has two barriers: spikes listed, synapses done.
// The ring is the one thing a step writes at random that is not staged: a float atomicAdd on shared memory is
// a compare-and-swap loop (ATOMS.CAST.SPIN) that goes round again for every bank conflict among the lanes, 4.5
// passes per warp-level add at FUM-1k, ~950 cycles of each outgoing-row task; in global memory it is one RED,
// done in L2 without waiting, and the neuron pass pays one L2 read (ld.cg, issued first) instead.
// Measured on the H200 (bench/GPU_RUN_STEPS.md): 4,842 cycles per FUM-1k step at 768 threads (5,171 with the
// ring in shared memory, 5,455 at 512 threads, 8,776 before this staging); what is left is each warp's chain
// of dependent instructions per step, not the task queue.
struct BlockPlan {
  int32_t ts = 5;        // log2 of the slots per ptab entry
  int32_t stage_in = 0;  // in_syn staged as uint16 (E < 2^16)
  uint32_t off_y = 0, off_rp = 0, off_ip = 0, off_list = 0, off_ptab = 0, off_in = 0, off_code = 0, off_spk = 0,
           bytes = 0;
  uint32_t list_stride = 0, spk_stride = 0;  // one stage's spike list (int32) and flags (bytes), in elements
  // Split kernel with the traces kept by the dynamics warps: each stage's copy of x and y (T, xy_stride each).
  uint32_t off_xs = 0, off_ys = 0, xy_stride = 0;
};

// Layout for (N, E) with `stages` spike lists and flag arrays (the ring, D x N, is not in it); false when it
// does not fit `max_bytes` even without in_syn and with a coarse table.
template <typename T>
bool PlanBlock(int64_t n, int64_t e, int64_t max_bytes, BlockPlan* out, int32_t stages = 1, int32_t xy_stages = 0) {
  if (e >= (int64_t{1} << 31)) return false;  // 32-bit synapse indices in the kernel
  auto layout = [&](int32_t ts, bool stage_in, BlockPlan* p) {
    const int64_t nb = e > 0 ? ((e - 1) >> ts) + 1 : 0;
    int64_t o = 0;
    auto take = [&](int64_t bytes, int64_t align) {
      o = (o + align - 1) / align * align;
      const int64_t at = o;
      o += bytes;
      return static_cast<uint32_t>(at);
    };
    take(n * static_cast<int64_t>(sizeof(T)), 16);  // x
    p->off_y = take(n * static_cast<int64_t>(sizeof(T)), 16);
    p->off_rp = take((n + 1) * 4, 16);
    p->off_ip = take((n + 1) * 4, 16);
    const int64_t list_stride = (n * 4 + 15) / 16 * 4, spk_stride = (n + 15) / 16 * 16;
    p->off_list = take(stages * list_stride * 4, 16);
    p->off_ptab = take(nb * 4, 16);
    p->off_in = take(stage_in ? e * 2 : 0, 16);
    p->off_code = take(n, 16);
    p->off_spk = take(stages * spk_stride, 16);
    const int64_t xy_stride = (n * static_cast<int64_t>(sizeof(T)) + 15) / 16 * 16 / static_cast<int64_t>(sizeof(T));
    p->off_xs = take(xy_stages * xy_stride * static_cast<int64_t>(sizeof(T)), 16);
    p->off_ys = take(xy_stages * xy_stride * static_cast<int64_t>(sizeof(T)), 16);
    p->xy_stride = static_cast<uint32_t>(xy_stride);
    p->bytes = static_cast<uint32_t>((o + 15) / 16 * 16);
    p->list_stride = static_cast<uint32_t>(list_stride);
    p->spk_stride = static_cast<uint32_t>(spk_stride);
    p->ts = ts;
    p->stage_in = stage_in ? 1 : 0;
    return o + 1024 <= max_bytes;  // 1 KB for the static shared memory
  };
  if (e < 0xFFFF) {
    for (int32_t ts = 5; ts <= 12; ++ts) {
      if (layout(ts, true, out)) return true;
    }
  }
  for (int32_t ts = 5; ts <= 31; ++ts) {
    if (layout(ts, false, out)) return true;
  }
  return false;
}

// The block path's shared memory, as PlanBlock lays it out (list and spk: the first of its stages).
template <typename T>
struct BlockShared {
  T* x;
  T* y;
  uint32_t* rp;
  uint32_t* ip;
  int32_t* list;
  int32_t* ptab;
  uint16_t* in;
  uint8_t* code;
  uint8_t* spk;
  T* xs;  // stage 0's copy of x (split kernel, traces in the dynamics warps; else unused)
  T* ys;
};

template <typename T>
__device__ __forceinline__ BlockShared<T> MapBlock(unsigned char* smem, const BlockPlan& p) {
  return {reinterpret_cast<T*>(smem),
          reinterpret_cast<T*>(smem + p.off_y),
          reinterpret_cast<uint32_t*>(smem + p.off_rp),
          reinterpret_cast<uint32_t*>(smem + p.off_ip),
          reinterpret_cast<int32_t*>(smem + p.off_list),
          reinterpret_cast<int32_t*>(smem + p.off_ptab),
          reinterpret_cast<uint16_t*>(smem + p.off_in),
          smem + p.off_code,
          smem + p.off_spk,
          reinterpret_cast<T*>(smem + p.off_xs),
          reinterpret_cast<T*>(smem + p.off_ys)};
}

// Per-call staging by all kThreads threads of the block: traces, codes, row_ptr, in_ptr, in_syn (uint16 where
// p.stage_in) and the pre table; ends with every entry written and visible (its own __syncthreads first).
template <typename T, typename W, int kThreads>
__device__ __forceinline__ void StageBlock(const GpuArgs<T, W>& a, const BlockPlan& p, const BlockShared<T>& sh) {
  const int tid = threadIdx.x;
  const int32_t n = a.n;
  const int64_t e = a.e;
  const int32_t ts = p.ts;
  const int64_t nb = e > 0 ? ((e - 1) >> ts) + 1 : 0;
  T* x_sh = sh.x;
  T* y_sh = sh.y;
  uint32_t* rp_sh = sh.rp;
  uint32_t* ip_sh = sh.ip;
  int32_t* ptab = sh.ptab;
  uint16_t* in_sh = sh.in;
  uint8_t* code_sh = sh.code;
  uint8_t* spk_sh = sh.spk;
  for (int32_t i = tid; i < n; i += kThreads) {
    x_sh[i] = a.x[i];
    y_sh[i] = a.y[i];
    code_sh[i] = __ldg(a.excitatory + i);
    spk_sh[i] = 0;
  }
  for (int32_t i = tid; i <= n; i += kThreads) {
    rp_sh[i] = __ldg(a.row_ptr + i);
    ip_sh[i] = __ldg(a.in_ptr + i);
  }
  for (int64_t b = tid; b < nb; b += kThreads) ptab[b] = 0;
  if (p.stage_in != 0) {  // E < 0xFFFF: an out-of-range entry becomes 0xFFFF >= E (skipped like on the global path)
    auto narrow = [e](uint32_t k) { return static_cast<uint16_t>(k < static_cast<uint64_t>(e) ? k : 0xFFFFu); };
    // 16-byte loads, 4 in flight per thread: E/4/kThreads/4 L2 round trips (~3 at FUM-1k), not E/kThreads.
    const int64_t nv = (reinterpret_cast<uintptr_t>(a.in_syn) & 15u) == 0 ? e / 4 : 0;
    const uint4* src = reinterpret_cast<const uint4*>(a.in_syn);
    for (int64_t b = tid; b < nv; b += 4 * kThreads) {
      uint4 buf[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        if (b + u * kThreads < nv) buf[u] = __ldg(src + b + u * kThreads);
      }
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const int64_t q = (b + u * kThreads) * 4;
        if (q >= 4 * nv) continue;
        in_sh[q] = narrow(buf[u].x);
        in_sh[q + 1] = narrow(buf[u].y);
        in_sh[q + 2] = narrow(buf[u].z);
        in_sh[q + 3] = narrow(buf[u].w);
      }
    }
    for (int64_t q = 4 * nv + tid; q < e; q += kThreads) in_sh[q] = narrow(__ldg(a.in_syn + q));
  }
  __syncthreads();
  // Pre table: bucket b (slot b << ts) belongs to the row j with rp[j] <= b << ts < rp[j+1] (one writer for a
  // valid row_ptr; a bad one gives a wrong but in-range neuron, as PreOfSlot).
  for (int32_t j = tid; j < n; j += kThreads) {
    const int64_t k0 = rp_sh[j], k1 = min(static_cast<int64_t>(rp_sh[j + 1]), e);
    if (k0 >= k1) continue;
    const int64_t mask = (int64_t{1} << ts) - 1;
    for (int64_t b = (k0 + mask) >> ts; b <= ((k1 - 1) >> ts); ++b) ptab[b] = j;
  }
  __syncthreads();
}

// Block path: append a warp's spikes (bit r of `bits`: neuron base + r spiked) to the step's list, by one
// shared atomic on `count` per warp that has spikes (the list's order does not matter: each synapse has one
// writer, and the ring's atomic sums have no fixed order anyway). Called by whole warps.
template <int R>
__device__ __forceinline__ void AppendSpikes(uint32_t bits, int32_t base, int lane, int32_t* list, int32_t* count) {
  unsigned long long m[R];
  int32_t tot = 0;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    m[r] = static_cast<unsigned long long>(__ballot_sync(FUMJAX_FULL_MASK, (bits >> r) & 1u));
    tot += __popcll(m[r]);
  }
  if (tot == 0) return;
  int32_t off = 0;
  if (lane == 0) off = atomicAdd(count, tot);
  off = __shfl_sync(FUMJAX_FULL_MASK, off, 0);
  const unsigned long long below = (1ull << lane) - 1ull;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    if ((bits >> r) & 1u) list[off + __popcll(m[r] & below)] = base + r;
    off += __popcll(m[r]);
  }
}

// The ring slot a synapse of delay dk transmits into from `slot` (all delays are 1 when D == 1); -1 for a delay
// outside [1, D] (the synapse is skipped, STDP included).
__device__ __forceinline__ int32_t RingSlot(int32_t slot, int32_t d, int32_t dk) {
  if (d == 1) return slot;
  if (dk < 1 || dk > d) return -1;
  const int32_t rs = slot + dk;
  return rs >= d ? rs - d : rs;
}

// Block path, the incoming list of post i (it spiked this step): STDP of the synapses whose pre is silent
// (flags spk_sh), by one warp. The eligibility (rstdp) or weight load is issued as soon as in_syn gives its
// index, before the pre lookup.
// x_sh / y_sh: the traces as this step's STDP reads them (sh.x / sh.y, or a stage's copy).
template <typename T, typename W>
__device__ __forceinline__ void InListStdp(const GpuArgs<T, W>& a, const BlockShared<T>& sh, const T* x_sh,
                                           const T* y_sh, const uint8_t* spk_sh, int32_t ts, bool stage_in,
                                           bool rstdp, T inv, int32_t i, int lane) {
  const uint32_t e32 = static_cast<uint32_t>(a.e);
  const int32_t p0 = static_cast<int32_t>(sh.ip[i]), p1 = static_cast<int32_t>(sh.ip[i + 1]);
  if (static_cast<uint32_t>(p0) > e32 || static_cast<uint32_t>(p1) > e32) return;
  const T yi = y_sh[i];
  for (int32_t pb = p0; pb < p1; pb += 2 * FUMJAX_WARP) {
    uint32_t kk[2];
    T old[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int32_t q = pb + h * FUMJAX_WARP + lane;
      kk[h] = q < p1 ? (stage_in ? sh.in[q] : __ldg(a.in_syn + q)) : e32;
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      old[h] = kk[h] < e32 ? Ld(rstdp ? a.elig[kk[h]] : a.w[kk[h]]) : T(0);
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      if (kk[h] >= e32) continue;
      const int32_t j = PreOfSlotShared(sh.ptab, sh.rp, ts, a.n, kk[h]);
      const uint8_t cj = sh.code[j];
      if (spk_sh[j] || cj == 2) continue;
      const T dw = StdpDw(a, x_sh[j], yi, true, false, cj);
      StoreDw(a, kk[h], dw, rstdp, inv, old[h], old[h]);
    }
  }
}

template <typename T, typename W, int R, int kThreads>
__global__ void __launch_bounds__(kThreads, 1) RunStepsBlockKernel(GpuArgs<T, W> a, BlockPlan p) {
  constexpr int kWarpsB = kThreads / FUMJAX_WARP;
  extern __shared__ __align__(16) unsigned char smem[];
  const int32_t n = a.n, d = a.d;
  const int64_t e = a.e;
  const uint32_t e32 = static_cast<uint32_t>(e);  // PlanBlock: E < 2^31
  const BlockShared<T> sh = MapBlock<T>(smem, p);
  T* x_sh = sh.x;
  T* y_sh = sh.y;
  const uint32_t* rp_sh = sh.rp;
  int32_t* list = sh.list;
  const uint8_t* code_sh = sh.code;
  uint8_t* spk_sh = sh.spk;
  __shared__ int32_t n_spk[2];  // spike count of the step, by parity

  const int tid = threadIdx.x;
  const int lane = tid % FUMJAX_WARP;
  const int warp = tid / FUMJAX_WARP;
  const bool plastic = a.mode != 0;
  const bool rstdp = a.mode == 2;
  const int32_t ts = p.ts;
  const bool stage_in = p.stage_in != 0;
  const int32_t s0 = *a.step;
  const int32_t t0_init = *a.elig_t0;

  if (tid < 2) n_spk[tid] = 0;
  StageBlock<T, W, kThreads>(a, p, sh);

  // Owned neurons [base, base + R).
  const int32_t base = tid * R;
  T v[R], ratio[R], vth[R], cur_next[R];
  int32_t rf[R], ws[R];
  uint32_t prev_bits = 0;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int32_t i = base + r;
    if (i < n) {
      v[r] = a.v[i];
      ratio[r] = Div(a.dt, a.tau[i]);
      vth[r] = a.v_th[i];
      rf[r] = a.refrac[i];
      ws[r] = a.window_spikes[i];
      cur_next[r] = a.t_steps > 0 ? a.i_ext[i] : T(0);
    } else {
      v[r] = ratio[r] = vth[r] = cur_next[r] = T(0);
      rf[r] = ws[r] = 0;
    }
  }
  // Eligibility clock (ClockAt, kept incrementally: no division per step): t0 in effect, next
  // renormalization step; the next step's 1/gamma^k is prefetched like the input.
  const int32_t kc = a.k_max;
  const int32_t r1 = s0 - t0_init >= kc ? s0 : t0_init + kc;
  int32_t t0 = t0_init, next_r = r1;
  auto inv_index = [&](int32_t s) {  // t0 after step s's renormalization, if any
    const int32_t t0s = (rstdp && s == next_r) ? s : t0;
    return JnpIndex(static_cast<int64_t>(s) + 1 - t0s, kc + 1);
  };
  T inv_next = rstdp && a.t_steps > 0 ? a.inv_pow[inv_index(s0)] : T(1);
  int32_t slot = FloorMod(s0, d);
  uint8_t* spk_out = a.spikes;
  const T* i_next = a.i_ext + n;
  __syncthreads();

  for (int32_t t = 0; t < a.t_steps; ++t) {
    const int32_t s = s0 + t;
    const int par = t & 1;
    T* ring_now = a.ring + slot * n;
    const T inv = inv_next;
    if (rstdp && s == next_r) {  // uniform: the dense renormalization before this step's additions
      const int32_t since = s == r1 ? s - t0_init : kc;
      const T scale = Ld(a.gamma_pow[JnpIndex(since < kc ? since : kc, kc + 1)]);
      t0 = s;
      next_r = s + kc;
      RenormBlock<T, W, kThreads>(a.elig, e, scale, tid);
    }
    if (rstdp && t + 1 < a.t_steps) inv_next = a.inv_pow[inv_index(s + 1)];

    // (A) pending trace update of step t-1, input, LIF, spike flags and raster.
    T cur[R], ring_in[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      cur[r] = cur_next[r];
      ring_in[r] = base + r < n ? __ldcg(ring_now + base + r) : T(0);  // L2: this step's adds came as REDs
    }
    uint32_t bits = 0;
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int32_t i = base + r;
      if (i < n) {
        if (plastic && t > 0) {
          const T sp = static_cast<T>((prev_bits >> r) & 1u);
          x_sh[i] = Fma(x_sh[i], a.decay_x, sp);
          y_sh[i] = Fma(y_sh[i], a.decay_y, sp);
        }
        const T in = Add(ring_in[r], cur[r]);
        __stcg(ring_now + i, T(0));
        const bool spiked = Lif(a, v[r], rf[r], ratio[r], vth[r], in);
        spk_sh[i] = static_cast<uint8_t>(spiked);
        spk_out[i] = static_cast<uint8_t>(spiked);
        ws[r] += spiked;
        bits |= static_cast<uint32_t>(spiked) << r;
      }
    }
    spk_out += n;
    if (t + 1 < a.t_steps) {  // next step's external input, hidden behind the synapse work
#pragma unroll
      for (int r = 0; r < R; ++r) {
        if (base + r < n) cur_next[r] = i_next[base + r];
      }
      i_next += n;
    }
    AppendSpikes<R>(bits, base, lane, list, &n_spk[par]);
    __syncthreads();
    const int32_t ns = n_spk[par];
    if (tid == 0) n_spk[par ^ 1] = 0;  // last read in step t-1, next written in step t+1

    // (C) 2*ns warp tasks: task u < ns walks the outgoing row of list[u] (transmission + STDP), task
    // u >= ns the incoming list of list[u - ns] (STDP of synapses whose pre is silent). Every global load of
    // a lane's two synapses is issued before the first shared-memory update.
    const int32_t n_tasks = plastic ? 2 * ns : ns;
    for (int32_t u = warp; u < n_tasks; u += kWarpsB) {
      if (u < ns) {
        const int32_t j = list[u];
        const int32_t k0 = static_cast<int32_t>(rp_sh[j]), k1 = static_cast<int32_t>(rp_sh[j + 1]);
        if (static_cast<uint32_t>(k0) > e32 || static_cast<uint32_t>(k1) > e32) continue;
        const T xj = x_sh[j];
        const uint8_t pos = code_sh[j];
        for (int32_t kb = k0; kb < k1; kb += 2 * FUMJAX_WARP) {
          int32_t kk[2], ii[2], rr[2];
          T ww[2], ee[2];
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            kk[h] = kb + h * FUMJAX_WARP + lane;
            ii[h] = -1;
            ww[h] = ee[h] = T(0);
            rr[h] = 1;
            if (kk[h] < k1) {
              ii[h] = __ldg(a.post + kk[h]);
              ww[h] = Ld(a.w[kk[h]]);
              if (rstdp) ee[h] = Ld(a.elig[kk[h]]);
              if (d > 1) rr[h] = __ldg(a.delay + kk[h]);
            }
          }
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int32_t i = ii[h];
            const int32_t rs = RingSlot(slot, d, rr[h]);
            if (static_cast<uint32_t>(i) >= static_cast<uint32_t>(n) || rs < 0) continue;
            atomicAdd(a.ring + rs * n + i, Mul(a.g_syn, ww[h]));  // RED in L2, as the multi path
            if (plastic && pos != 2) {
              const T dw = StdpDw(a, xj, y_sh[i], spk_sh[i] != 0, true, pos);
              StoreDw(a, kk[h], dw, rstdp, inv, ww[h], ee[h]);
            }
          }
        }
      } else {
        InListStdp(a, sh, x_sh, y_sh, spk_sh, ts, stage_in, rstdp, inv, list[u - ns], lane);
      }
    }
    __syncthreads();
    prev_bits = bits;
    if (++slot == d) slot = 0;
  }

  // Last pending trace update, write back.
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int32_t i = base + r;
    if (i < n) {
      if (plastic && a.t_steps > 0) {
        const T sp = static_cast<T>((prev_bits >> r) & 1u);
        x_sh[i] = Fma(x_sh[i], a.decay_x, sp);
        y_sh[i] = Fma(y_sh[i], a.decay_y, sp);
      }
      a.v[i] = v[r];
      a.refrac[i] = rf[r];
      a.window_spikes[i] = ws[r];
    }
  }
  __syncthreads();
  for (int32_t i = tid; i < n; i += kThreads) {
    a.x[i] = x_sh[i];
    a.y[i] = y_sh[i];
  }
  if (tid == 0) {
    *a.step = s0 + a.t_steps;
    if (rstdp && a.t_steps > 0) *a.elig_t0 = t0;
  }
}

#if !defined(FUMJAX_USE_HIP)
// =====================================================================================================
// Block path, rstdp: dynamics and plasticity on separate warps (CUDA).
// =====================================================================================================
// Within a call the weights do not change under rstdp (the reward applies them at the window's end), so a step's
// dynamics need nothing of its STDP: the eligibility updates can run behind the dynamics. The block splits in
// two. Its first kDyn threads (dynamics warps) run the neuron pass and the transmission (the outgoing rows'
// post / w loads and the ring's REDs), with a barrier of their own twice a step. The last kPlast threads
// (plasticity warps) own x, y and the eligibility: per step the out-rows' and in-lists' STDP, then the trace
// update, and the renormalizations. They run up to kBlockStages - 1 steps behind. The dynamics warps hand a
// step over through its stage, kBlockStages spike lists and flag arrays, with named barriers:
// full[stage] (dynamics arrive, plasticity wait) and empty[stage] (plasticity arrive, dynamics wait before
// writing the stage again). Same operations on the same values as RunStepsBlockKernel, in another order; each
// synapse's eligibility still has one writer a step, and consecutive steps' writers are ordered by full[].
constexpr int kBlockStages = 4;
constexpr int kBarDyn = 1, kBarPlast = 2, kBarFull = 3, kBarEmpty = kBarFull + kBlockStages;  // ids < 16

// Named barriers over `count` threads (whole warps); like __syncthreads they order the participating threads'
// earlier memory accesses before the later ones (PTX bar.sync / bar.arrive).
__device__ __forceinline__ void BarSync(int id, int count) {
  asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(count) : "memory");
}
__device__ __forceinline__ void BarArrive(int id, int count) {
  asm volatile("bar.arrive %0, %1;" ::"r"(id), "r"(count) : "memory");
}

//
// kXyDyn (the default, gpu_split_traces = 1; 6.6% fewer cycles than without on an H100, racecheck clean:
// bench/GPU_RUN_STEPS.md): the dynamics warps keep x and y of their neurons in registers. Each step they
// write the values its STDP reads (the traces before the step's spikes) into the stage's copy (xs, ys), then
// update them by the step's spikes, so the plasticity warps only read traces and lose their trace pass. The
// plasticity warps' own barrier before the empty[] arrive stays: every thread's reads of the stage precede
// the arrive.
template <typename T, typename W, int R, int kDyn, int kPlast, bool kXyDyn>
__global__ void __launch_bounds__(kDyn + kPlast, 1) RunStepsBlockSplitKernel(GpuArgs<T, W> a, BlockPlan p) {
  constexpr int kAll = kDyn + kPlast;
  constexpr int kS = kBlockStages;
  extern __shared__ __align__(16) unsigned char smem[];
  const int32_t n = a.n, d = a.d;
  const uint32_t e32 = static_cast<uint32_t>(a.e);  // PlanBlock: E < 2^31
  const BlockShared<T> sh = MapBlock<T>(smem, p);
  __shared__ int32_t n_spk[kS];  // spike count of the step, by stage
  const int tid = threadIdx.x;
  const int lane = tid % FUMJAX_WARP;
  const int32_t s0 = *a.step;
  const int32_t t0_init = *a.elig_t0;  // read by all before anyone writes it back

  if (tid < kS) n_spk[tid] = 0;
  StageBlock<T, W, kAll>(a, p, sh);

  if (tid < kDyn) {
    // ---- dynamics warps: neurons [base, base + R) ----
    constexpr int kWarpsD = kDyn / FUMJAX_WARP;
    const int warp = tid / FUMJAX_WARP;
    const int32_t base = tid * R;
    T v[R], ratio[R], vth[R], cur_next[R], xr[R], yr[R];
    int32_t rf[R], ws[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int32_t i = base + r;
      if (i < n) {
        v[r] = a.v[i];
        ratio[r] = Div(a.dt, a.tau[i]);
        vth[r] = a.v_th[i];
        rf[r] = a.refrac[i];
        ws[r] = a.window_spikes[i];
        cur_next[r] = a.t_steps > 0 ? a.i_ext[i] : T(0);
        xr[r] = kXyDyn ? a.x[i] : T(0);
        yr[r] = kXyDyn ? a.y[i] : T(0);
      } else {
        v[r] = ratio[r] = vth[r] = cur_next[r] = xr[r] = yr[r] = T(0);
        rf[r] = ws[r] = 0;
      }
    }
    int32_t slot = FloorMod(s0, d);
    uint8_t* spk_out = a.spikes;
    const T* i_next = a.i_ext + n;
    for (int32_t t = 0; t < a.t_steps; ++t) {
      const int st = t % kS;
      if (t >= kS) BarSync(kBarEmpty + st, kAll);  // the plasticity warps are done with step t - kS
      int32_t* list = sh.list + st * p.list_stride;
      uint8_t* spk_sh = sh.spk + st * p.spk_stride;
      T* xs = sh.xs + st * p.xy_stride;
      T* ys = sh.ys + st * p.xy_stride;
      T* ring_now = a.ring + slot * n;
      T cur[R], ring_in[R];
#pragma unroll
      for (int r = 0; r < R; ++r) {
        cur[r] = cur_next[r];
        ring_in[r] = base + r < n ? __ldcg(ring_now + base + r) : T(0);
      }
      uint32_t bits = 0;
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const int32_t i = base + r;
        if (i < n) {
          const T in = Add(ring_in[r], cur[r]);
          __stcg(ring_now + i, T(0));
          const bool spiked = Lif(a, v[r], rf[r], ratio[r], vth[r], in);
          spk_sh[i] = static_cast<uint8_t>(spiked);
          spk_out[i] = static_cast<uint8_t>(spiked);
          ws[r] += spiked;
          bits |= static_cast<uint32_t>(spiked) << r;
          if constexpr (kXyDyn) {  // the traces this step's STDP reads, then the step's update
            xs[i] = xr[r];
            ys[i] = yr[r];
            const T sp = static_cast<T>(spiked);
            xr[r] = Fma(xr[r], a.decay_x, sp);
            yr[r] = Fma(yr[r], a.decay_y, sp);
          }
        }
      }
      spk_out += n;
      if (t + 1 < a.t_steps) {
#pragma unroll
        for (int r = 0; r < R; ++r) {
          if (base + r < n) cur_next[r] = i_next[base + r];
        }
        i_next += n;
      }
      AppendSpikes<R>(bits, base, lane, list, &n_spk[st]);
      BarSync(kBarDyn, kDyn);
      const int32_t ns = n_spk[st];  // before the hand-over: the plasticity warps reset it
      BarArrive(kBarFull + st, kAll);
      for (int32_t u = warp; u < ns; u += kWarpsD) {
        const int32_t j = list[u];
        const int32_t k0 = static_cast<int32_t>(sh.rp[j]), k1 = static_cast<int32_t>(sh.rp[j + 1]);
        if (static_cast<uint32_t>(k0) > e32 || static_cast<uint32_t>(k1) > e32) continue;
        for (int32_t kb = k0; kb < k1; kb += 2 * FUMJAX_WARP) {
          int32_t ii[2], rr[2];
          T ww[2];
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int32_t k = kb + h * FUMJAX_WARP + lane;
            ii[h] = -1;
            ww[h] = T(0);
            rr[h] = 1;
            if (k < k1) {
              ii[h] = __ldg(a.post + k);
              ww[h] = Ld(a.w[k]);
              if (d > 1) rr[h] = __ldg(a.delay + k);
            }
          }
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int32_t rs = RingSlot(slot, d, rr[h]);
            if (static_cast<uint32_t>(ii[h]) >= static_cast<uint32_t>(n) || rs < 0) continue;
            atomicAdd(a.ring + rs * n + ii[h], Mul(a.g_syn, ww[h]));
          }
        }
      }
      BarSync(kBarDyn, kDyn);  // this step's REDs before the next step's ring reads
      if (++slot == d) slot = 0;
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int32_t i = base + r;
      if (i < n) {
        a.v[i] = v[r];
        a.refrac[i] = rf[r];
        a.window_spikes[i] = ws[r];
        if constexpr (kXyDyn) {
          a.x[i] = xr[r];
          a.y[i] = yr[r];
        }
      }
    }
    for (int32_t t = a.t_steps > kS ? a.t_steps - kS : 0; t < a.t_steps; ++t) BarSync(kBarEmpty + t % kS, kAll);
    if (tid == 0) *a.step = s0 + a.t_steps;
  } else {
    // ---- plasticity warps: x, y, eligibility ----
    constexpr int kWarpsP = kPlast / FUMJAX_WARP;
    const int ptid = tid - kDyn;
    const int pwarp = ptid / FUMJAX_WARP;
    const int32_t ts = p.ts;
    const bool stage_in = p.stage_in != 0;
    const int32_t kc = a.k_max;
    const int32_t r1 = s0 - t0_init >= kc ? s0 : t0_init + kc;
    int32_t t0 = t0_init, next_r = r1;
    for (int32_t t = 0; t < a.t_steps; ++t) {
      const int32_t s = s0 + t;
      const int st = t % kS;
      // The step's 1/gamma^k, loaded while the dynamics warps are still on the step.
      const T inv = a.inv_pow[JnpIndex(static_cast<int64_t>(s) + 1 - (s == next_r ? s : t0), kc + 1)];
      BarSync(kBarFull + st, kAll);
      if (s == next_r) {  // the dense renormalization before this step's additions
        const int32_t since = s == r1 ? s - t0_init : kc;
        const T scale = Ld(a.gamma_pow[JnpIndex(since < kc ? since : kc, kc + 1)]);
        t0 = s;
        next_r = s + kc;
        RenormBlock<T, W, kPlast>(a.elig, a.e, scale, ptid);
        BarSync(kBarPlast, kPlast);
      }
      const int32_t* list = sh.list + st * p.list_stride;
      const uint8_t* spk_sh = sh.spk + st * p.spk_stride;
      const T* x_sh = kXyDyn ? sh.xs + st * p.xy_stride : sh.x;
      const T* y_sh = kXyDyn ? sh.ys + st * p.xy_stride : sh.y;
      const int32_t ns = n_spk[st];
      for (int32_t u = pwarp; u < 2 * ns; u += kWarpsP) {
        if (u >= ns) {
          InListStdp(a, sh, x_sh, y_sh, spk_sh, ts, stage_in, true, inv, list[u - ns], lane);
          continue;
        }
        const int32_t j = list[u];
        const uint8_t pos = sh.code[j];
        const int32_t k0 = static_cast<int32_t>(sh.rp[j]), k1 = static_cast<int32_t>(sh.rp[j + 1]);
        if (pos == 2 || static_cast<uint32_t>(k0) > e32 || static_cast<uint32_t>(k1) > e32) continue;
        const T xj = x_sh[j];
        for (int32_t kb = k0; kb < k1; kb += 2 * FUMJAX_WARP) {
          int32_t kk[2], ii[2], rr[2];
          T ee[2];
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            kk[h] = kb + h * FUMJAX_WARP + lane;
            ii[h] = -1;
            ee[h] = T(0);
            rr[h] = 1;
            if (kk[h] < k1) {
              ii[h] = __ldg(a.post + kk[h]);
              ee[h] = Ld(a.elig[kk[h]]);
              if (d > 1) rr[h] = __ldg(a.delay + kk[h]);
            }
          }
#pragma unroll
          for (int h = 0; h < 2; ++h) {  // the synapses the dynamics warps transmitted on
            const int32_t i = ii[h];
            if (static_cast<uint32_t>(i) >= static_cast<uint32_t>(n) || RingSlot(0, d, rr[h]) < 0) continue;
            const T dw = StdpDw(a, xj, y_sh[i], spk_sh[i] != 0, true, pos);
            StoreDw(a, kk[h], dw, true, inv, ee[h], ee[h]);
          }
        }
      }
      // Every STDP read of x and y (and of the stage) before the trace update or the hand-back.
      BarSync(kBarPlast, kPlast);
      if constexpr (!kXyDyn) {
        for (int32_t i = ptid; i < n; i += kPlast) {
          const T sp = static_cast<T>(spk_sh[i]);
          sh.x[i] = Fma(sh.x[i], a.decay_x, sp);
          sh.y[i] = Fma(sh.y[i], a.decay_y, sp);
        }
      }
      if (ptid == 0) n_spk[st] = 0;
      BarArrive(kBarEmpty + st, kAll);
    }
    if constexpr (!kXyDyn) {
      for (int32_t i = ptid; i < n; i += kPlast) {  // the entries this thread updated last
        a.x[i] = sh.x[i];
        a.y[i] = sh.y[i];
      }
    }
    if (ptid == 0 && a.t_steps > 0) *a.elig_t0 = t0;
  }
}
#endif  // !FUMJAX_USE_HIP

// =====================================================================================================
// Cluster path (CUDA, compute capability >= 9.0): a thread-block cluster of C CTAs (1024 threads each)
// runs all T steps; everything a step touches lives in shared memory.
//
// Partition by POST neuron. CTA c owns posts [c*32*P, (c+1)*32*P); warp w of it owns P consecutive posts,
// lane l < P post number l (v, refrac, dt/tau, v_th, y trace, window count and, for D == 1, the ring value
// in registers). A CTA stages the incoming synapses of its posts, in in-list order (ascending synapse index
// per post), into shared memory once per call: presynaptic index (uint16), owning post within the warp
// (uint8), w, eligibility (rstdp) and delay (uint8, D > 1). The presynaptic trace x and the spike flags of
// ALL neurons are replicated in every CTA (x is a function of the raster: x' = fma(x, decay, spike)).
//
// Per step, per warp: (A) pending trace update (x for all neurons, spread over the CTA; y of its posts),
// input + LIF of its posts, the spike flags written to every CTA's flag buffer through distributed shared
// memory; ONE cluster barrier; (C) a pass over the warp's incoming synapses: a synapse is active when its pre
// or its post spiked; active ones get STDP (eligibility or weight), and those whose pre spiked deliver
// g*w to their post -- accumulated by the post's own lane in ascending synapse order, i.e. exactly the
// reference scatter's order, so v and the ring match the CPU bit for bit (no atomics anywhere).
// x and the flags are double-buffered by step parity, so no CTA-wide barrier is needed besides the
// cluster barrier: a buffer written at step t+1 was last read at step t-1, before every CTA's barrier t.
// This is a per-step pass over the CTA's incoming synapses (~E/C/1024 shared-memory reads per thread), which
// for small networks costs less than the dependent loads of an event-driven walk.
//
// A CTA whose synapses do not fit in shared memory reads them from global memory instead (same code, one
// more dependent load per synapse): correct but slow; the host picks this path only where they fit.
// =====================================================================================================
#if !defined(FUMJAX_USE_HIP)
constexpr int kClusterThreads = 1024;
constexpr int kClusterWarps = kClusterThreads / 32;
constexpr uint16_t kNoPre = 0xFFFF;

struct ClusterPlan {
  int32_t csize = 1;       // CTAs per cluster (C)
  int32_t p = 1;           // posts per warp (P <= 32)
  int32_t cap = 0;         // synapse capacity of one CTA's shared memory
  uint32_t off_spk = 0;    // byte offsets into dynamic shared memory
  uint32_t off_code = 0;
  uint32_t off_ring = 0;
  uint32_t off_w = 0;
  uint32_t off_elig = 0;
  uint32_t off_pre = 0;
  uint32_t off_lpost = 0;
  uint32_t off_delay = 0;
  uint32_t off_rend = 0;    // event body: local out-CSR row ends (N int32)
  uint32_t off_hit = 0;     // event body: hit bitmaps (2 x hit_words uint32)
  uint32_t off_lrow = 0;    // event body: entries grouped by presynaptic neuron (uint16)
  int32_t hit_words = 0;
  int32_t force_pull = 0;   // FUMJAX_GPU_CLUSTER_BODY=pull
  uint32_t bytes = 0;
};

__device__ __forceinline__ void ClusterArriveWait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.arrive.release.aligned;\n" ::: "memory");
  asm volatile("barrier.cluster.wait.acquire.aligned;\n" ::: "memory");
#else
  __syncthreads();
#endif
}

__device__ __forceinline__ uint8_t* RemoteShared(uint8_t* local, int32_t rank) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  return cooperative_groups::this_cluster().map_shared_rank(local, static_cast<unsigned>(rank));
#else
  (void)rank;
  return local;
#endif
}

__device__ __forceinline__ uint32_t ClusterRank() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  return cooperative_groups::this_cluster().block_rank();
#else
  return 0;
#endif
}

// x (rank 0: every CTA holds the same replica; pending trace update of the last step), step, elig_t0.
template <typename T, typename W, int kMode>
__device__ __forceinline__ void WriteBackShared(const GpuArgs<T, W>& a, int32_t rank, const T* xb, const uint8_t* spkb,
                                                int32_t s0, int32_t t0_init) {
  if (rank != 0) return;
  const int32_t n = a.n;
  const bool upd = kMode != 0 && a.t_steps > 0;  // x is only advanced in plastic modes (buffer 0 otherwise)
  const int32_t lastpar = upd ? (a.t_steps - 1) & 1 : 0;
  const T* xl = xb + lastpar * n;
  const uint8_t* sl = spkb + lastpar * n;
  for (int32_t j = threadIdx.x; j < n; j += blockDim.x) {
    a.x[j] = upd ? Fma(xl[j], a.decay_x, static_cast<T>(sl[j])) : xl[j];
  }
  if (threadIdx.x == 0) {
    *a.step = s0 + a.t_steps;
    if (kMode == 2 && a.t_steps > 0) *a.elig_t0 = ClockAt(s0, t0_init, a.k_max, s0 + a.t_steps - 1).t0;
  }
}

// Staged w (stdp) or eligibility (rstdp) back to their synapse slots k = in_syn[cta_p0 + q].
template <typename T, typename W, int kMode>
__device__ __forceinline__ void WriteBackSynapses(const GpuArgs<T, W>& a, int64_t cta_p0, int32_t n_entries,
                                                  const uint16_t* pre_sh, const W* w_sh, const W* el_sh) {
  for (int32_t q = threadIdx.x; q < n_entries; q += blockDim.x) {
    if (pre_sh[q] == kNoPre) continue;
    const int64_t k = __ldg(a.in_syn + cta_p0 + q);
    if (kMode == 2) {
      a.elig[k] = el_sh[q];
    } else {
      a.w[k] = w_sh[q];
    }
  }
}

// In-place exclusive prefix sum of arr[0, n) over the CTA (kClusterThreads threads); ends with a barrier.
__device__ __forceinline__ void BlockExclusiveScan(int32_t* arr, int32_t n) {
  __shared__ int32_t warp_sum[kClusterWarps];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int32_t per = (n + kClusterThreads - 1) / kClusterThreads;
  const int32_t b = min(n, tid * per), en = min(n, b + per);
  int32_t sum = 0;
  for (int32_t i = b; i < en; ++i) sum += arr[i];
  int32_t incl = sum;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int32_t up = __shfl_up_sync(FUMJAX_FULL_MASK, incl, o);
    if (lane >= o) incl += up;
  }
  if (lane == 31) warp_sum[warp] = incl;
  __syncthreads();
  if (warp == 0) {
    const int32_t tw = warp_sum[lane];
    int32_t sc = tw;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int32_t up = __shfl_up_sync(FUMJAX_FULL_MASK, sc, o);
      if (lane >= o) sc += up;
    }
    warp_sum[lane] = sc - tw;
  }
  __syncthreads();
  int32_t run = warp_sum[warp] + incl - sum;
  for (int32_t i = b; i < en; ++i) {
    const int32_t c = arr[i];
    arr[i] = run;
    run += c;
  }
  __syncthreads();
}

template <typename T, typename W, int kMode, bool kD1>
__device__ __forceinline__ void PullBody(const GpuArgs<T, W>& a, const ClusterPlan& plan, int32_t rank) {
  extern __shared__ __align__(16) unsigned char smem[];
  constexpr bool kPlastic = kMode != 0;
  constexpr bool kRstdp = kMode == 2;
  constexpr int kU = sizeof(T) == 4 ? 4 : 2;  // synapses per lane in flight
  const int32_t n = a.n, d = kD1 ? 1 : a.d, P = plan.p;
  const int64_t e = a.e;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int32_t pc = kClusterWarps * P;                 // posts per CTA
  const int32_t cta_i0 = rank * pc;
  const int32_t warp_i0 = cta_i0 + warp * P;
  const int32_t pw = max(0, min(P, n - warp_i0));       // posts of this warp
  const bool own = lane < pw;
  const int32_t my_i = warp_i0 + lane;

  T* xb = reinterpret_cast<T*>(smem);                   // (2, N) x by step parity
  uint8_t* spkb = smem + plan.off_spk;                  // (2, N) spike flags by step parity
  uint8_t* code = smem + plan.off_code;                 // (N,) pre codes
  T* ring_sh = reinterpret_cast<T*>(smem + plan.off_ring);  // (D, pc), D > 1 only
  W* w_sh = reinterpret_cast<W*>(smem + plan.off_w);
  W* el_sh = reinterpret_cast<W*>(smem + plan.off_elig);
  uint16_t* pre_sh = reinterpret_cast<uint16_t*>(smem + plan.off_pre);
  uint8_t* lpost_sh = smem + plan.off_lpost;
  uint8_t* dl_sh = smem + plan.off_delay;

  // This CTA's and this warp's in-list ranges (clamped: a malformed in_ptr cannot index out of bounds).
  auto in_at = [&](int32_t i) {
    const int64_t q = __ldg(a.in_ptr + min(max(i, 0), n));
    return min(q, e);
  };
  const int64_t cta_p0 = in_at(cta_i0);
  const int64_t cta_p1 = max(cta_p0, in_at(min(cta_i0 + pc, n)));
  const int32_t n_entries = static_cast<int32_t>(cta_p1 - cta_p0);
  const bool staged = n_entries <= plan.cap;
  const int32_t wq0 = static_cast<int32_t>(min(max(in_at(warp_i0), cta_p0), cta_p1) - cta_p0);  // local indices
  const int32_t wq1 = max(wq0, static_cast<int32_t>(min(max(in_at(warp_i0 + pw), cta_p0), cta_p1) - cta_p0));

  const int32_t s0 = *a.step;
  const int32_t t0_init = *a.elig_t0;

  // ---- stage ----
  for (int32_t j = tid; j < n; j += kClusterThreads) {
    xb[j] = a.x[j];
    code[j] = __ldg(a.excitatory + j);
  }
  // Entry q of this CTA: synapse k = in_syn[cta_p0 + q]; invalid ones (bad k, pre or delay) are inert.
  auto entry = [&](int32_t q, int64_t* k_out, int32_t* j_out, int32_t* dk_out) {
    const int64_t k = __ldg(a.in_syn + cta_p0 + q);
    int32_t j = -1, dk = 1;
    if (k < e) {
      j = PreOfSlot(a, k);
      if (!kD1) dk = __ldg(a.delay + k);
      if (dk < 1 || dk > d) j = -1;
    }
    *k_out = k;
    *j_out = j;
    *dk_out = dk;
  };
  if (staged) {
    for (int32_t q = tid; q < n_entries; q += kClusterThreads) {
      int64_t k;
      int32_t j, dk;
      entry(q, &k, &j, &dk);
      pre_sh[q] = j < 0 ? kNoPre : static_cast<uint16_t>(j);
      lpost_sh[q] = 0xFF;
      w_sh[q] = j < 0 ? St<W>(T(0)) : a.w[k];
      if (kRstdp) el_sh[q] = j < 0 ? St<W>(T(0)) : a.elig[k];
      if (!kD1) dl_sh[q] = static_cast<uint8_t>(dk);
    }
  }
  __syncthreads();
  // Owning post (within the warp) of each staged entry; in the global fallback it is found per step.
  if (staged) {
    for (int32_t pi = 0; pi < pw; ++pi) {
      const int32_t q0 = static_cast<int32_t>(min(max(in_at(warp_i0 + pi), cta_p0 + wq0), cta_p0 + wq1) - cta_p0);
      const int32_t q1 =
          max(q0, static_cast<int32_t>(min(max(in_at(warp_i0 + pi + 1), cta_p0 + wq0), cta_p0 + wq1) - cta_p0));
      for (int32_t q = q0 + lane; q < q1; q += 32) lpost_sh[q] = static_cast<uint8_t>(pi);
    }
  }
  // Per-post registers (lane-owned post).
  T v = T(0), ratio = T(0), vth = T(0), y = T(0), ring_i = T(0), cur1 = T(0), cur2 = T(0);
  int32_t rf = 0, ws = 0;
  uint32_t prev_spk = 0;
  if (own) {
    v = a.v[my_i];
    ratio = Div(a.dt, a.tau[my_i]);
    vth = a.v_th[my_i];
    rf = a.refrac[my_i];
    ws = a.window_spikes[my_i];
    y = a.y[my_i];
    if (kD1) {
      ring_i = a.ring[my_i];
    } else {
      for (int32_t r = 0; r < d; ++r) ring_sh[r * pc + warp * P + lane] = a.ring[static_cast<int64_t>(r) * n + my_i];
    }
    if (a.t_steps > 0) cur1 = a.i_ext[my_i];
    if (a.t_steps > 1) cur2 = a.i_ext[static_cast<int64_t>(n) + my_i];
  }
  // Every CTA of the cluster must be running before any writes into another's shared memory.
  ClusterArriveWait();

  // Per-post in-list bounds of the warp in the global fallback (lane-held, up to 32 posts).
  int32_t my_q0 = 0, my_q1 = 0;
  if (!staged && own) {
    my_q0 = static_cast<int32_t>(min(max(in_at(my_i), cta_p0 + wq0), cta_p0 + wq1) - cta_p0);
    my_q1 = max(my_q0, static_cast<int32_t>(min(max(in_at(my_i + 1), cta_p0 + wq0), cta_p0 + wq1) - cta_p0));
  }

  for (int32_t t = 0; t < a.t_steps; ++t) {
    const int32_t s = s0 + t;
    const int32_t slot = FloorMod(s, d);
    const int32_t par = t & 1;
    T* xc = xb + par * n;
    uint8_t* sp = spkb + par * n;
    // (A) traces: x of every neuron (replica), y of the warp's posts.
    if (kPlastic && t > 0) {
      const T* xp = xb + (par ^ 1) * n;
      const uint8_t* spp = spkb + (par ^ 1) * n;
      for (int32_t j = tid; j < n; j += kClusterThreads) xc[j] = Fma(xp[j], a.decay_x, static_cast<T>(spp[j]));
      y = Fma(y, a.decay_y, static_cast<T>(prev_spk));
    }
    T inv = T(1), scale = T(1);
    bool renorm = false;
    if (kRstdp) {
      const EligClock c = ClockAt(s0, t0_init, a.k_max, s);
      renorm = c.renorm;
      if (renorm) scale = Ld(a.gamma_pow[c.scale_idx]);
      inv = __ldg(a.inv_pow + JnpIndex(static_cast<int64_t>(s) + 1 - c.t0, a.k_max + 1));
    }
    bool spiked = false;
    if (own) {
      T in;
      if constexpr (kD1) {
        in = Add(ring_i, cur1);
        ring_i = T(0);
      } else {
        T& rnow = ring_sh[slot * pc + warp * P + lane];
        in = Add(rnow, cur1);
        rnow = T(0);
      }
      spiked = Lif(a, v, rf, ratio, vth, in);
      a.spikes[static_cast<int64_t>(t) * n + my_i] = static_cast<uint8_t>(spiked);
      ws += spiked;
      prev_spk = spiked;
      cur1 = cur2;
      if (t + 2 < a.t_steps) cur2 = a.i_ext[static_cast<int64_t>(t + 2) * n + my_i];
    }
    const uint32_t bits = __ballot_sync(FUMJAX_FULL_MASK, spiked);  // bit l: post l of this warp spiked
    for (int32_t idx = lane; idx < plan.csize * pw; idx += 32) {
      const int32_t r = idx / pw, pi = idx - r * pw;
      RemoteShared(sp, r)[warp_i0 + pi] = static_cast<uint8_t>((bits >> pi) & 1u);
    }
    ClusterArriveWait();

    // (C) the warp's incoming synapses.
    if (kRstdp && renorm) {
      for (int32_t q = wq0 + lane; q < wq1; q += 32) {
        if (staged) {
          el_sh[q] = St<W>(Mul(Ld(el_sh[q]), scale));
        } else {
          const int64_t k = __ldg(a.in_syn + cta_p0 + q);
          if (k < e) a.elig[k] = St<W>(Mul(Ld(a.elig[k]), scale));
        }
      }
      __syncwarp();
    }
    for (int32_t qb = wq0; qb < wq1; qb += 32 * kU) {
      int32_t qq[kU], jj[kU], pl[kU], rr[kU];
      int64_t kk[kU];
      bool sj[kU], si[kU];
      T val[kU];
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        qq[u] = qb + u * 32 + lane;
        jj[u] = -1;
        pl[u] = 0;
        kk[u] = qq[u];
        rr[u] = 1;
        if (!staged) {  // owning post from the bounds the post lanes hold (pw is warp-uniform)
          for (int32_t pi = 0; pi < pw; ++pi) {
            const int32_t b0 = __shfl_sync(FUMJAX_FULL_MASK, my_q0, pi);
            pl[u] = qq[u] >= b0 ? pi : pl[u];
          }
        }
        if (qq[u] < wq1) {
          if (staged) {
            const uint16_t j16 = pre_sh[qq[u]];
            jj[u] = j16 == kNoPre ? -1 : j16;
            pl[u] = lpost_sh[qq[u]];
            if (!kD1) rr[u] = dl_sh[qq[u]];
          } else {
            entry(qq[u], &kk[u], &jj[u], &rr[u]);
          }
        }
      }
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        const bool ok = jj[u] >= 0 && pl[u] < pw;
        sj[u] = ok && sp[jj[u]] != 0;
        si[u] = ok && ((bits >> pl[u]) & 1u);
        if (!ok) jj[u] = -1;
      }
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        const T yi = __shfl_sync(FUMJAX_FULL_MASK, y, pl[u] & 31);
        val[u] = T(0);
        if (jj[u] >= 0 && (sj[u] || si[u])) {
          const int32_t q = qq[u];
          const T wk = Ld(staged ? w_sh[q] : a.w[kk[u]]);
          val[u] = Mul(a.g_syn, wk);
          const uint8_t cj = code[jj[u]];
          if (kPlastic && cj != 2) {
            const T zero = T(0);
            const T ltp = si[u] ? Mul(a.a_plus, Mul(xc[jj[u]], a.decay_x)) : zero;
            const T ltd = sj[u] ? Mul(a.a_minus, Mul(yi, a.decay_y)) : zero;
            const T diff = Sub(ltp, ltd);
            const T dw = cj == 1 ? diff : -diff;
            if (kRstdp) {
              W* ep = staged ? &el_sh[q] : &a.elig[kk[u]];
              *ep = St<W>(Fma(dw, inv, Ld(*ep)));
            } else {
              (staged ? w_sh[q] : a.w[kk[u]]) = St<W>(ClipW(a, Add(wk, dw)));
            }
          }
        }
      }
      // Transmission: the post's lane adds its synapses' g*w in ascending synapse order.
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        uint32_t hit = __ballot_sync(FUMJAX_FULL_MASK, sj[u]);
        while (hit) {
          const int b = __ffs(hit) - 1;
          hit &= hit - 1;
          const T vb = __shfl_sync(FUMJAX_FULL_MASK, val[u], b);
          const int32_t pb = __shfl_sync(FUMJAX_FULL_MASK, pl[u], b);
          if (kD1) {
            if (lane == pb) ring_i = Add(ring_i, vb);
          } else {
            const int32_t dk = __shfl_sync(FUMJAX_FULL_MASK, rr[u], b);
            if (lane == pb) {
              int32_t rs = slot + dk;
              if (rs >= d) rs -= d;
              T* dst = &ring_sh[rs * pc + warp * P + lane];
              *dst = Add(*dst, vb);
            }
          }
        }
      }
    }
    __syncwarp();
  }

  // ---- write back (after every warp's last synapse pass) ----
  __syncthreads();
  if (own) {
    if (kPlastic && a.t_steps > 0) y = Fma(y, a.decay_y, static_cast<T>(prev_spk));
    a.v[my_i] = v;
    a.refrac[my_i] = rf;
    a.window_spikes[my_i] = ws;
    a.y[my_i] = y;
    if (kD1) {
      a.ring[my_i] = ring_i;
    } else {
      for (int32_t r = 0; r < d; ++r) a.ring[static_cast<int64_t>(r) * n + my_i] = ring_sh[r * pc + warp * P + lane];
    }
  }
  WriteBackShared<T, W, kMode>(a, rank, xb, spkb, s0, t0_init);
  if (staged && kPlastic) WriteBackSynapses<T, W, kMode>(a, cta_p0, n_entries, pre_sh, w_sh, el_sh);
}

// Event body (the default where a CTA's synapses fit): thread tid of CTA c owns post c*32*P + tid. Staging
// also builds a CTA-local out-CSR (entries grouped by presynaptic neuron, by counting sort). Per step, after
// the cluster barrier: (C1) each warp ballots 32 spike flags and, for each spiking pre, sets the hit bits of
// that pre's local synapses; the warp of a spiking post applies STDP to its synapses whose pre was silent;
// CTA barrier; (C2) each post's thread walks its own hit bits in ascending synapse order: transmission (same
// order as the reference scatter) and STDP of the synapses whose pre spiked. Only synapses touched by a spike
// are visited. The other parity's bitmap is cleared for the next step. Spike output is buffered in a register
// for 32 steps, so the cluster barrier's release never waits on global stores.
template <typename T, typename W, int kMode, bool kD1>
__device__ __forceinline__ void EventBody(const GpuArgs<T, W>& a, const ClusterPlan& plan, int32_t rank) {
  extern __shared__ __align__(16) unsigned char smem[];
  constexpr bool kPlastic = kMode != 0;
  constexpr bool kRstdp = kMode == 2;
  constexpr int kU = 4;
  const int32_t n = a.n, d = kD1 ? 1 : a.d;
  const int64_t e = a.e;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int32_t pc = kClusterWarps * plan.p;
  const int32_t cta_i0 = rank * pc;
  const int32_t n_own = max(0, min(pc, n - cta_i0));
  const bool own = tid < n_own;
  const int32_t my_i = cta_i0 + tid;

  T* xb = reinterpret_cast<T*>(smem);
  uint8_t* spkb = smem + plan.off_spk;
  uint8_t* code = smem + plan.off_code;
  T* ring_sh = reinterpret_cast<T*>(smem + plan.off_ring);  // (D, pc), D > 1 only
  int32_t* rend = reinterpret_cast<int32_t*>(smem + plan.off_rend);
  uint32_t* hit = reinterpret_cast<uint32_t*>(smem + plan.off_hit);
  W* w_sh = reinterpret_cast<W*>(smem + plan.off_w);
  W* el_sh = reinterpret_cast<W*>(smem + plan.off_elig);
  uint16_t* pre_sh = reinterpret_cast<uint16_t*>(smem + plan.off_pre);
  uint16_t* lrow = reinterpret_cast<uint16_t*>(smem + plan.off_lrow);
  uint8_t* dl_sh = smem + plan.off_delay;
  const int32_t hit_words = plan.hit_words;

  auto in_at = [&](int32_t i) {
    const int64_t q = __ldg(a.in_ptr + min(max(i, 0), n));
    return min(q, e);
  };
  const int64_t cta_p0 = in_at(cta_i0);
  const int64_t cta_p1 = max(cta_p0, in_at(cta_i0 + n_own));
  const int32_t n_entries = static_cast<int32_t>(cta_p1 - cta_p0);  // <= plan.cap (checked by the caller)
  int32_t my_q0 = 0, my_q1 = 0;                // this post's entries (local indices)
  if (own) {
    my_q0 = static_cast<int32_t>(min(max(in_at(my_i), cta_p0), cta_p1) - cta_p0);
    my_q1 = max(my_q0, static_cast<int32_t>(min(max(in_at(my_i + 1), cta_p0), cta_p1) - cta_p0));
  }
  const int32_t s0 = *a.step;
  const int32_t t0_init = *a.elig_t0;

  // ---- stage: replicas, synapses (in-list order), local out-CSR ----
  for (int32_t j = tid; j < n; j += kClusterThreads) {
    xb[j] = a.x[j];
    code[j] = __ldg(a.excitatory + j);
    rend[j] = 0;
  }
  for (int32_t wd = tid; wd < 2 * hit_words; wd += kClusterThreads) hit[wd] = 0;
  __syncthreads();
  for (int32_t qb = 0; qb < n_entries; qb += kU * kClusterThreads) {
    int64_t kk[kU];
    int32_t jj[kU], dd[kU];
    W wv[kU], ev[kU];
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int32_t q = qb + u * kClusterThreads + tid;
      kk[u] = q < n_entries ? static_cast<int64_t>(__ldg(a.in_syn + cta_p0 + q)) : e;
    }
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      jj[u] = -1;
      dd[u] = 1;
      wv[u] = ev[u] = St<W>(T(0));
      if (kk[u] < e) {
        jj[u] = PreOfSlot(a, kk[u]);
        if (!kD1) dd[u] = __ldg(a.delay + kk[u]);
        wv[u] = a.w[kk[u]];
        if (kRstdp) ev[u] = a.elig[kk[u]];
      }
    }
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int32_t q = qb + u * kClusterThreads + tid;
      if (q >= n_entries) continue;
      const bool ok = static_cast<uint32_t>(jj[u]) < static_cast<uint32_t>(n) && dd[u] >= 1 && dd[u] <= d;
      pre_sh[q] = ok ? static_cast<uint16_t>(jj[u]) : kNoPre;
      w_sh[q] = ok ? wv[u] : St<W>(T(0));
      if (kRstdp) el_sh[q] = ok ? ev[u] : St<W>(T(0));
      if (!kD1) dl_sh[q] = static_cast<uint8_t>(dd[u]);
      if (ok) atomicAdd(&rend[jj[u]], 1);
    }
  }
  __syncthreads();
  BlockExclusiveScan(rend, n);  // row starts
  for (int32_t q = tid; q < n_entries; q += kClusterThreads) {
    const uint16_t j = pre_sh[q];
    if (j != kNoPre) lrow[atomicAdd(&rend[j], 1)] = static_cast<uint16_t>(q);  // rend[j]: end of row j
  }

  T v = T(0), ratio = T(0), vth = T(0), y = T(0), ring_i = T(0), cur1 = T(0), cur2 = T(0);
  int32_t rf = 0, ws = 0;
  uint32_t prev_spk = 0, spk_hist = 0;
  if (own) {
    v = a.v[my_i];
    ratio = Div(a.dt, a.tau[my_i]);
    vth = a.v_th[my_i];
    rf = a.refrac[my_i];
    ws = a.window_spikes[my_i];
    y = a.y[my_i];
    if (kD1) {
      ring_i = a.ring[my_i];
    } else {
      for (int32_t r = 0; r < d; ++r) ring_sh[r * pc + tid] = a.ring[static_cast<int64_t>(r) * n + my_i];
    }
    if (a.t_steps > 0) cur1 = a.i_ext[my_i];
    if (a.t_steps > 1) cur2 = a.i_ext[static_cast<int64_t>(n) + my_i];
  }
  ClusterArriveWait();  // every CTA running (DSMEM), staging visible

  for (int32_t t = 0; t < a.t_steps; ++t) {
    const int32_t s = s0 + t;
    const int32_t slot = FloorMod(s, d);
    const int32_t par = t & 1;
    T* xc = xb + par * n;
    uint8_t* sp = spkb + par * n;
    uint32_t* hit_now = hit + par * hit_words;
    // (A) traces, LIF, spike flags to every CTA.
    if (kPlastic && t > 0) {
      const T* xp = xb + (par ^ 1) * n;
      const uint8_t* spp = spkb + (par ^ 1) * n;
      for (int32_t j = tid; j < n; j += kClusterThreads) xc[j] = Fma(xp[j], a.decay_x, static_cast<T>(spp[j]));
      y = Fma(y, a.decay_y, static_cast<T>(prev_spk));
    }
    bool spiked = false;
    if (own) {
      T in;
      if constexpr (kD1) {
        in = Add(ring_i, cur1);
        ring_i = T(0);
      } else {
        T& rnow = ring_sh[slot * pc + tid];
        in = Add(rnow, cur1);
        rnow = T(0);
      }
      spiked = Lif(a, v, rf, ratio, vth, in);
      ws += spiked;
      prev_spk = spiked;
      spk_hist |= static_cast<uint32_t>(spiked) << (t & 31);
      cur1 = cur2;
      for (int32_t r = 0; r < plan.csize; ++r) RemoteShared(sp, r)[my_i] = static_cast<uint8_t>(spiked);
    }
    ClusterArriveWait();

    // Global traffic after the barrier: prefetch, spike output every 32 steps.
    if (own) {
      if (t + 2 < a.t_steps) cur2 = a.i_ext[static_cast<int64_t>(t + 2) * n + my_i];
      if ((t & 31) == 31 || t + 1 == a.t_steps) {
        const int32_t tb = t & ~31;
        for (int32_t b = 0; b <= t - tb; ++b) {
          a.spikes[static_cast<int64_t>(tb + b) * n + my_i] = static_cast<uint8_t>((spk_hist >> b) & 1u);
        }
        spk_hist = 0;
      }
    }
    T inv = T(1);
    if (kRstdp) {
      const EligClock c = ClockAt(s0, t0_init, a.k_max, s);
      inv = __ldg(a.inv_pow + JnpIndex(static_cast<int64_t>(s) + 1 - c.t0, a.k_max + 1));
      if (c.renorm) {  // uniform: dense renormalization before this step's additions
        const T scale = Ld(a.gamma_pow[c.scale_idx]);
        for (int32_t q = tid; q < n_entries; q += kClusterThreads) el_sh[q] = St<W>(Mul(Ld(el_sh[q]), scale));
        __syncthreads();
      }
    }

    // (C1) hit bits of the spiking pres' local synapses.
    for (int32_t c0 = warp * 32; c0 < n; c0 += kClusterThreads) {
      const int32_t j = c0 + lane;
      uint32_t m = __ballot_sync(FUMJAX_FULL_MASK, j < n && sp[j] != 0);
      while (m) {
        const int32_t jr = c0 + __ffs(m) - 1;
        m &= m - 1;
        const int32_t r1 = rend[jr];
        for (int32_t r = (jr > 0 ? rend[jr - 1] : 0) + lane; r < r1; r += 32) {
          const int32_t q = lrow[r];
          atomicOr(&hit_now[q >> 5], 1u << (q & 31));
        }
      }
    }
    // (C1) STDP of a spiking post's synapses whose pre was silent (ltd = 0), by the post's warp.
    if (kPlastic) {
      uint32_t m = __ballot_sync(FUMJAX_FULL_MASK, spiked);
      while (m) {
        const int b = __ffs(m) - 1;
        m &= m - 1;
        const int32_t q0 = __shfl_sync(FUMJAX_FULL_MASK, my_q0, b);
        const int32_t q1 = __shfl_sync(FUMJAX_FULL_MASK, my_q1, b);
        for (int32_t q = q0 + lane; q < q1; q += 32) {
          const uint16_t j16 = pre_sh[q];
          if (j16 == kNoPre) continue;
          const int32_t j = j16;
          const uint8_t cj = code[j];
          if (sp[j] != 0 || cj == 2) continue;
          const T diff = Sub(Mul(a.a_plus, Mul(xc[j], a.decay_x)), T(0));
          const T dw = cj == 1 ? diff : -diff;
          if (kRstdp) {
            el_sh[q] = St<W>(Fma(dw, inv, Ld(el_sh[q])));
          } else {
            w_sh[q] = St<W>(ClipW(a, Add(Ld(w_sh[q]), dw)));
          }
        }
      }
    }
    __syncthreads();

    // (C2) each post: its hit synapses in ascending order -- transmission, then STDP (pre spiked).
    if (own) {
      for (int32_t wd = my_q0 >> 5; wd < (my_q1 + 31) >> 5; ++wd) {
        uint32_t bits = hit_now[wd];
        const int32_t lo = my_q0 - wd * 32, hi = my_q1 - wd * 32;
        if (lo > 0) bits &= ~0u << lo;
        if (hi < 32) bits &= (1u << hi) - 1u;
        while (bits) {
          const int32_t q = wd * 32 + __ffs(bits) - 1;
          bits &= bits - 1;
          const int32_t j = pre_sh[q];
          const T wk = Ld(w_sh[q]);
          const T val = Mul(a.g_syn, wk);
          if constexpr (kD1) {
            ring_i = Add(ring_i, val);
          } else {
            int32_t rs = slot + dl_sh[q];
            if (rs >= d) rs -= d;
            T& dst = ring_sh[rs * pc + tid];
            dst = Add(dst, val);
          }
          const uint8_t cj = code[j];
          if (kPlastic && cj != 2) {
            const T ltp = spiked ? Mul(a.a_plus, Mul(xc[j], a.decay_x)) : T(0);
            const T ltd = Mul(a.a_minus, Mul(y, a.decay_y));
            const T diff = Sub(ltp, ltd);
            const T dw = cj == 1 ? diff : -diff;
            if (kRstdp) {
              el_sh[q] = St<W>(Fma(dw, inv, Ld(el_sh[q])));
            } else {
              w_sh[q] = St<W>(ClipW(a, Add(wk, dw)));
            }
          }
        }
      }
    }
    uint32_t* hit_next = hit + (par ^ 1) * hit_words;
    for (int32_t wd = tid; wd < hit_words; wd += kClusterThreads) hit_next[wd] = 0;
  }

  // ---- write back ----
  __syncthreads();
  if (own) {
    if (kPlastic && a.t_steps > 0) y = Fma(y, a.decay_y, static_cast<T>(prev_spk));
    a.v[my_i] = v;
    a.refrac[my_i] = rf;
    a.window_spikes[my_i] = ws;
    a.y[my_i] = y;
    if (kD1) {
      a.ring[my_i] = ring_i;
    } else {
      for (int32_t r = 0; r < d; ++r) a.ring[static_cast<int64_t>(r) * n + my_i] = ring_sh[r * pc + tid];
    }
  }
  WriteBackShared<T, W, kMode>(a, rank, xb, spkb, s0, t0_init);
  if (kPlastic) WriteBackSynapses<T, W, kMode>(a, cta_p0, n_entries, pre_sh, w_sh, el_sh);
}

// The cluster kernel: the event body when every CTA's synapses fit its shared memory (a uniform decision:
// each CTA reads all CTAs' in-list bounds), else the pull body (which falls back to global memory).
template <typename T, typename W, int kMode, bool kD1>
__global__ void __launch_bounds__(kClusterThreads, 1)
    RunStepsClusterKernel(GpuArgs<T, W> a, ClusterPlan pull, ClusterPlan event) {
  const int32_t rank = static_cast<int32_t>(ClusterRank());
  bool fits = event.force_pull == 0 && event.cap > 0;
  const int32_t pc = kClusterWarps * event.p;
  for (int32_t r = 0; r < event.csize && fits; ++r) {
    const int32_t i0 = min(r * pc, a.n), i1 = min(i0 + pc, a.n);
    const int64_t p0 = min(static_cast<int64_t>(__ldg(a.in_ptr + i0)), a.e);
    const int64_t p1 = min(static_cast<int64_t>(__ldg(a.in_ptr + i1)), a.e);
    fits = p1 - p0 <= event.cap;
  }
  if (fits) {
    EventBody<T, W, kMode, kD1>(a, event, rank);
  } else {
    PullBody<T, W, kMode, kD1>(a, pull, rank);
  }
}
#endif  // !FUMJAX_USE_HIP


// =====================================================================================================
// Multi-kernel path (large networks: 7M neurons x 500 synapses on one GPU). Per step three launches:
//   FlushKernel (warp per row): returns at once unless a segment ends at this step (below); also the dense
//     eligibility renormalization at a call's first step when it is due (16-byte vectors).
//   NeuronKernel (grid over N): input + LIF, spikes; per neuron, in the scratch `work`, a post cell {post_yd
//     (y_i*decay_y, negated when i spiked: the traces are >= 0, so the sign bit carries the spike), the
//     segment's spike bits}, a summary byte of those bits and hist[b][j] = sign_j * a_plus * x_j*decay_x (the
//     LTP a synapse from j gets when its post spikes at segment step b); then the traces x' = fma(x, decay_x,
//     s), y' = fma(y, decay_y, s) at once. Spiking neurons are appended to a spike list (warp-aggregated
//     atomics) with their LTP factor a_plus * x_j*decay_x.
//   SynapseKernel (a fixed grid of warps looping over tasks): P parts of each listed spike's outgoing row,
//     each a batch of kMultiU x 32 synapses with every stage's loads in flight together: the synapse's pending
//     LTP (below), transmission by global atomicAdd into the ring, then STDP with post_yd of the post.
//     P = ceil(E/N / (kMultiU x 32)): about one batch per task, so the work spreads over all warps whatever the
//     rate. The grid is as many blocks as are resident.
// Lazy LTP (issue 5): a post spike's LTP on a synapse j -> i whose pre is silent is applied at the next visit
// of j's ROW (sequential in E), not through i's incoming list (random in E). Steps are grouped in segments of
// at most L = clamp(k_max, 1, 64) steps, starting at the call's first step, at every renormalization step and
// every L steps after either (a closed form of (step, elig_t0), like ClockAt). When j spikes at segment step
// t, each synapse j -> i first gets the LTP of i's spikes at segment steps in (t_prev, t), t_prev = j's last
// spike in the segment (or -1), in ascending order, each with hist[b][j] and the inv of its own step, rounded
// to the storage type after each, as the eager in-list stored them; then transmission (stdp: with the w the
// eager order had) and step t's update. At a segment's end FlushKernel applies every synapse's pending LTP
// (post spikes after j's last spike) and, at a renormalization step, the scale in the same pass. With
// defer_final_flush (run_driven's rstdp windows on the GPU) the call's last flush is left to a second FFI
// call, fumjax_window_reward, which also unscales the eligibility and applies the window's reward (computed
// by XLA in between) in that pass: E is streamed once at a window's end instead of twice. Per synapse
// the operations and their order are those of the reference, so w and elig are bit-identical to it; the
// in-list (in_ptr, in_syn) is not read by this path. Measured on the H200 at 7M x 500 (bench/GPU_RUN_STEPS.md):
// run_driven windows at 0.922 ms per step at 4.65 Hz (0.957 before the branch-free single term below; 1.29 at
// 9.4 Hz, 0.751 at 1.1 Hz, 0.971 at 5.94 Hz measured then); the eager in-list took 2.07 at 5.9 Hz, 3.07, 0.665.
// The list order varies between runs; nothing depends on it (each synapse has one writer, and the ring
// sums are order-free atomics already). Per step only spiking neurons' rows are touched, plus one pass over
// all rows per segment: O(N + spikes x K + E / L); the handler allocates nothing (the scratch is an extra
// result of the call).
// =====================================================================================================
constexpr int kMultiThreads = 256;
constexpr int kMultiWarps = kMultiThreads / FUMJAX_WARP;
constexpr int kMultiU = 4;    // synapses per lane in flight in the synapse kernel
constexpr int kSegMax = 64;   // bits of a segment word

// Steps per segment for an eligibility table of k_max + 1 entries (host and device).
__host__ __device__ __forceinline__ int32_t SegLen(int32_t k_max) {
  return k_max < 1 ? 1 : (k_max > kSegMax ? kSegMax : k_max);
}

// Rows of hist in the scratch: L in the plastic modes, none in mode off.
__host__ __device__ __forceinline__ int32_t MultiSegRows(int32_t mode, int32_t k_max) {
  return mode != 0 ? SegLen(k_max) : 0;
}

// First step of the segment that holds step s (s >= s0) of a call that started at (s0, t0_init).
__device__ __forceinline__ int32_t SegStart(int32_t s0, int32_t t0_init, int32_t k, int32_t seg_len, bool rstdp,
                                            int32_t s) {
  int32_t m = s0;
  if (rstdp) {
    const int32_t r1 = s0 - t0_init >= k ? s0 : t0_init + k;
    if (s >= r1) m = ClockAt(s0, t0_init, k, s).t0;  // the last renormalization step <= s
  }
  return m + (s - m) / seg_len * seg_len;
}

// Per neuron, one 16-byte cell: what an out-row visit needs of its post in one sector.
template <typename T>
struct alignas(16) PostCell {
  T yd;                     // y*decay_y, negated when the neuron spiked this step
  unsigned long long bits;  // bit b: spiked at segment step b
};
static_assert(sizeof(PostCell<float>) == 16 && sizeof(PostCell<double>) == 16, "a post cell is 16 bytes");

// Scratch layout in `work` ((16 / sizeof(T) + L + 3, N + 2) elements of T, L = 0 in mode off): post cells
// (16 N bytes), hist (L, N), list_ltp (N T), list_j (N int32), two spike counters (int32, by step parity),
// the summary bytes (N uint8: 0 no spike in the segment, 1 + b one spike at step b, 255 several), then (in the
// last row's slack) the deferred flag: nonzero when a call with defer_final_flush left a segment's LTP pending
// (multi path), zero when it did not (block and cluster paths apply everything eagerly).
template <typename T>
struct MultiScratch {
  PostCell<T>* cell;
  T* hist;
  T* list_ltp;
  int32_t* list_j;
  int32_t* count;
  uint8_t* once;
  int32_t* deferred;
  __host__ __device__ MultiScratch(T* work, int64_t n, int32_t seg_rows)
      : cell(reinterpret_cast<PostCell<T>*>(work)),
        hist(work + (16 / sizeof(T)) * n),
        list_ltp(hist + seg_rows * n),
        list_j(reinterpret_cast<int32_t*>(list_ltp + n)),
        count(list_j + n),
        once(reinterpret_cast<uint8_t*>(list_j + n + 2)),
        deferred(reinterpret_cast<int32_t*>(once + ((n + 3) & ~int64_t{3}))) {}
};

template <typename T>
__device__ __forceinline__ PostCell<T> LoadCell(const PostCell<T>* p) {
  union {
    uint4 v;
    PostCell<T> c;
  } u;
  u.v = *reinterpret_cast<const uint4*>(p);
  return u.c;
}
template <typename T>
__device__ __forceinline__ void StoreCell(PostCell<T>* p, T yd, unsigned long long bits) {
  union {
    uint4 v;
    PostCell<T> c;
  } u;
  u.v = make_uint4(0u, 0u, 0u, 0u);
  u.c.yd = yd;
  u.c.bits = bits;
  *reinterpret_cast<uint4*>(p) = u.v;
}

__device__ __forceinline__ uint8_t SpikeSummary(unsigned long long bits) {
  const int c = __popcll(bits);
  return c == 0 ? uint8_t{0} : (c == 1 ? static_cast<uint8_t>(__ffsll(static_cast<long long>(bits))) : uint8_t{255});
}

// Bits (last, seg_mask) of a segment word: the steps after the last set bit of `mine` (all when none).
__device__ __forceinline__ unsigned long long AfterLast(unsigned long long mine, unsigned long long seg_mask) {
  if (mine == 0) return seg_mask;
  const int h = 63 - __clzll(static_cast<long long>(mine));
  return h >= 63 ? 0ull : seg_mask & ~((2ull << h) - 1ull);
}

__device__ __forceinline__ unsigned long long WarpOr(unsigned long long v) {
#pragma unroll
  for (int o = FUMJAX_WARP / 2; o > 0; o >>= 1) v |= __shfl_xor_sync(FUMJAX_FULL_MASK, v, o);
  return v;
}

// One deferred LTP term on a synapse value held in T (elig in rstdp, w in stdp), rounded to W as it was stored.
template <typename T, typename W>
__device__ __forceinline__ T LtpTerm(const GpuArgs<T, W>& a, bool rstdp, T x, T dw, T inv) {
  return rstdp ? Ld(St<W>(Fma(dw, inv, x))) : Ld(St<W>(ClipW(a, Add(x, dw))));
}

// inv_pow of each step of the segment that starts at seg_start (its t0 holds for all of its steps).
template <typename T, typename W>
__device__ __forceinline__ void FillSegInv(const GpuArgs<T, W>& a, T* inv_seg, int32_t s0, int32_t t0_init,
                                           int32_t seg_start) {
  const int32_t t0 = a.mode == 2 ? ClockAt(s0, t0_init, a.k_max, seg_start).t0 : 0;
  for (int q = threadIdx.x; q < kSegMax; q += blockDim.x) {
    inv_seg[q] = a.mode == 2 ? a.inv_pow[JnpIndex(static_cast<int64_t>(seg_start) + q + 1 - t0, a.k_max + 1)] : T(1);
  }
  __syncthreads();
}

// A warp's copy of hist[b][j] for the steps b in `need` (warp-uniform).
template <typename T>
__device__ __forceinline__ void LoadHist(const T* hist, int64_t n, int32_t j, unsigned long long need, T* hw,
                                         int lane) {
  for (int q = lane; q < kSegMax; q += FUMJAX_WARP) {
    if ((need >> q) & 1ull) hw[q] = hist[static_cast<int64_t>(q) * n + j];
  }
  __syncwarp();
}

// elig[0, e) *= scale in T, rounded to W, in 16-byte vectors where elig is 16-byte aligned, 4 in flight per
// thread (the flush kernel's grid is only the resident blocks).
template <typename T, typename W>
__device__ __forceinline__ void RenormAll(W* elig, int64_t e, T scale, int64_t gid, int64_t stride) {
  constexpr int kVec = 16 / sizeof(W);
  constexpr int kU = 4;
  int64_t done = 0;
  if ((reinterpret_cast<uintptr_t>(elig) & 15u) == 0) {
    const int64_t nv = e / kVec;
    uint4* p = reinterpret_cast<uint4*>(elig);
    for (int64_t q = gid; q < nv; q += kU * stride) {
      union {
        uint4 u;
        W w[kVec];
      } b[kU];
#pragma unroll
      for (int v = 0; v < kU; ++v) {
        if (q + v * stride < nv) b[v].u = p[q + v * stride];
      }
#pragma unroll
      for (int v = 0; v < kU; ++v) {
        if (q + v * stride >= nv) continue;
#pragma unroll
        for (int l = 0; l < kVec; ++l) b[v].w[l] = St<W>(Mul(Ld(b[v].w[l]), scale));
        p[q + v * stride] = b[v].u;
      }
    }
    done = nv * kVec;
  }
  for (int64_t k = done + gid; k < e; k += stride) elig[k] = St<W>(Mul(Ld(elig[k]), scale));
}

// One row's flush (FlushKernel): a synapse's pending LTP terms, then the renormalization's scale; at a
// window's end (kReward) also the reward, w = clip(fma(coef, e, w)) with e the eligibility as stored.
template <typename T, typename W, bool kReward>
struct FlushRow {
  const GpuArgs<T, W>* a;
  const MultiScratch<T>* m;
  const T* hw;       // hist[b][j] of the row's pre for the pending steps b
  const T* inv_seg;  // inv_pow of each segment step
  unsigned long long rest;
  T scale;
  bool renorm, rstdp;
  T coef;  // kReward: eta_eff(R) * R

  // plasticity.apply_reward on one synapse (XLA contracts its multiply-add: fma, one rounding, then clip).
  __device__ __forceinline__ W Reward(W wk, W ek) const { return St<W>(ClipW(*a, Fma(coef, Ld(ek), Ld(wk)))); }

  // x (elig in rstdp, w in stdp) after post i's pending LTP terms on this row in ascending step order, then
  // the scale; whether it changed (else x is left alone and need not be stored). so: i's summary byte (0 when
  // nothing can pend). One spike of i in the segment, the common case, is at most one term, taken without a
  // branch (a warp's lanes hold different synapses: a branch per term ran both sides for most of them); only
  // several spikes (255) walk i's full bits. hw is read only when rest != 0, i.e. in rows that end with a
  // __syncwarp before the next row's LoadHist writes it.
  __device__ __forceinline__ bool Update(uint8_t so, int32_t i, W& x) const {
    T v = Ld(x);
    bool changed = renorm;
    if (so == 255) {
      for (unsigned long long p = rest & m->cell[i].bits; p != 0; p &= p - 1ull) {
        const int q = __ffsll(static_cast<long long>(p)) - 1;
        v = LtpTerm(*a, rstdp, v, hw[q], inv_seg[q]);
        changed = true;
      }
    } else if (rest != 0) {
      const int q = (so - 1) & (kSegMax - 1);
      const bool on = so != 0 && ((rest >> q) & 1ull) != 0;
      const T term = LtpTerm(*a, rstdp, v, hw[q], inv_seg[q]);
      v = on ? term : v;
      changed |= on;
    }
    if (!changed) return false;
    x = renorm ? St<W>(Mul(v, scale)) : St<W>(v);
    return true;
  }
  __device__ __forceinline__ int32_t Post(int32_t i) const {
    return static_cast<uint32_t>(i) < static_cast<uint32_t>(a->n) ? i : -1;
  }
  __device__ __forceinline__ void Scalar(W* syn, int64_t k) const {
    int32_t i = -1;
    uint8_t so = 0;
    if (rest) {
      i = Post(__ldg(a->post + k));
      if (i >= 0) so = m->once[i];
    }
    W x = syn[k];
    if constexpr (kReward) {
      const W wk = a->w[k];
      Update(so, i, x);  // renorm is set: always stored
      syn[k] = x;
      a->w[k] = Reward(wk, x);
    } else {
      if (Update(so, i, x)) syn[k] = x;
    }
  }
  // Chunk c (8 synapses) from the 8-aligned slot base: loads, then the summary bytes, then the updates.
  __device__ __forceinline__ void Chunk(W* syn, int64_t base, int32_t c) const {
    constexpr int kV = 8 * sizeof(W) / 16;  // 16-byte vectors per chunk of W
    union {
      uint4 u[kV];
      W w[8];
    } x;
    union {
      int4 u[2];
      int32_t i[8];
    } ii;
    const int64_t k = base + 8 * static_cast<int64_t>(c);
    uint4* px = reinterpret_cast<uint4*>(syn + k);
#pragma unroll
    for (int v = 0; v < kV; ++v) x.u[v] = px[v];
    union {
      uint4 u[kV];
      W w[8];
    } xw;
    uint4* pw = reinterpret_cast<uint4*>(a->w + k);
    if constexpr (kReward) {
#pragma unroll
      for (int v = 0; v < kV; ++v) xw.u[v] = pw[v];
    }
    uint32_t so_lo = 0, so_hi = 0;  // the 8 summary bytes, packed
    if (rest) {
      const int4* pi = reinterpret_cast<const int4*>(a->post + k);
      ii.u[0] = __ldg(pi);
      ii.u[1] = __ldg(pi + 1);
#pragma unroll
      for (int l = 0; l < 8; ++l) {
        ii.i[l] = Post(ii.i[l]);
        const uint32_t b = ii.i[l] >= 0 ? m->once[ii.i[l]] : 0u;
        if (l < 4) so_lo |= b << (8 * l); else so_hi |= b << (8 * (l - 4));
      }
    }
    bool dirty = false;
#pragma unroll
    for (int l = 0; l < 8; ++l) {
      const uint8_t so = static_cast<uint8_t>((l < 4 ? so_lo : so_hi) >> (8 * (l & 3)));
      dirty |= Update(so, ii.i[l], x.w[l]);
    }
    if (dirty) {
#pragma unroll
      for (int v = 0; v < kV; ++v) px[v] = x.u[v];
    }
    if constexpr (kReward) {
#pragma unroll
      for (int l = 0; l < 8; ++l) xw.w[l] = Reward(xw.w[l], x.w[l]);
#pragma unroll
      for (int v = 0; v < kV; ++v) pw[v] = xw.u[v];
    }
  }
};

// Before step t's NeuronKernel (0 <= t < T) and after the last step (t = T): at a segment's end, every synapse's
// pending LTP, then the renormalization if step t has one; at t = 0 only the renormalization (nothing pends
// at a call's start: the previous call ended with a flush).
// kReward (rstdp, t = T, launched by fumjax_window_reward after a call with defer_final_flush): the window's
// end in one pass over E -- the pending LTP (where *deferred says the call left some), the eligibility
// unscaled to e = e_hat * gamma^(n - t0) (dynamics._end_window) and w = clip(w + coef * e), coef read from the
// device: what the separate XLA pass over w and elig did, without reading elig twice.
template <typename T, typename W, bool kReward>
__global__ void __launch_bounds__(kMultiThreads, 4) FlushKernel(GpuArgs<T, W> a, int32_t t, const T* coef_ptr) {
  __shared__ T inv_seg[kSegMax];
  __shared__ T hist_w[kMultiWarps][kSegMax];
  const int32_t n = a.n;
  const int64_t e = a.e;
  const int32_t s0 = *a.step, t0_init = *a.elig_t0;
  const int32_t s = s0 + t;
  const bool rstdp = a.mode == 2;
  bool renorm = false;
  T scale = T(1);
  if (rstdp && t < a.t_steps) {
    const EligClock c = ClockAt(s0, t0_init, a.k_max, s);
    renorm = c.renorm;
    scale = Ld(a.gamma_pow[c.scale_idx]);
  }
  T coef = T(0);
  if constexpr (kReward) {  // t = T >= 1: the origin in effect after the call's last step, then n - t0
    const int32_t t0_end = ClockAt(s0, t0_init, a.k_max, s - 1).t0;
    renorm = true;
    scale = Ld(a.gamma_pow[JnpIndex(static_cast<int64_t>(s) - t0_end, a.k_max + 1)]);
    coef = *coef_ptr;
  }
  if (!kReward && t == 0) {
    const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
    if (renorm) RenormAll<T, W>(a.elig, e, scale, static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x, stride);
    return;
  }
  const int32_t seg_len = SegLen(a.k_max);
  if (t < a.t_steps && SegStart(s0, t0_init, a.k_max, seg_len, rstdp, s) != s) return;
  const int32_t seg_start = SegStart(s0, t0_init, a.k_max, seg_len, rstdp, s - 1);
  const int32_t len = s - seg_start;  // 1 .. seg_len
  const unsigned long long seg_mask = len >= 64 ? ~0ull : (1ull << len) - 1ull;
  FillSegInv(a, inv_seg, s0, t0_init, seg_start);
  MultiScratch<T> m(a.work, n, MultiSegRows(a.mode, a.k_max));
  const bool pending = !kReward || *m.deferred != 0;
  W* syn = rstdp ? a.elig : a.w;
  const int lane = threadIdx.x % FUMJAX_WARP;
  T* hw = hist_w[threadIdx.x / FUMJAX_WARP];
  const int64_t warps_total = static_cast<int64_t>(gridDim.x) * kMultiWarps;
  // A row per warp. The 8-aligned body of a row goes in chunks of 8 consecutive synapses per lane (posts as
  // two 16-byte loads, the eligibility (stdp: w) as 16-byte vectors, stored back whole when one changed);
  // the unaligned head and tail (< 8 each) and rows of misaligned arrays go synapse per lane. The next
  // row's header (row_ptr pair, code, spike bits) is loaded while this row runs.
  const bool vec_ok = ((reinterpret_cast<uintptr_t>(a.post) | reinterpret_cast<uintptr_t>(syn) |
                        (kReward ? reinterpret_cast<uintptr_t>(a.w) : 0u)) & 15u) == 0;
  int64_t j = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / FUMJAX_WARP;
  uint32_t h0 = 0, h1 = 0;
  uint8_t hc = 2;
  unsigned long long hb = 0;
  if (j < n) {
    h0 = __ldg(a.row_ptr + j), h1 = __ldg(a.row_ptr + j + 1), hc = __ldg(a.excitatory + j);
    hb = pending ? m.cell[j].bits : 0ull;
  }
  for (; j < n; j += warps_total) {
    const int64_t k0 = h0, k1 = max(k0, min(static_cast<int64_t>(h1), e));
    // steps whose post spikes still pend on j's synapses: after j's last spike in the segment
    const unsigned long long rest = hc != 2 && pending ? AfterLast(hb & seg_mask, seg_mask) : 0ull;
    const int64_t jn = j + warps_total;
    if (jn < n) {
      h0 = __ldg(a.row_ptr + jn), h1 = __ldg(a.row_ptr + jn + 1), hc = __ldg(a.excitatory + jn);
      hb = pending ? m.cell[jn].bits : 0ull;
    }
    if (rest == 0 && !renorm) continue;
    if (rest) LoadHist(m.hist, n, static_cast<int32_t>(j), rest, hw, lane);  // warp-uniform
    const FlushRow<T, W, kReward> row{&a, &m, hw, inv_seg, rest, scale, renorm, rstdp, coef};
    const int64_t b0 = vec_ok ? min(k1, (k0 + 7) & ~int64_t{7}) : k1;
    const int64_t b1 = vec_ok ? max(b0, k1 & ~int64_t{7}) : k1;
    if (vec_ok) {  // head (lanes 0-7) and tail (lanes 16-23) together
      const int64_t k = lane < 16 ? k0 + lane : b1 + (lane - 16);
      if (lane < 16 ? k < b0 : k < k1) row.Scalar(syn, k);
    } else {
      for (int64_t k = k0 + lane; k < k1; k += FUMJAX_WARP) row.Scalar(syn, k);
    }
    const int32_t chunks = static_cast<int32_t>((b1 - b0) / 8);
    for (int32_t c = lane; c < chunks; c += FUMJAX_WARP) row.Chunk(syn, b0, c);
    if (rest) __syncwarp();  // hw is read above before the next row overwrites it
  }
}

template <typename T, typename W>
__global__ void __launch_bounds__(kMultiThreads) NeuronKernel(GpuArgs<T, W> a, int32_t t) {
  const int32_t n = a.n;
  const int32_t s0 = *a.step;
  const int32_t s = s0 + t;
  const int32_t slot = FloorMod(s, a.d);
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;  // a multiple of the warp size
  const int64_t gid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int lane = threadIdx.x % FUMJAX_WARP;
  const bool plastic = a.mode != 0;
  const int32_t seg_len = SegLen(a.k_max);
  const int32_t b = plastic ? s - SegStart(s0, *a.elig_t0, a.k_max, seg_len, a.mode == 2, s) : 0;
  T* ring_now = a.ring + static_cast<int64_t>(slot) * n;
  const T* iext = a.i_ext + static_cast<int64_t>(t) * n;
  uint8_t* spk = a.spikes + static_cast<int64_t>(t) * n;
  MultiScratch<T> m(a.work, n, MultiSegRows(a.mode, a.k_max));
  T* hist_b = m.hist + static_cast<int64_t>(b) * n;
  int32_t* count = m.count + (t & 1);
  for (int64_t i = gid; i - lane < n; i += stride) {  // whole warps iterate together (ballot below)
    bool spiked = false;
    T ltp = T(0);
    if (i < n) {
      // Every load first: the stores below may alias them as far as the compiler knows, so a load placed
      // after a store would wait for it and the neuron would cost several dependent DRAM round trips.
      const T ring_i = ring_now[i], iext_i = iext[i], tau_i = a.tau[i], vth_i = a.v_th[i];
      T v = a.v[i];
      int32_t r = a.refrac[i];
      T xi = T(0), yi = T(0);
      int code = 2;
      unsigned long long bits = 0;
      if (plastic) {
        xi = a.x[i], yi = a.y[i], code = __ldg(a.excitatory + i);
        if (b != 0) bits = m.cell[i].bits;
      }
      ring_now[i] = T(0);
      spiked = Lif(a, v, r, Div(a.dt, tau_i), vth_i, Add(ring_i, iext_i));
      a.v[i] = v;
      a.refrac[i] = r;
      spk[i] = static_cast<uint8_t>(spiked);
      if (spiked) a.window_spikes[i] += 1;
      if (plastic) {
        const T sp = static_cast<T>(spiked);
        ltp = Mul(a.a_plus, Mul(xi, a.decay_x));
        const T diff = Sub(ltp, T(0));
        hist_b[i] = code == 1 ? diff : -diff;  // read only for plastic pres (code != 2) at steps they were silent
        if (spiked) bits |= 1ull << b;
        const T yd = Mul(yi, a.decay_y);
        StoreCell(m.cell + i, spiked ? -yd : yd, bits);  // the whole cell: no partly written sector
        if (spiked || b == 0) m.once[i] = SpikeSummary(bits);
        a.x[i] = Fma(xi, a.decay_x, sp);
        a.y[i] = Fma(yi, a.decay_y, sp);
      }
    }
    const auto mask = __ballot_sync(FUMJAX_FULL_MASK, spiked);
    if (mask) {
      const int leader = __ffsll(static_cast<unsigned long long>(mask)) - 1;
      int32_t base = 0;
      if (lane == leader) base = atomicAdd(count, static_cast<int32_t>(__popcll(static_cast<unsigned long long>(mask))));
      base = __shfl_sync(FUMJAX_FULL_MASK, base, leader);
      if (spiked) {
        const unsigned long long below = (1ull << lane) - 1ull;
        const int32_t pos = base + __popcll(static_cast<unsigned long long>(mask) & below);
        m.list_j[pos] = static_cast<int32_t>(i);
        m.list_ltp[pos] = ltp;
      }
    }
  }
}

template <typename T, typename W>
__global__ void __launch_bounds__(kMultiThreads) SynapseKernel(GpuArgs<T, W> a, int32_t t, int32_t parts) {
  __shared__ T inv_seg[kSegMax];
  __shared__ T hist_w[kMultiWarps][kSegMax];
  const int32_t n = a.n, d = a.d;
  const int64_t e = a.e;
  const int32_t s0 = *a.step, t0_init = *a.elig_t0;
  const int32_t s = s0 + t;
  const int32_t slot = FloorMod(s, d);
  const bool plastic = a.mode != 0;
  const bool rstdp = a.mode == 2;
  const int32_t seg_len = SegLen(a.k_max);
  const int32_t seg_start = plastic ? SegStart(s0, t0_init, a.k_max, seg_len, rstdp, s) : s;
  const int32_t bt = s - seg_start;  // this step's bit
  const unsigned long long below_t = (1ull << bt) - 1ull;
  FillSegInv(a, inv_seg, s0, t0_init, seg_start);
  const T inv = inv_seg[bt];
  MultiScratch<T> m(a.work, n, MultiSegRows(a.mode, a.k_max));
  const int64_t ns = m.count[t & 1];
  if (blockIdx.x == 0 && threadIdx.x == 0) m.count[(t + 1) & 1] = 0;  // NeuronKernel(t + 1) appends there
  const int lane = threadIdx.x % FUMJAX_WARP;
  T* hw = hist_w[threadIdx.x / FUMJAX_WARP];
  const int64_t warps_total = static_cast<int64_t>(gridDim.x) * kMultiWarps;
  constexpr int64_t kBatch = static_cast<int64_t>(kMultiU) * FUMJAX_WARP;
  const int64_t n_tasks = ns * parts;
  for (int64_t task = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / FUMJAX_WARP; task < n_tasks;
       task += warps_total) {
    const int64_t sp = task / parts;
    const int32_t part = static_cast<int32_t>(task - sp * parts);
    const int32_t j = m.list_j[sp];
    if (static_cast<uint32_t>(j) >= static_cast<uint32_t>(n)) continue;
    const int64_t k0 = __ldg(a.row_ptr + j), k1 = min(static_cast<int64_t>(__ldg(a.row_ptr + j + 1)), e);
    const uint8_t code_j = __ldg(a.excitatory + j);
    const bool learn = plastic && code_j != 2;
    const T ltp_j = m.list_ltp[sp];
    // Post spikes after j's previous spike in the segment and before this step pend on j's synapses.
    const unsigned long long window = learn ? AfterLast(m.cell[j].bits & below_t, below_t) : 0ull;
    for (int64_t kb = k0 + part * kBatch; kb < k1; kb += parts * kBatch) {
      int64_t kk[kMultiU];
      int32_t ii[kMultiU], rr[kMultiU];
      T ww[kMultiU], yd[kMultiU];
      W ee[kMultiU];  // elig (rstdp): loaded with post and w, not after the ring atomics of earlier synapses
      unsigned long long pb[kMultiU];
#pragma unroll
      for (int u = 0; u < kMultiU; ++u) {
        kk[u] = kb + u * FUMJAX_WARP + lane;
        ii[u] = -1;
        rr[u] = 1;
        if (kk[u] < k1) {
          ii[u] = __ldg(a.post + kk[u]);
          ww[u] = Ld(a.w[kk[u]]);
          if (d > 1) rr[u] = __ldg(a.delay + kk[u]);
          if (learn && rstdp) ee[u] = a.elig[kk[u]];
        }
      }
      unsigned long long need = 0;
#pragma unroll
      for (int u = 0; u < kMultiU; ++u) {
        const bool ok = static_cast<uint32_t>(ii[u]) < static_cast<uint32_t>(n) && rr[u] >= 1 && rr[u] <= d;
        if (!ok) ii[u] = -1;
        yd[u] = T(0);
        pb[u] = 0;
        if (learn && ok) {
          const PostCell<T> c = LoadCell(m.cell + ii[u]);
          yd[u] = c.yd;
          pb[u] = c.bits & window;
          need |= pb[u];
        }
      }
      if (learn) need = WarpOr(need);
      if (need) LoadHist(m.hist, n, j, need, hw, lane);
#pragma unroll
      for (int u = 0; u < kMultiU; ++u) {
        if (ii[u] < 0) continue;
        int32_t rs = slot;
        if (d > 1) {
          rs = slot + rr[u];
          if (rs >= d) rs -= d;
        }
        T x = T(0);  // elig (rstdp) or w (stdp) after the pending LTP
        if (learn) {
          x = rstdp ? Ld(ee[u]) : ww[u];
          for (unsigned long long p = pb[u]; p != 0; p &= p - 1ull) {
            const int q = __ffsll(static_cast<long long>(p)) - 1;
            x = LtpTerm(a, rstdp, x, hw[q], inv_seg[q]);
          }
        }
        atomicAdd(a.ring + static_cast<int64_t>(rs) * n + ii[u], Mul(a.g_syn, rstdp || !learn ? ww[u] : x));
        if (learn) {
          const bool spk_i = signbit(yd[u]);
          const T diff = Sub(spk_i ? ltp_j : T(0), Mul(a.a_minus, spk_i ? -yd[u] : yd[u]));
          StoreDw(a, kk[u], code_j == 1 ? diff : -diff, rstdp, inv, x, x);
        }
      }
      if (need) __syncwarp();  // hw is read above before the next batch overwrites it
    }
  }
}

template <typename T, typename W>
__global__ void FinalizeKernel(GpuArgs<T, W> a) {
  const int32_t s0 = *a.step;
  *a.step = s0 + a.t_steps;
  if (a.mode == 2 && a.t_steps > 0) *a.elig_t0 = ClockAt(s0, *a.elig_t0, a.k_max, s0 + a.t_steps - 1).t0;
}

// =====================================================================================================
// Host side.
// =====================================================================================================
struct DeviceInfo {
  int max_shared_optin = 0;
  int sm_count = 0;
  int cc_major = 0;
  int device = 0;
};

DeviceInfo GetDeviceInfo() {
  // Per-device cache (host queries only, no stream work): safe during graph capture.
  static DeviceInfo cache[64];
  static bool have[64] = {};
  int dev = 0;
  if (hipGetDevice(&dev) != hipSuccess || dev < 0 || dev >= 64) return DeviceInfo{48 * 1024, 1};
  if (!have[dev]) {
    DeviceInfo info;
    hipDeviceGetAttribute(&info.max_shared_optin, hipDevAttrMaxSharedMemoryPerBlockOptin, dev);
    hipDeviceGetAttribute(&info.sm_count, hipDevAttrMultiProcessorCount, dev);
    hipDeviceGetAttribute(&info.cc_major, hipDevAttrComputeCapabilityMajor, dev);
    info.device = dev;
    cache[dev] = info;
    have[dev] = true;
  }
  return cache[dev];
}

#if !defined(FUMJAX_USE_HIP)
// Shared-memory layout of the cluster path for C CTAs; false when the path cannot take the network.
template <typename T, typename W>
bool PlanCluster(int64_t n, int64_t e, int64_t d, int32_t mode, int32_t csize, int64_t max_smem, ClusterPlan* plan) {
  max_smem -= 256;  // static shared memory of the kernel (BlockExclusiveScan)
  if (n < 1 || n >= kNoPre || d < 1 || d > 255 || csize < 1) return false;
  const int64_t warps = static_cast<int64_t>(csize) * kClusterWarps;
  const int64_t p = (n + warps - 1) / warps;
  if (p > 32) return false;
  const int64_t pc = p * kClusterWarps;
  auto al = [](int64_t b) { return (b + 15) / 16 * 16; };
  int64_t off = al(2 * n * static_cast<int64_t>(sizeof(T)));
  plan->off_spk = static_cast<uint32_t>(off);
  off += al(2 * n);
  plan->off_code = static_cast<uint32_t>(off);
  off += al(n);
  plan->off_ring = static_cast<uint32_t>(off);
  if (d > 1) off += al(d * pc * static_cast<int64_t>(sizeof(T)));
  const int64_t entry_bytes = static_cast<int64_t>(sizeof(W)) * (mode == 2 ? 2 : 1) + 2 + 1 + (d > 1 ? 1 : 0);
  if (off + 16 * entry_bytes > max_smem) return false;
  const int64_t cap = std::min((max_smem - off) / entry_bytes / 16 * 16, (e + 15) / 16 * 16);
  plan->off_w = static_cast<uint32_t>(off);
  off += cap * static_cast<int64_t>(sizeof(W));
  plan->off_elig = static_cast<uint32_t>(off);
  if (mode == 2) off += cap * static_cast<int64_t>(sizeof(W));
  plan->off_pre = static_cast<uint32_t>(off);
  off += cap * 2;
  plan->off_lpost = static_cast<uint32_t>(off);
  off += cap;
  plan->off_delay = static_cast<uint32_t>(off);
  if (d > 1) off += cap;
  plan->bytes = static_cast<uint32_t>(off);
  plan->cap = static_cast<int32_t>(cap);
  plan->p = static_cast<int32_t>(p);
  plan->csize = csize;
  return true;
}

// Shared-memory layout of the event body (same post partition as PlanCluster's).
template <typename T, typename W>
bool PlanEvent(int64_t n, int64_t e, int64_t d, int32_t mode, int32_t csize, int64_t max_smem, ClusterPlan* plan) {
  ClusterPlan pull;
  if (!PlanCluster<T, W>(n, e, d, mode, csize, max_smem, &pull)) return false;
  max_smem -= 256;
  const int64_t pc = static_cast<int64_t>(pull.p) * kClusterWarps;
  auto al = [](int64_t b) { return (b + 15) / 16 * 16; };
  *plan = pull;
  int64_t off = pull.off_ring;
  if (d > 1) off += al(d * pc * static_cast<int64_t>(sizeof(T)));
  plan->off_rend = static_cast<uint32_t>(off);
  off += al(4 * n);
  // Per synapse: w, elig (rstdp), pre and out-CSR slot (uint16), delay (D > 1), 2 hit bits (1/4 byte).
  const int64_t entry_bytes4 = 4 * (static_cast<int64_t>(sizeof(W)) * (mode == 2 ? 2 : 1) + 4 + (d > 1 ? 1 : 0)) + 1;
  if (off + 64 > max_smem) return false;
  const int64_t cap = std::min((max_smem - off - 64) * 4 / entry_bytes4 / 64 * 64, (e + 63) / 64 * 64);
  if (cap <= 0) return false;
  plan->hit_words = static_cast<int32_t>(cap / 32);
  plan->off_hit = static_cast<uint32_t>(off);
  off += 2 * (cap / 32) * 4;
  plan->off_w = static_cast<uint32_t>(off);
  off += cap * static_cast<int64_t>(sizeof(W));
  plan->off_elig = static_cast<uint32_t>(off);
  if (mode == 2) off += cap * static_cast<int64_t>(sizeof(W));
  plan->off_pre = static_cast<uint32_t>(off);
  off += cap * 2;
  plan->off_lrow = static_cast<uint32_t>(off);
  off += cap * 2;
  plan->off_delay = static_cast<uint32_t>(off);
  if (d > 1) off += cap;
  plan->off_lpost = plan->off_delay;  // unused by the event body
  plan->bytes = static_cast<uint32_t>(off);
  plan->cap = static_cast<int32_t>(cap);
  return off <= max_smem;
}

// Launches (or, with a == nullptr, only checks that a cluster of plan.csize CTAs can be scheduled).
template <typename T, typename W, int kMode, bool kD1>
hipError_t ClusterLaunchT(const GpuArgs<T, W>* a, const ClusterPlan& pull, const ClusterPlan& event,
                          hipStream_t stream) {
  ClusterPlan plan = pull;  // the launch's shared memory: the larger of the two layouts
  plan.bytes = std::max(pull.bytes, event.bytes);
  auto* kern = &RunStepsClusterKernel<T, W, kMode, kD1>;
  static uint32_t allowed = 48 * 1024;  // per-function limits, raised once (host calls only: capture-safe)
  static bool nonportable = false;
  if (plan.bytes > allowed) {
    const hipError_t err = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                static_cast<int>(plan.bytes));
    if (err != hipSuccess) return err;
    allowed = plan.bytes;
  }
  if (plan.csize > 8 && !nonportable) {
    const hipError_t err = cudaFuncSetAttribute(kern, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
    if (err != hipSuccess) return err;
    nonportable = true;
  }
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(static_cast<unsigned>(plan.csize), 1, 1);
  cfg.blockDim = dim3(kClusterThreads, 1, 1);
  cfg.dynamicSmemBytes = plan.bytes;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = static_cast<unsigned>(plan.csize);
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  if (a == nullptr) {
    int clusters = 0;
    const hipError_t err = cudaOccupancyMaxActiveClusters(&clusters, kern, &cfg);
    if (err != hipSuccess) return err;
    return clusters >= 1 ? hipSuccess : cudaErrorInvalidClusterSize;
  }
  return cudaLaunchKernelEx(&cfg, kern, *a, pull, event);
}

template <typename T, typename W>
hipError_t ClusterLaunch(const GpuArgs<T, W>* a, int32_t mode, bool d1, const ClusterPlan& pull,
                         const ClusterPlan& event, hipStream_t stream) {
  switch (mode) {
    case 0:
      return d1 ? ClusterLaunchT<T, W, 0, true>(a, pull, event, stream) : ClusterLaunchT<T, W, 0, false>(a, pull, event, stream);
    case 1:
      return d1 ? ClusterLaunchT<T, W, 1, true>(a, pull, event, stream) : ClusterLaunchT<T, W, 1, false>(a, pull, event, stream);
    default:
      return d1 ? ClusterLaunchT<T, W, 2, true>(a, pull, event, stream) : ClusterLaunchT<T, W, 2, false>(a, pull, event, stream);
  }
}

// Picks the cluster size: the requested one (attribute gpu_cluster, from FUMJAX_GPU_CLUSTER at trace time;
// 0 = default 8) or the next smaller that plans and schedules. `need_staged`: only accept a plan whose
// expected per-CTA synapses fit shared memory. force_pull: the pull body (gpu_cluster_body, tests/timings).
template <typename T, typename W>
bool ChooseCluster(const GpuArgs<T, W>& a, const DeviceInfo& info, bool need_staged, int32_t want,
                   bool force_pull, ClusterPlan* pull, ClusterPlan* event) {
  if (info.cc_major < 9) return false;
  if (want < 1 || want > 16) want = 8;
  struct Key {
    int64_t n = -1, e = -1, d = -1;
    int32_t mode = -1, want = -1, dev = -1;
    bool need = false;
    bool operator==(const Key& o) const {
      return n == o.n && e == o.e && d == o.d && mode == o.mode && want == o.want && dev == o.dev && need == o.need;
    }
  };
  static std::mutex mu;
  static Key last_key;
  static ClusterPlan last_pull, last_event;
  static bool last_ok = false;
  std::lock_guard<std::mutex> lock(mu);
  Key key;
  key.n = a.n;
  key.e = a.e;
  key.d = a.d;
  key.mode = a.mode;
  key.want = want;
  key.dev = info.device;
  key.need = need_staged;
  if (!(key == last_key)) {
    bool ok = false;
    for (int32_t c = want; c >= 1 && !ok; c = c > 8 ? 8 : c / 2) {
      ClusterPlan p, ev;
      if (!PlanCluster<T, W>(a.n, a.e, a.d, a.mode, c, info.max_shared_optin, &p)) continue;
      if (!PlanEvent<T, W>(a.n, a.e, a.d, a.mode, c, info.max_shared_optin, &ev)) ev.cap = 0;
      if (need_staged && (static_cast<int64_t>(a.e) / c) * 5 / 4 + 256 > std::max(p.cap, ev.cap)) continue;
      if (ClusterLaunch<T, W>(nullptr, a.mode, a.d == 1, p, ev, nullptr) != hipSuccess) {
        (void)hipGetLastError();  // clear a launch-configuration error
        continue;
      }
      last_pull = p;
      last_event = ev;
      ok = true;
    }
    last_key = key;
    last_ok = ok;
  }
  *pull = last_pull;
  *event = last_event;
  event->force_pull = force_pull ? 1 : 0;
  return last_ok;
}
#endif  // !FUMJAX_USE_HIP

// One block of `threads` threads of the block-path kernel kKernel with p.bytes of dynamic shared memory. The
// limit is per function: raised (once per kernel, this template's instantiation) when a call needs more.
template <auto kKernel, typename T, typename W>
hipError_t LaunchOneBlock(int threads, const GpuArgs<T, W>& a, const BlockPlan& p, hipStream_t stream) {
  static size_t allowed = 48 * 1024;
  if (p.bytes > allowed) {
    const hipError_t err = hipFuncSetAttribute(reinterpret_cast<const void*>(kKernel),
                                               hipFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(p.bytes));
    if (err != hipSuccess) return err;
    allowed = p.bytes;
  }
  kKernel<<<1, threads, p.bytes, stream>>>(a, p);
  return hipGetLastError();
}

template <typename T, typename W, int R, int kThreads>
hipError_t LaunchBlockPlan(const GpuArgs<T, W>& a, const BlockPlan& p, hipStream_t stream) {
  return LaunchOneBlock<&RunStepsBlockKernel<T, W, R, kThreads>>(kThreads, a, p, stream);
}

// Neurons per thread R for kThreads threads: the smallest of 1, 2, 4, 8 with R x kThreads >= N (double: R <= 4,
// the register budget at 1024 threads); 0 when none.
template <typename T, int kThreads>
int BlockRT(int64_t n) {
  for (int r : {1, 2, 4, 8}) {
    if (sizeof(T) == 8 && kThreads == 1024 && r > 4) break;
    if (static_cast<int64_t>(r) * kThreads >= n) return r;
  }
  return 0;
}

template <typename T, typename W, int kThreads>
bool LaunchBlockR(const GpuArgs<T, W>& a, const BlockPlan& p, hipStream_t stream, hipError_t* err) {
  switch (BlockRT<T, kThreads>(a.n)) {
    case 1: *err = LaunchBlockPlan<T, W, 1, kThreads>(a, p, stream); return true;
    case 2: *err = LaunchBlockPlan<T, W, 2, kThreads>(a, p, stream); return true;
    case 4: *err = LaunchBlockPlan<T, W, 4, kThreads>(a, p, stream); return true;
    case 8: *err = LaunchBlockPlan<T, W, 8, kThreads>(a, p, stream); return true;
    default: return false;
  }
}

// Whether the block path takes an (N, E) network, any D: some thread count holds N (BlockRT at 1024 threads,
// the most) and the layout fits `max_shared` (bp: that layout). Launch and BlockPathFits (fused.py) both ask.
template <typename T>
bool BlockPathTakes(int64_t n, int64_t e, int64_t max_shared, BlockPlan* bp) {
  return BlockRT<T, 1024>(n) > 0 && PlanBlock<T>(n, e, max_shared, bp);
}

// 768 threads with R = 2 up to N = 1536: 24 warps, so that FUM-1k's ~2 x 9 spike tasks of a step rarely queue
// two deep on a warp (at 512 threads two warps ran two tasks each step and the rest waited for them at the
// barrier), with the neuron pass still on 16 warps; the launch bound of 768 leaves 80 registers a thread, which
// the kernel fits in float without spilling (1024 threads leave 64 and spill). Then 512 threads (R = 4, 8:
// N <= 4096) and 1024 (N <= 8192; double: 4096). Measured on FUM-1k (bench/GPU_RUN_STEPS.md).
template <typename T, typename W>
bool LaunchBlockThreads(const GpuArgs<T, W>& a, const BlockPlan& p, hipStream_t stream, hipError_t* err) {
  if constexpr (sizeof(T) == 4) {  // double would spill at 80 registers
    if (a.n <= 2 * 768) {
      *err = LaunchBlockPlan<T, W, 2, 768>(a, p, stream);
      return true;
    }
  }
  if (BlockRT<T, 512>(a.n) > 0) return LaunchBlockR<T, W, 512>(a, p, stream, err);
  return LaunchBlockR<T, W, 1024>(a, p, stream, err);
}

#if !defined(FUMJAX_USE_HIP)
// rstdp in float with N <= 1024 (the dynamics warps' 512 threads own 2 neurons each) and kBlockStages stages in
// shared memory: the split kernel, 512 + 512 threads. Measured on FUM-1k (bench/GPU_RUN_STEPS.md): 4,268 cycles
// per step against RunStepsBlockKernel's 4,707. The halves are near balance: the plasticity warps are busy 98% of
// the time and the dynamics warps wait for them 16% of theirs, but moving warps to the plasticity side slows
// the dynamics side more (384 + 640 at R = 3: 4,540; 256 + 768 at R = 4: 5,358).
// traces_in_dyn (gpu_split_traces = 1, the default): the kXyDyn kernel where its stage copies of x and y fit too.
template <typename T, typename W>
bool LaunchBlockSplitIf(const GpuArgs<T, W>& a, int64_t max_shared, hipStream_t stream, hipError_t* err,
                        bool traces_in_dyn) {
  if constexpr (sizeof(T) != 4) {
    return false;
  } else {
    BlockPlan sp;
    if (a.mode != 2 || a.n > 1024) return false;
    if (traces_in_dyn && PlanBlock<T>(a.n, a.e, max_shared, &sp, kBlockStages, kBlockStages)) {
      *err = LaunchOneBlock<&RunStepsBlockSplitKernel<T, W, 2, 512, 512, true>>(1024, a, sp, stream);
      return true;
    }
    if (!PlanBlock<T>(a.n, a.e, max_shared, &sp, kBlockStages)) return false;
    *err = LaunchOneBlock<&RunStepsBlockSplitKernel<T, W, 2, 512, 512, false>>(1024, a, sp, stream);
    return true;
  }
}
#endif

// GPU path (attribute gpu_path, fixed when the program is traced: fused.py reads FUMJAX_GPU_RUN_PATH then, so
// a compiled program, or a CUDA graph captured from it, always launches the same kernels).
enum GpuPath : int32_t { kPathAuto = 0, kPathBlock = 1, kPathMulti = 2, kPathCluster = 3 };

// Blocks of kMultiThreads of `kernel` resident per SM (the occupancy calculator; cached per device in
// `cache`, a host query with no stream work).
int64_t ResidentBlocksPerSm(const void* kernel, int* cache) {
  int dev = 0;
  if (hipGetDevice(&dev) != hipSuccess || dev < 0 || dev >= 64) return 8;
  if (cache[dev] <= 0) {
    int nb = 0;
    const hipError_t err = hipOccupancyMaxActiveBlocksPerMultiprocessor(&nb, kernel, kMultiThreads, 0);
    cache[dev] = err == hipSuccess && nb > 0 ? nb : 8;
  }
  return cache[dev];
}
template <typename T, typename W>
int64_t SynBlocksPerSm() {
  static int cache[64] = {};
  return ResidentBlocksPerSm(reinterpret_cast<const void*>(&SynapseKernel<T, W>), cache);
}
// Flush grid: the resident blocks (4 per SM: launch bounds hold it at 64 registers; a second wave would idle the
// first's SMs at the end), a row per warp at a time.
template <typename T, typename W, bool kReward>
unsigned FlushGrid(const DeviceInfo& info) {
  static int cache[64] = {};
  const int64_t sm = info.sm_count > 0 ? info.sm_count : 1;
  const int64_t per_sm = ResidentBlocksPerSm(reinterpret_cast<const void*>(&FlushKernel<T, W, kReward>), cache);
  return static_cast<unsigned>(std::min<int64_t>(sm * per_sm, 65535));
}

template <typename T, typename W>
hipError_t Launch(const GpuArgs<T, W>& a, hipStream_t stream, int32_t path, int32_t cluster, bool cluster_pull,
                  bool defer, bool split_traces) {
  const DeviceInfo info = GetDeviceInfo();
  // defer_final_flush: the deferred flag says whether the multi path left the last segment's LTP pending.
  MultiScratch<T> m(a.work, a.n, MultiSegRows(a.mode, a.k_max));
  if (defer) {
    const hipError_t err = hipMemsetAsync(m.deferred, 0, sizeof(int32_t), stream);
    if (err != hipSuccess) return err;
  }
#if !defined(FUMJAX_USE_HIP)
  // Cluster path: opt-in (gpu_path = cluster) until tests/test_fused_gpu.py has passed on a GPU with the
  // event body (bench/GPU_RUN_STEPS.md); then the default wherever ChooseCluster(need_staged) accepts.
  if (path == kPathCluster) {
    ClusterPlan pull, event;
    if (ChooseCluster<T, W>(a, info, /*need_staged=*/false, cluster, cluster_pull, &pull, &event)) {
      return ClusterLaunch<T, W>(&a, a.mode, a.d == 1, pull, event, stream);
    }
  }
#else
  (void)cluster;
  (void)cluster_pull;
  (void)split_traces;
#endif
  if (path != kPathMulti) {
    BlockPlan bp;
    hipError_t err = hipSuccess;
#if !defined(FUMJAX_USE_HIP)
    if (BlockPathTakes<T>(a.n, a.e, info.max_shared_optin, &bp) &&
        LaunchBlockSplitIf<T, W>(a, info.max_shared_optin, stream, &err, split_traces)) {
      return err;
    }
#endif
    if (BlockPathTakes<T>(a.n, a.e, info.max_shared_optin, &bp) &&
        LaunchBlockThreads<T, W>(a, bp, stream, &err)) {
      return err;
    }
  }
  const int64_t sm = info.sm_count > 0 ? info.sm_count : 1;
  const int64_t grid_n = (static_cast<int64_t>(a.n) + kMultiThreads - 1) / kMultiThreads;
  const unsigned grid_neuron = static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(grid_n, 65535)));
  const unsigned grid_flush = FlushGrid<T, W, false>(info);  // returns at once when not due
  // Synapse kernel: a full GPU of resident warps looping over the step's tasks -- as many blocks as are
  // resident at once (registers bound it: 4 of 256 threads per SM at 64 registers), so that no block waits
  // for a second wave with its share of the tasks (8 per SM was 4% slower at 4M x 500).
  const unsigned grid_syn = static_cast<unsigned>(std::max<int64_t>(1, sm * SynBlocksPerSm<T, W>()));
  const int64_t avg_k = a.n > 0 ? (a.e + a.n - 1) / a.n : 1;
  const int32_t parts = static_cast<int32_t>(
      std::min<int64_t>(16, std::max<int64_t>(1, (avg_k + kMultiU * FUMJAX_WARP - 1) / (kMultiU * FUMJAX_WARP))));
  hipError_t err = hipMemsetAsync(m.count, 0, 2 * sizeof(int32_t), stream);
  if (err == hipSuccess && defer) err = hipMemsetAsync(m.deferred, 1, sizeof(int32_t), stream);
  if (err != hipSuccess) return err;
  for (int32_t t = 0; t < a.t_steps; ++t) {
    // Whether a flush or renormalization is due depends on the device's step and elig_t0: the kernel decides.
    if (a.mode == 2 || (a.mode == 1 && t > 0)) {
      FlushKernel<T, W, false><<<grid_flush, kMultiThreads, 0, stream>>>(a, t, nullptr);
    }
    NeuronKernel<T, W><<<grid_neuron, kMultiThreads, 0, stream>>>(a, t);
    SynapseKernel<T, W><<<grid_syn, kMultiThreads, 0, stream>>>(a, t, parts);
  }
  if (a.mode != 0 && a.t_steps > 0 && !defer) {
    FlushKernel<T, W, false><<<grid_flush, kMultiThreads, 0, stream>>>(a, a.t_steps, nullptr);
  }
  FinalizeKernel<T, W><<<1, 1, 0, stream>>>(a);
  return hipGetLastError();
}

bool Dims(const ffi::AnyBuffer& b, std::initializer_list<int64_t> want) {
  auto dims = b.dimensions();
  if (dims.size() != want.size()) return false;
  size_t k = 0;
  for (int64_t w : want) {
    if (dims[k++] != w) return false;
  }
  return true;
}

// Result `out` starts as a copy of operand `in` (nothing to do when XLA aliased them).
template <typename U>
U* InPlace(const ffi::AnyBuffer& in, ffi::Result<ffi::AnyBuffer>& out, hipStream_t stream, hipError_t* err) {
  U* dst = static_cast<U*>(out->untyped_data());
  const U* src = static_cast<const U*>(in.untyped_data());
  if (dst != src && in.size_bytes() > 0 && *err == hipSuccess) {
    *err = hipMemcpyAsync(dst, src, in.size_bytes(), hipMemcpyDeviceToDevice, stream);
  }
  return dst;
}

// Fills a from the buffers and launches (T the state's float type, W the synapse storage type).
template <typename T, typename W>
hipError_t RunTyped(hipStream_t stream, const ffi::AnyBuffer* ops, ffi::Result<ffi::AnyBuffer>* res, void* work,
                    const double* sc, int32_t refractory_steps, int32_t mode, int32_t pre_shift, int32_t path,
                    int32_t cluster, bool cluster_pull, bool defer, bool split_traces) {
  enum { kV, kRefrac, kX, kY, kRing, kW, kElig, kT0, kWin, kStep, kTau, kVth, kIext, kRowPtr, kBucket, kPost,
         kDelay, kInPtr, kInSyn, kExc, kGamma, kInv };
  hipError_t err = hipSuccess;
  GpuArgs<T, W> a;
  a.n = static_cast<int32_t>(ops[kV].dimensions()[0]);
  a.e = static_cast<int64_t>(ops[kW].dimensions()[0]);
  a.d = static_cast<int32_t>(ops[kRing].dimensions()[0]);
  a.t_steps = static_cast<int32_t>(ops[kIext].dimensions()[0]);
  a.k_max = static_cast<int32_t>(ops[kGamma].element_count()) - 1;
  a.mode = mode;
  a.refractory_steps = refractory_steps;
  a.pre_shift = pre_shift;
  T* scal[] = {&a.v_rest, &a.v_reset, &a.dt, &a.g_syn, &a.a_plus, &a.a_minus, &a.w_clip, &a.decay_x, &a.decay_y};
  for (int q = 0; q < 9; ++q) *scal[q] = static_cast<T>(sc[q]);
  a.v = InPlace<T>(ops[kV], res[kV], stream, &err);
  a.refrac = InPlace<int32_t>(ops[kRefrac], res[kRefrac], stream, &err);
  a.x = InPlace<T>(ops[kX], res[kX], stream, &err);
  a.y = InPlace<T>(ops[kY], res[kY], stream, &err);
  a.ring = InPlace<T>(ops[kRing], res[kRing], stream, &err);
  a.w = InPlace<W>(ops[kW], res[kW], stream, &err);
  a.elig = InPlace<W>(ops[kElig], res[kElig], stream, &err);
  a.elig_t0 = InPlace<int32_t>(ops[kT0], res[kT0], stream, &err);
  a.window_spikes = InPlace<int32_t>(ops[kWin], res[kWin], stream, &err);
  a.step = InPlace<int32_t>(ops[kStep], res[kStep], stream, &err);
  a.spikes = res[10]->template typed_data<uint8_t>();
  a.work = static_cast<T*>(work);
  a.tau = ops[kTau].template typed_data<T>();
  a.v_th = ops[kVth].template typed_data<T>();
  a.i_ext = ops[kIext].template typed_data<T>();
  a.row_ptr = ops[kRowPtr].template typed_data<uint32_t>();
  a.pre_bucket = ops[kBucket].template typed_data<int32_t>();
  a.post = ops[kPost].template typed_data<int32_t>();
  a.delay = a.d > 1 ? ops[kDelay].template typed_data<int32_t>() : nullptr;
  a.in_ptr = ops[kInPtr].template typed_data<uint32_t>();
  a.in_syn = ops[kInSyn].template typed_data<uint32_t>();
  a.excitatory = ops[kExc].template typed_data<uint8_t>();
  a.gamma_pow = static_cast<const W*>(ops[kGamma].untyped_data());
  a.inv_pow = ops[kInv].template typed_data<T>();
  if (err != hipSuccess) return err;
  return Launch<T, W>(a, stream, path, cluster, cluster_pull, defer, split_traces);
}

ffi::Error RunStepsGpuDispatch(
    hipStream_t stream, ffi::AnyBuffer v, ffi::AnyBuffer refrac, ffi::AnyBuffer x, ffi::AnyBuffer y,
    ffi::AnyBuffer ring, ffi::AnyBuffer w, ffi::AnyBuffer elig, ffi::AnyBuffer elig_t0,
    ffi::AnyBuffer window_spikes, ffi::AnyBuffer step, ffi::AnyBuffer tau, ffi::AnyBuffer v_th,
    ffi::AnyBuffer i_ext, ffi::AnyBuffer row_ptr, ffi::AnyBuffer pre_bucket, ffi::AnyBuffer post,
    ffi::AnyBuffer delay, ffi::AnyBuffer in_ptr, ffi::AnyBuffer in_syn, ffi::AnyBuffer excitatory,
    ffi::AnyBuffer gamma_pow, ffi::AnyBuffer inv_pow, double v_rest, double v_reset, double dt, double g_syn,
    double a_plus, double a_minus, double w_clip, double decay_x, double decay_y, int32_t refractory_steps,
    int32_t mode, int32_t pre_shift, int32_t gpu_path, int32_t gpu_cluster, int32_t gpu_cluster_body,
    int32_t gpu_split_traces, int32_t defer_final_flush,
    ffi::Result<ffi::AnyBuffer> v_out, ffi::Result<ffi::AnyBuffer> refrac_out, ffi::Result<ffi::AnyBuffer> x_out,
    ffi::Result<ffi::AnyBuffer> y_out, ffi::Result<ffi::AnyBuffer> ring_out, ffi::Result<ffi::AnyBuffer> w_out,
    ffi::Result<ffi::AnyBuffer> elig_out, ffi::Result<ffi::AnyBuffer> elig_t0_out,
    ffi::Result<ffi::AnyBuffer> window_spikes_out, ffi::Result<ffi::AnyBuffer> step_out,
    ffi::Result<ffi::AnyBuffer> spikes, ffi::Result<ffi::AnyBuffer> work) {
  const ffi::DataType dt_f = v.element_type();
  if (dt_f != ffi::DataType::F32 && dt_f != ffi::DataType::F64) {
    return ffi::Error::InvalidArgument("fumjax_run_steps: v_mV must be float32 or float64");
  }
  if (v.dimensions().size() != 1 || ring.dimensions().size() != 2 || i_ext.dimensions().size() != 2 ||
      w.dimensions().size() != 1) {
    return ffi::Error::InvalidArgument("fumjax_run_steps: expected v (N,), ring (D, N), i_ext (T, N) and w (E,)");
  }
  const int64_t n = v.dimensions()[0];
  const int64_t e = w.dimensions()[0];
  const int64_t d = ring.dimensions()[0];
  const int64_t t = i_ext.dimensions()[0];
  const int64_t k1 = static_cast<int64_t>(gamma_pow.element_count());
  if (d < 1 || d > INT32_MAX || n >= INT32_MAX || e > static_cast<int64_t>(UINT32_MAX) || t >= INT32_MAX ||
      k1 < 1) {
    return ffi::Error::InvalidArgument(
        "fumjax_run_steps: need D >= 1, N and T below 2^31, E below 2^32 (uint32 synapse indices) and a "
        "non-empty eligibility table");
  }
  if (mode < 0 || mode > 2) {
    return ffi::Error::InvalidArgument("fumjax_run_steps: mode must be 0 (off), 1 (stdp) or 2 (rstdp)");
  }
  if (pre_shift < 0 || pre_shift > 31) {
    return ffi::Error::InvalidArgument("fumjax_run_steps: pre_shift must be in [0, 31]");
  }
  const int64_t n_buckets = e > 0 ? ((e - 1) >> pre_shift) + 1 : 0;
  const int64_t n_delay = delay.element_count() == 0 && d == 1 ? 0 : e;  // (0,): every delay is 1
  const ffi::AnyBuffer* float_bufs[] = {&v, &x, &y, &ring, &tau, &v_th, &i_ext, &inv_pow};
  for (const ffi::AnyBuffer* b : float_bufs) {
    if (b->element_type() != dt_f) {
      return ffi::Error::InvalidArgument(
          "fumjax_run_steps: v, x, y, ring, tau, v_th, i_ext and inv_pow must share one float dtype "
          "(float32 or float64)");
    }
  }
  // Synapse storage: the state's dtype, or float16/bfloat16 with float32 state.
  const ffi::DataType dt_w = w.element_type();
  const bool w_ok = dt_w == dt_f || (dt_f == ffi::DataType::F32 &&
                                      (dt_w == ffi::DataType::F16 || dt_w == ffi::DataType::BF16));
  if (!w_ok || elig.element_type() != dt_w || gamma_pow.element_type() != dt_w) {
    return ffi::Error::InvalidArgument(
        "fumjax_run_steps: w, elig and gamma_pow must share one dtype: the state's, or float16/bfloat16 "
        "with float32 state");
  }
  const ffi::AnyBuffer* int_bufs[] = {&refrac, &elig_t0, &window_spikes, &step, &pre_bucket, &post, &delay};
  for (const ffi::AnyBuffer* b : int_bufs) {
    if (b->element_type() != ffi::DataType::S32) {
      return ffi::Error::InvalidArgument(
          "fumjax_run_steps: refrac_left, elig_t0, window_spikes, step, pre_bucket, post and delay must be "
          "int32");
    }
  }
  for (const ffi::AnyBuffer* b : {&row_ptr, &in_ptr, &in_syn}) {
    if (b->element_type() != ffi::DataType::U32) {
      return ffi::Error::InvalidArgument("fumjax_run_steps: row_ptr, in_ptr and in_syn must be uint32");
    }
  }
  if (excitatory.element_type() != ffi::DataType::U8 || spikes->element_type() != ffi::DataType::U8) {
    return ffi::Error::InvalidArgument("fumjax_run_steps: excitatory and the spikes output must be uint8");
  }
  const bool shapes_ok =
      Dims(v, {n}) && Dims(refrac, {n}) && Dims(x, {n}) && Dims(y, {n}) && Dims(ring, {d, n}) && Dims(w, {e}) &&
      Dims(elig, {e}) && Dims(elig_t0, {}) && Dims(window_spikes, {n}) && Dims(step, {}) && Dims(tau, {n}) &&
      Dims(v_th, {n}) && Dims(i_ext, {t, n}) && Dims(row_ptr, {n + 1}) && Dims(pre_bucket, {n_buckets}) &&
      Dims(post, {e}) && Dims(delay, {n_delay}) && Dims(in_ptr, {n + 1}) && Dims(in_syn, {e}) &&
      Dims(excitatory, {n}) && Dims(gamma_pow, {k1}) && Dims(inv_pow, {k1}) && Dims(*spikes, {t, n}) &&
      work->element_type() == dt_f &&
      Dims(*work, {(dt_f == ffi::DataType::F64 ? 2 : 4) + MultiSegRows(mode, static_cast<int32_t>(k1 - 1)) + 3, n + 2});
  if (!shapes_ok) {
    return ffi::Error::InvalidArgument(
        "fumjax_run_steps: shapes must be v, refrac, x, y, window_spikes, tau, v_th, excitatory (N,); ring (D, N); "
        "w, elig, post, in_syn (E,); delay (E,) or (0,) with D = 1; pre_bucket ((E-1 >> pre_shift) + 1,); "
        "row_ptr, in_ptr (N+1,); elig_t0, step (); i_ext and spikes (T, N); gamma_pow, inv_pow (K+1,); "
        "work (16 / itemsize + L + 3, N + 2) in the state's dtype (L = min(max(K, 1), 64), 0 in mode off)");
  }
  const ffi::AnyBuffer ops[] = {v,    refrac,     x,    y,     ring,   w,      elig,   elig_t0,
                                window_spikes, step, tau, v_th, i_ext, row_ptr, pre_bucket, post,
                                delay, in_ptr, in_syn, excitatory, gamma_pow, inv_pow};
  ffi::Result<ffi::AnyBuffer> res[] = {v_out,    refrac_out, x_out,       y_out,           ring_out, w_out,
                                       elig_out, elig_t0_out, window_spikes_out, step_out, spikes};
  const double sc[] = {v_rest, v_reset, dt, g_syn, a_plus, a_minus, w_clip, decay_x, decay_y};
  void* wk = work->untyped_data();
  const bool pull = gpu_cluster_body == 1;
  const bool split_traces = gpu_split_traces == 1;
  if (defer_final_flush != 0 && mode != 2) {
    return ffi::Error::InvalidArgument("fumjax_run_steps: defer_final_flush needs mode 2 (rstdp)");
  }
  const bool defer = defer_final_flush != 0;
  hipError_t err;
  if (dt_f == ffi::DataType::F64) {
    err = RunTyped<double, double>(stream, ops, res, wk, sc, refractory_steps, mode, pre_shift, gpu_path,
                                   gpu_cluster, pull, defer, split_traces);
  } else if (dt_w == ffi::DataType::F32) {
    err = RunTyped<float, float>(stream, ops, res, wk, sc, refractory_steps, mode, pre_shift, gpu_path,
                                 gpu_cluster, pull, defer, split_traces);
  } else if (dt_w == ffi::DataType::F16) {
    err = RunTyped<float, Half>(stream, ops, res, wk, sc, refractory_steps, mode, pre_shift, gpu_path,
                                gpu_cluster, pull, defer, split_traces);
  } else {
    err = RunTyped<float, BFloat16>(stream, ops, res, wk, sc, refractory_steps, mode, pre_shift, gpu_path,
                                    gpu_cluster, pull, defer, split_traces);
  }
  if (err != hipSuccess) {
    return ffi::Error::Internal(std::string("fumjax_run_steps (GPU): launch failed: ") + hipGetErrorString(err));
  }
  return ffi::Error::Success();
}

// fumjax_window_reward: the end of an rstdp window after a run_steps call with defer_final_flush (the call's
// pending LTP, the eligibility unscaled, w += coef * e, clipped) in one pass over E (FlushKernel<kReward>).
template <typename T, typename W>
hipError_t WindowRewardTyped(hipStream_t stream, const ffi::AnyBuffer* ops, ffi::Result<ffi::AnyBuffer>* res,
                             double w_clip, int32_t t_steps) {
  enum { kW, kElig, kStep0, kT00, kRowPtr, kPost, kExc, kGamma, kInv, kWork, kCoef };
  hipError_t err = hipSuccess;
  GpuArgs<T, W> a{};
  a.n = static_cast<int32_t>(ops[kExc].dimensions()[0]);
  a.e = static_cast<int64_t>(ops[kW].dimensions()[0]);
  a.t_steps = t_steps;
  a.k_max = static_cast<int32_t>(ops[kGamma].element_count()) - 1;
  a.mode = 2;
  a.w_clip = static_cast<T>(w_clip);
  a.w = InPlace<W>(ops[kW], res[0], stream, &err);
  a.elig = InPlace<W>(ops[kElig], res[1], stream, &err);
  // Read only by the kernel: the step and origin the run_steps call started from.
  a.step = const_cast<int32_t*>(ops[kStep0].template typed_data<int32_t>());
  a.elig_t0 = const_cast<int32_t*>(ops[kT00].template typed_data<int32_t>());
  a.work = const_cast<T*>(ops[kWork].template typed_data<T>());
  a.row_ptr = ops[kRowPtr].template typed_data<uint32_t>();
  a.post = ops[kPost].template typed_data<int32_t>();
  a.excitatory = ops[kExc].template typed_data<uint8_t>();
  a.gamma_pow = static_cast<const W*>(ops[kGamma].untyped_data());
  a.inv_pow = ops[kInv].template typed_data<T>();
  if (err != hipSuccess) return err;
  const T* coef = ops[kCoef].template typed_data<T>();
  FlushKernel<T, W, true><<<FlushGrid<T, W, true>(GetDeviceInfo()), kMultiThreads, 0, stream>>>(a, t_steps, coef);
  return hipGetLastError();
}

// fumjax_window_end (GPU; cpp/window_end.cc on the CPU, same operands and arithmetic): a window's end in one
// launch. Mode rstdp: e = e_hat * gamma^(step - elig_t0) (storage dtype), w = clip(fma(coef, e, w)) for every
// synapse; every mode: the running rate with the window's spikes, intrinsic plasticity, window_spikes = 0. The
// FMAs are where XLA:CPU (the reference) contracts; bfloat16 feeds the unrounded product to w, as XLA:CPU
// does. elig_t0 and window_start are results of their own (not aliased): every thread reads the operands
// while thread 0 writes the new values.
struct WindowEndParams {
  double w_clip, dt_ms, rate_ema, rate_min_hz, rate_max_hz, v_th_step_mV, tau_step_ms, v_th_min_mV, v_th_max_mV,
      tau_min_ms, tau_max_ms;
  int32_t mode, intrinsic;
};

template <typename T, typename W>
__global__ void WindowEndKernel(W* __restrict__ w, W* __restrict__ elig, const int32_t* __restrict__ elig_t0,
                                T* __restrict__ tau, T* __restrict__ v_th, T* __restrict__ rate,
                                int32_t* __restrict__ window_spikes, const int32_t* __restrict__ window_start,
                                const int32_t* __restrict__ step, const W* __restrict__ gamma_pow,
                                const T* __restrict__ coef_p, int32_t* __restrict__ elig_t0_out,
                                int32_t* __restrict__ window_start_out, int64_t n, int64_t e, int32_t k_max,
                                WindowEndParams c) {
  const int32_t s = *step;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c.mode == 2) {
    const int32_t since = static_cast<int32_t>(static_cast<uint32_t>(s) - static_cast<uint32_t>(*elig_t0));
    const T g = Ld(gamma_pow[JnpIndex(since, k_max + 1)]);
    const T coef = *coef_p, hi = static_cast<T>(c.w_clip), lo = static_cast<T>(-c.w_clip);
    constexpr bool kExcess = std::is_same<W, BFloat16>::value;
    for (int64_t k = first; k < e; k += stride) {
      const T ek = Mul(Ld(elig[k]), g);
      const W ew = St<W>(ek);
      elig[k] = ew;
      const T nw = Fma(coef, kExcess ? ek : Ld(ew), Ld(w[k]));
      w[k] = St<W>(nw < lo ? lo : (nw > hi ? hi : nw));
    }
  }
  const int32_t n_steps = max(static_cast<int32_t>(static_cast<uint32_t>(s) - static_cast<uint32_t>(*window_start)), 1);
  const T per_spike = Div(T(1000), Mul(static_cast<T>(n_steps), static_cast<T>(c.dt_ms)));
  const T keep = static_cast<T>(1.0 - c.rate_ema), take = static_cast<T>(c.rate_ema);
  const T r_min = static_cast<T>(c.rate_min_hz), r_max = static_cast<T>(c.rate_max_hz);
  const T th_step = static_cast<T>(c.v_th_step_mV), tau_step = static_cast<T>(c.tau_step_ms);
  const T th_lo = static_cast<T>(c.v_th_min_mV), th_hi = static_cast<T>(c.v_th_max_mV);
  const T tau_lo = static_cast<T>(c.tau_min_ms), tau_hi = static_cast<T>(c.tau_max_ms);
  const T disabled = static_cast<T>(1.0e9);  // plasticity.DISABLED_V_TH_MV
  for (int64_t i = first; i < n; i += stride) {
    const T win = Mul(static_cast<T>(window_spikes[i]), per_spike);
    window_spikes[i] = 0;
    const T old = rate[i];
    const T r = old < T(0) ? win : Fma(keep, old, Mul(take, win));
    rate[i] = r;
    if (c.intrinsic == 0) continue;
    const T above = r > r_max ? T(1) : T(0), below = r < r_min ? T(1) : T(0);
    const T th = v_th[i];
    T th_new = Add(th, Mul(th_step, Sub(above, below)));
    th_new = th_new < th_lo ? th_lo : (th_new > th_hi ? th_hi : th_new);
    v_th[i] = th >= disabled ? th : th_new;
    T tn = Add(tau[i], Mul(tau_step, Sub(below, above)));
    tau[i] = tn < tau_lo ? tau_lo : (tn > tau_hi ? tau_hi : tn);
  }
  if (first == 0) {
    *elig_t0_out = s;
    *window_start_out = s;
  }
}

template <typename T, typename W>
hipError_t WindowEndTyped(hipStream_t stream, const ffi::AnyBuffer* ops, ffi::Result<ffi::AnyBuffer>* res,
                          const WindowEndParams& c) {
  enum { kW, kElig, kT0, kTau, kVth, kRate, kWin, kStart, kStep, kGamma, kCoef };
  hipError_t err = hipSuccess;
  const int64_t n = static_cast<int64_t>(ops[kTau].element_count());
  const int64_t e = static_cast<int64_t>(ops[kW].element_count());
  W* w = InPlace<W>(ops[kW], res[kW], stream, &err);
  W* elig = InPlace<W>(ops[kElig], res[kElig], stream, &err);
  T* tau = InPlace<T>(ops[kTau], res[kTau], stream, &err);
  T* v_th = InPlace<T>(ops[kVth], res[kVth], stream, &err);
  T* rate = InPlace<T>(ops[kRate], res[kRate], stream, &err);
  int32_t* ws = InPlace<int32_t>(ops[kWin], res[kWin], stream, &err);
  if (err != hipSuccess) return err;
  const int64_t work = std::max<int64_t>(c.mode == 2 ? e : 0, n);
  const int threads = 256;
  const int64_t cap = std::max<int64_t>(1, static_cast<int64_t>(GetDeviceInfo().sm_count) * 8);
  const int blocks = static_cast<int>(std::min<int64_t>(std::max<int64_t>(1, (work + threads - 1) / threads), cap));
  WindowEndKernel<T, W><<<blocks, threads, 0, stream>>>(
      w, elig, ops[kT0].template typed_data<int32_t>(), tau, v_th, rate, ws,
      ops[kStart].template typed_data<int32_t>(), ops[kStep].template typed_data<int32_t>(),
      static_cast<const W*>(ops[kGamma].untyped_data()), ops[kCoef].template typed_data<T>(),
      res[kT0]->template typed_data<int32_t>(), res[kStart]->template typed_data<int32_t>(), n, e,
      static_cast<int32_t>(ops[kGamma].element_count()) - 1, c);
  return hipGetLastError();
}

ffi::Error WindowEndGpuDispatch(hipStream_t stream, ffi::AnyBuffer w, ffi::AnyBuffer elig, ffi::AnyBuffer elig_t0,
                                ffi::AnyBuffer tau, ffi::AnyBuffer v_th, ffi::AnyBuffer rate,
                                ffi::AnyBuffer window_spikes, ffi::AnyBuffer window_start, ffi::AnyBuffer step,
                                ffi::AnyBuffer gamma_pow, ffi::AnyBuffer coef, double w_clip, double dt_ms,
                                double rate_ema, double rate_min_hz, double rate_max_hz, double v_th_step_mV,
                                double tau_step_ms, double v_th_min_mV, double v_th_max_mV, double tau_min_ms,
                                double tau_max_ms, int32_t mode, int32_t intrinsic, int32_t threads,
                                ffi::Result<ffi::AnyBuffer> w_out, ffi::Result<ffi::AnyBuffer> elig_out,
                                ffi::Result<ffi::AnyBuffer> elig_t0_out, ffi::Result<ffi::AnyBuffer> tau_out,
                                ffi::Result<ffi::AnyBuffer> v_th_out, ffi::Result<ffi::AnyBuffer> rate_out,
                                ffi::Result<ffi::AnyBuffer> window_spikes_out,
                                ffi::Result<ffi::AnyBuffer> window_start_out) {
  (void)threads;  // the CPU handler's
  const ffi::DataType dt_f = tau.element_type(), dt_w = w.element_type();
  const int64_t n = static_cast<int64_t>(tau.element_count());
  const int64_t e = static_cast<int64_t>(w.element_count());
  const bool types_ok =
      (dt_f == ffi::DataType::F32 || dt_f == ffi::DataType::F64) && v_th.element_type() == dt_f &&
      rate.element_type() == dt_f && coef.element_type() == dt_f && elig.element_type() == dt_w &&
      gamma_pow.element_type() == dt_w &&
      (dt_w == dt_f || (dt_f == ffi::DataType::F32 && (dt_w == ffi::DataType::F16 || dt_w == ffi::DataType::BF16))) &&
      elig_t0.element_type() == ffi::DataType::S32 && window_spikes.element_type() == ffi::DataType::S32 &&
      window_start.element_type() == ffi::DataType::S32 && step.element_type() == ffi::DataType::S32;
  if (!types_ok) {
    return ffi::Error::InvalidArgument(
        "fumjax_window_end: tau_ms, v_th_mV, rate_hz and coef in the state's float dtype; w, elig and gamma_pow in "
        "the synapse dtype (the state's, or float16/bfloat16 with float32 state); the counters int32");
  }
  const bool shapes_ok = Dims(tau, {n}) && Dims(v_th, {n}) && Dims(rate, {n}) && Dims(window_spikes, {n}) &&
                         Dims(w, {e}) && Dims(elig, {e}) && Dims(elig_t0, {}) && Dims(window_start, {}) &&
                         Dims(step, {}) && Dims(coef, {}) && gamma_pow.dimensions().size() == 1 &&
                         gamma_pow.element_count() >= 1;
  if (!shapes_ok) {
    return ffi::Error::InvalidArgument(
        "fumjax_window_end: shapes must be tau, v_th, rate_hz, window_spikes (N,); w, elig (E,); elig_t0, "
        "window_start, step, coef (); gamma_pow (K + 1,) with K >= 0");
  }
  const ffi::AnyBuffer ops[] = {w, elig, elig_t0, tau, v_th, rate, window_spikes, window_start, step, gamma_pow, coef};
  ffi::Result<ffi::AnyBuffer> res[] = {w_out, elig_out, elig_t0_out, tau_out, v_th_out, rate_out, window_spikes_out,
                                       window_start_out};
  const WindowEndParams c{w_clip,      dt_ms,       rate_ema,   rate_min_hz, rate_max_hz, v_th_step_mV,
                          tau_step_ms, v_th_min_mV, v_th_max_mV, tau_min_ms, tau_max_ms,  mode,
                          intrinsic};
  hipError_t err;
  if (dt_f == ffi::DataType::F64) {
    err = WindowEndTyped<double, double>(stream, ops, res, c);
  } else if (dt_w == ffi::DataType::F32) {
    err = WindowEndTyped<float, float>(stream, ops, res, c);
  } else if (dt_w == ffi::DataType::F16) {
    err = WindowEndTyped<float, Half>(stream, ops, res, c);
  } else {
    err = WindowEndTyped<float, BFloat16>(stream, ops, res, c);
  }
  if (err != hipSuccess) {
    return ffi::Error::Internal(std::string("fumjax_window_end (GPU): launch failed: ") + hipGetErrorString(err));
  }
  return ffi::Error::Success();
}

ffi::Error WindowRewardGpuDispatch(hipStream_t stream, ffi::AnyBuffer w, ffi::AnyBuffer elig, ffi::AnyBuffer step0,
                                   ffi::AnyBuffer elig_t00, ffi::AnyBuffer row_ptr, ffi::AnyBuffer post,
                                   ffi::AnyBuffer excitatory, ffi::AnyBuffer gamma_pow, ffi::AnyBuffer inv_pow,
                                   ffi::AnyBuffer work, ffi::AnyBuffer coef, double w_clip, int32_t t_steps,
                                   ffi::Result<ffi::AnyBuffer> w_out, ffi::Result<ffi::AnyBuffer> elig_out) {
  const ffi::DataType dt_f = coef.element_type();
  const ffi::DataType dt_w = w.element_type();
  const int64_t n = excitatory.dimensions().size() == 1 ? excitatory.dimensions()[0] : -1;
  const int64_t e = w.dimensions().size() == 1 ? w.dimensions()[0] : -1;
  const int64_t k1 = static_cast<int64_t>(gamma_pow.element_count());
  if (n < 0 || n >= INT32_MAX || e < 0 || e > static_cast<int64_t>(UINT32_MAX) || k1 < 1 || t_steps < 1) {
    return ffi::Error::InvalidArgument(
        "fumjax_window_reward: need excitatory (N,) with N below 2^31, w (E,) with E below 2^32, a non-empty "
        "eligibility table and t_steps >= 1");
  }
  const bool types_ok =
      (dt_f == ffi::DataType::F32 || dt_f == ffi::DataType::F64) && inv_pow.element_type() == dt_f &&
      work.element_type() == dt_f && elig.element_type() == dt_w && gamma_pow.element_type() == dt_w &&
      (dt_w == dt_f || (dt_f == ffi::DataType::F32 && (dt_w == ffi::DataType::F16 || dt_w == ffi::DataType::BF16))) &&
      step0.element_type() == ffi::DataType::S32 && elig_t00.element_type() == ffi::DataType::S32 &&
      post.element_type() == ffi::DataType::S32 && row_ptr.element_type() == ffi::DataType::U32 &&
      excitatory.element_type() == ffi::DataType::U8;
  if (!types_ok) {
    return ffi::Error::InvalidArgument(
        "fumjax_window_reward: coef, inv_pow and work in the state's float dtype; w, elig and gamma_pow in the "
        "synapse dtype (the state's, or float16/bfloat16 with float32 state); step, elig_t0, post int32; "
        "row_ptr uint32; excitatory uint8");
  }
  const bool shapes_ok = Dims(elig, {e}) && Dims(step0, {}) && Dims(elig_t00, {}) && Dims(row_ptr, {n + 1}) &&
                         Dims(post, {e}) && Dims(gamma_pow, {k1}) && Dims(inv_pow, {k1}) && Dims(coef, {}) &&
                         Dims(work, {(dt_f == ffi::DataType::F64 ? 2 : 4) +
                                         MultiSegRows(2, static_cast<int32_t>(k1 - 1)) + 3, n + 2});
  if (!shapes_ok) {
    return ffi::Error::InvalidArgument(
        "fumjax_window_reward: shapes must be w, elig, post (E,); row_ptr (N+1,); step, elig_t0, coef (); "
        "gamma_pow, inv_pow (K+1,); work as run_steps' scratch (16 / itemsize + L + 3, N + 2)");
  }
  const ffi::AnyBuffer ops[] = {w, elig, step0, elig_t00, row_ptr, post, excitatory, gamma_pow, inv_pow, work, coef};
  ffi::Result<ffi::AnyBuffer> res[] = {w_out, elig_out};
  hipError_t err;
  if (dt_f == ffi::DataType::F64) {
    err = WindowRewardTyped<double, double>(stream, ops, res, w_clip, t_steps);
  } else if (dt_w == ffi::DataType::F32) {
    err = WindowRewardTyped<float, float>(stream, ops, res, w_clip, t_steps);
  } else if (dt_w == ffi::DataType::F16) {
    err = WindowRewardTyped<float, Half>(stream, ops, res, w_clip, t_steps);
  } else {
    err = WindowRewardTyped<float, BFloat16>(stream, ops, res, w_clip, t_steps);
  }
  if (err != hipSuccess) {
    return ffi::Error::Internal(std::string("fumjax_window_reward (GPU): launch failed: ") + hipGetErrorString(err));
  }
  return ffi::Error::Success();
}

}  // namespace

// Whether run_steps (gpu_path auto or block) runs an (N, E) network, any D, on the current device as one
// persistent block, for a state float of `float_bytes` bytes (4: float32 state, whatever the synapse storage;
// 8: double). fused.py asks when it picks where an rstdp window ends: the block path leaves no LTP pending at the
// end of a call, so the window kernel would move the same bytes as XLA's window fusion and add its fixed cost.
bool BlockPathFits(int64_t n, int64_t e, int32_t float_bytes) {
  const int64_t max_shared = GetDeviceInfo().max_shared_optin;
  BlockPlan p;
  return float_bytes == 8 ? BlockPathTakes<double>(n, e, max_shared, &p)
                          : BlockPathTakes<float>(n, e, max_shared, &p);
}
}  // namespace fumjax

XLA_FFI_DEFINE_HANDLER_SYMBOL(FumjaxRunStepsGpu, fumjax::RunStepsGpuDispatch,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<hipStream_t>>()
                                  .Arg<ffi::AnyBuffer>()  // v_mV            (aliased to result 0)
                                  .Arg<ffi::AnyBuffer>()  // refrac_left     (1)
                                  .Arg<ffi::AnyBuffer>()  // x_pre           (2)
                                  .Arg<ffi::AnyBuffer>()  // y_post          (3)
                                  .Arg<ffi::AnyBuffer>()  // ring_mV         (4)
                                  .Arg<ffi::AnyBuffer>()  // w               (5)
                                  .Arg<ffi::AnyBuffer>()  // elig            (6)
                                  .Arg<ffi::AnyBuffer>()  // elig_t0         (7)
                                  .Arg<ffi::AnyBuffer>()  // window_spikes   (8)
                                  .Arg<ffi::AnyBuffer>()  // step            (9)
                                  .Arg<ffi::AnyBuffer>()  // tau_ms
                                  .Arg<ffi::AnyBuffer>()  // v_th_mV
                                  .Arg<ffi::AnyBuffer>()  // i_ext_mV (T, N)
                                  .Arg<ffi::AnyBuffer>()  // row_ptr (uint32)
                                  .Arg<ffi::AnyBuffer>()  // pre_bucket (int32)
                                  .Arg<ffi::AnyBuffer>()  // post
                                  .Arg<ffi::AnyBuffer>()  // delay_steps ((E,) or (0,))
                                  .Arg<ffi::AnyBuffer>()  // in_ptr (uint32)
                                  .Arg<ffi::AnyBuffer>()  // in_syn (uint32)
                                  .Arg<ffi::AnyBuffer>()  // excitatory (uint8)
                                  .Arg<ffi::AnyBuffer>()  // gamma_pow
                                  .Arg<ffi::AnyBuffer>()  // inv_pow
                                  .Attr<double>("v_rest_mV")
                                  .Attr<double>("v_reset_mV")
                                  .Attr<double>("dt_ms")
                                  .Attr<double>("g_syn_mV")
                                  .Attr<double>("a_plus")
                                  .Attr<double>("a_minus")
                                  .Attr<double>("w_clip")
                                  .Attr<double>("decay_x")
                                  .Attr<double>("decay_y")
                                  .Attr<int32_t>("refractory_steps")
                                  .Attr<int32_t>("mode")
                                  .Attr<int32_t>("pre_shift")
                                  .Attr<int32_t>("gpu_path")           // 0 auto, 1 block, 2 multi, 3 cluster
                                  .Attr<int32_t>("gpu_cluster")        // CTAs per cluster, 0 = default (8)
                                  .Attr<int32_t>("gpu_cluster_body")   // 0 auto, 1 pull
                                  .Attr<int32_t>("gpu_split_traces")   // 1: traces in the dynamics warps
                                  .Attr<int32_t>("defer_final_flush")  // 1: fumjax_window_reward ends the window
                                  .Ret<ffi::AnyBuffer>()   // v_mV
                                  .Ret<ffi::AnyBuffer>()   // refrac_left
                                  .Ret<ffi::AnyBuffer>()   // x_pre
                                  .Ret<ffi::AnyBuffer>()   // y_post
                                  .Ret<ffi::AnyBuffer>()   // ring_mV
                                  .Ret<ffi::AnyBuffer>()   // w
                                  .Ret<ffi::AnyBuffer>()   // elig
                                  .Ret<ffi::AnyBuffer>()   // elig_t0
                                  .Ret<ffi::AnyBuffer>()   // window_spikes
                                  .Ret<ffi::AnyBuffer>()   // step
                                  .Ret<ffi::AnyBuffer>()   // spikes (T, N)
                                  .Ret<ffi::AnyBuffer>(),  // work (16 / itemsize + L + 3, N + 2): multi scratch
                              {xla::ffi::Traits::kCmdBufferCompatible});

XLA_FFI_DEFINE_HANDLER_SYMBOL(FumjaxWindowRewardGpu, fumjax::WindowRewardGpuDispatch,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<hipStream_t>>()
                                  .Arg<ffi::AnyBuffer>()  // w               (aliased to result 0)
                                  .Arg<ffi::AnyBuffer>()  // elig            (1)
                                  .Arg<ffi::AnyBuffer>()  // step before the run_steps call
                                  .Arg<ffi::AnyBuffer>()  // elig_t0 before the run_steps call
                                  .Arg<ffi::AnyBuffer>()  // row_ptr (uint32)
                                  .Arg<ffi::AnyBuffer>()  // post
                                  .Arg<ffi::AnyBuffer>()  // excitatory (uint8)
                                  .Arg<ffi::AnyBuffer>()  // gamma_pow
                                  .Arg<ffi::AnyBuffer>()  // inv_pow
                                  .Arg<ffi::AnyBuffer>()  // work: run_steps' scratch
                                  .Arg<ffi::AnyBuffer>()  // coef = eta_eff(R) * R, state dtype ()
                                  .Attr<double>("w_clip")
                                  .Attr<int32_t>("t_steps")
                                  .Ret<ffi::AnyBuffer>()   // w
                                  .Ret<ffi::AnyBuffer>(),  // elig
                              {xla::ffi::Traits::kCmdBufferCompatible});

XLA_FFI_DEFINE_HANDLER_SYMBOL(FumjaxWindowEndGpu, fumjax::WindowEndGpuDispatch,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<hipStream_t>>()
                                  .Arg<ffi::AnyBuffer>()  // w             (aliased to result 0)
                                  .Arg<ffi::AnyBuffer>()  // elig          (1)
                                  .Arg<ffi::AnyBuffer>()  // elig_t0       (result 2, not aliased)
                                  .Arg<ffi::AnyBuffer>()  // tau_ms        (3)
                                  .Arg<ffi::AnyBuffer>()  // v_th_mV       (4)
                                  .Arg<ffi::AnyBuffer>()  // rate_hz       (5)
                                  .Arg<ffi::AnyBuffer>()  // window_spikes (6)
                                  .Arg<ffi::AnyBuffer>()  // window_start  (result 7, not aliased)
                                  .Arg<ffi::AnyBuffer>()  // step
                                  .Arg<ffi::AnyBuffer>()  // gamma_pow
                                  .Arg<ffi::AnyBuffer>()  // coef = eta_eff(R) * R
                                  .Attr<double>("w_clip")
                                  .Attr<double>("dt_ms")
                                  .Attr<double>("rate_ema")
                                  .Attr<double>("target_rate_min_hz")
                                  .Attr<double>("target_rate_max_hz")
                                  .Attr<double>("v_th_step_mV")
                                  .Attr<double>("tau_step_ms")
                                  .Attr<double>("v_th_min_mV")
                                  .Attr<double>("v_th_max_mV")
                                  .Attr<double>("tau_min_ms")
                                  .Attr<double>("tau_max_ms")
                                  .Attr<int32_t>("mode")
                                  .Attr<int32_t>("intrinsic")
                                  .Attr<int32_t>("threads")
                                  .Ret<ffi::AnyBuffer>()   // w
                                  .Ret<ffi::AnyBuffer>()   // elig
                                  .Ret<ffi::AnyBuffer>()   // elig_t0
                                  .Ret<ffi::AnyBuffer>()   // tau_ms
                                  .Ret<ffi::AnyBuffer>()   // v_th_mV
                                  .Ret<ffi::AnyBuffer>()   // rate_hz
                                  .Ret<ffi::AnyBuffer>()   // window_spikes
                                  .Ret<ffi::AnyBuffer>(),  // window_start
                              {xla::ffi::Traits::kCmdBufferCompatible});
