// The per-step floor of a whole-run SNN kernel on Hopper: cycles per iteration of the primitives a step is
// built from, and of step skeletons with FUM-1k's shape (1000 neurons, ~9 spikes and ~450 deliveries a
// step), with no model arithmetic unless a section says so. Standalone (CUDA, sm_90):
//   nvcc -O3 -std=c++17 -arch=sm_90 bench/gpu_step_floor.cu -o /tmp/gpu_step_floor && /tmp/gpu_step_floor
// Prints one line per probe: name, CTAs x threads, SM cycles per iteration (clock64 of CTA 0's thread 0 over
// `kIters` iterations after a warm-up; median of 5 launches). `/tmp/gpu_step_floor onchip` runs only the one-CTA
// on-chip skeletons (OnChipSkeleton, the one that does the model's per-neuron work). See bench/GPU_RUN_STEPS.md for
// the readings.
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <string>
#include <type_traits>
#include <vector>

namespace cg = cooperative_groups;

constexpr int kIters = 4000, kWarm = 200;
constexpr int kN = 1000;             // neurons
constexpr int kFan = 50;             // synapses per row
constexpr int kTable = kN * kFan;    // synapses (post int32 + w float: 400 KB, as FUM-1k's CSR)
constexpr int kR = 8;                // neurons per thread in the block skeletons, at most (128 threads)

#define CHECK(x)                                                                                  \
  do {                                                                                            \
    cudaError_t e_ = (x);                                                                         \
    if (e_ != cudaSuccess) {                                                                      \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_));     \
      std::exit(1);                                                                               \
    }                                                                                             \
  } while (0)

// ~9 of 1000 neurons spike a step (FUM-1k's ~9 Hz at dt = 1 ms): 1024 random 32-neuron spike words, each bit
// set with probability 1/111 (filled by the host).
__constant__ uint32_t kSpikeTable[1024];

// Each kernel copies the table into shared memory (its caller's next barrier publishes it) and reads step
// `it`'s word `word` (neurons 32 word .. 32 word + 31) from there.
__device__ __forceinline__ void LoadSpikeTable(uint32_t* table) {
  for (unsigned u = threadIdx.x; u < 1024; u += blockDim.x) table[u] = kSpikeTable[u];
}
__device__ __forceinline__ uint32_t SpikeWord(const uint32_t* table, int it, uint32_t word) {
  return table[(it * 7 + word * 13) & 1023];
}
__device__ __forceinline__ bool Spikes(const uint32_t* table, int it, int i) {
  return (SpikeWord(table, it, i / 32) >> (i % 32)) & 1u;
}

__device__ __forceinline__ uint32_t SmemAddr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ uint32_t Mapa(uint32_t addr, uint32_t rank) {
  uint32_t r;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(r) : "r"(addr), "r"(rank));
  return r;
}
__device__ __forceinline__ void ClusterBarrier(bool relaxed) {
  if (relaxed) {
    asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory");
  } else {
    asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory");
  }
  asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory");
}
__device__ __forceinline__ void MbarInit(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void MbarArriveExpect(uint32_t bar, uint32_t bytes) {
  asm volatile("{ .reg .b64 s; mbarrier.arrive.expect_tx.shared::cta.b64 s, [%0], %1; }" ::"r"(bar), "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void MbarWait(uint32_t bar, uint32_t parity) {
  uint32_t ok = 0;
  do {
    asm volatile(
        "{ .reg .pred p; mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
        : "=r"(ok)
        : "r"(bar), "r"(parity)
        : "memory");
  } while (!ok);
}
// A 4-byte store into a (possibly remote) CTA's shared memory that completes 4 bytes on its mbarrier.
__device__ __forceinline__ void StAsync(uint32_t remote_addr, uint32_t v, uint32_t remote_bar) {
  asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.u32 [%0], %1, [%2];" ::"r"(remote_addr), "r"(v),
               "r"(remote_bar)
               : "memory");
}

struct Out {
  long long cycles;
  uint32_t sink;
};

// ---- primitives -------------------------------------------------------------------------------------
__global__ void BarLoop(Out* out) {
  long long t0 = 0;
  for (int it = 0; it < kIters + kWarm; ++it) {
    if (it == kWarm) t0 = clock64();
    __syncthreads();
  }
  if (threadIdx.x == 0 && blockIdx.x == 0) out->cycles = clock64() - t0;
}

// One thread, dependent ld.global.cg over a 16 MB random cycle: the L2 hit latency.
__global__ void L2Chase(const uint32_t* next, Out* out) {
  uint32_t j = 0;
  long long t0 = 0;
  for (int it = 0; it < kIters + kWarm; ++it) {
    if (it == kWarm) t0 = clock64();
    j = __ldcg(next + j);
  }
  out->cycles = clock64() - t0;
  out->sink = j;
}

template <bool kRelaxed>
__global__ void ClusterSyncLoop(Out* out) {
  long long t0 = 0;
  for (int it = 0; it < kIters + kWarm; ++it) {
    if (it == kWarm) t0 = clock64();
    ClusterBarrier(kRelaxed);
  }
  if (threadIdx.x == 0 && blockIdx.x == 0) out->cycles = clock64() - t0;
}

// ---- step skeletons ---------------------------------------------------------------------------------
// Block path (one CTA, the input ring in global memory, as hip/run_steps.hip's block kernels): ring read
// (L2) -> threshold -> spike list -> barrier -> each spiking row's post/w (L2) -> RED into the ring -> barrier.
// Attribution variants: kDeliver = 0 leaves out the rows; kRedAside = 1 sends the REDs to a buffer no step
// reads (the next step's ring read no longer waits on them); kRedAside = 2 double-buffers the ring by step
// parity (a step reads and zeroes one buffer, its REDs go to the other), so no step reads an address it
// stored to itself in the step before.
template <int kDeliver, int kRedAside>
__global__ void BlockSkeleton(float* ring, const int32_t* post, const float* w, Out* out) {
  __shared__ int32_t list[kN];
  __shared__ int32_t count;
  __shared__ uint32_t table[1024];
  LoadSpikeTable(table);
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, nwarps = blockDim.x / 32;
  float v = 0.f;
  uint32_t sink = 0;
  if (tid == 0) count = 0;
  __syncthreads();
  long long t0 = 0;
  for (int it = 0; it < kIters + kWarm; ++it) {
    if (it == kWarm) t0 = clock64();
    float in[kR];  // the thread's ring loads, issued together
#pragma unroll
    for (int r = 0; r < kR; ++r) {
      const int i = tid + r * static_cast<int>(blockDim.x);
      in[r] = i < kN ? __ldcg(ring + (kRedAside == 2 ? (it & 1) * kN : 0) + i) : 0.f;
    }
#pragma unroll
    for (int r = 0; r < kR; ++r) {
      const int i = tid + r * static_cast<int>(blockDim.x);
      if (i >= kN) continue;
      __stcg(ring + (kRedAside == 2 ? (it & 1) * kN : 0) + i, 0.f);
      v = v * 0.9f + in[r];
      if (Spikes(table, it, i) || v > 1e30f) list[atomicAdd(&count, 1)] = i;
    }
    __syncthreads();
    const int ns = count;
    __syncthreads();
    if (tid == 0) count = 0;
    for (int u = warp; kDeliver && u < ns; u += nwarps) {
      const int j = list[u];
      for (int k = j * kFan + lane; k < (j + 1) * kFan; k += 32) {
        const int buf = kRedAside == 2 ? ((it + 1) & 1) : kRedAside;
        atomicAdd(ring + buf * kN + __ldg(post + k), __ldg(w + k));
      }
    }
    __syncthreads();
  }
  sink += static_cast<uint32_t>(v);
  if (tid == 0) {
    out->cycles = clock64() - t0;
    out->sink = sink;
  }
}

// Block path without float atomics (delay 1): a delivery sets the synapse's bit in a hit bitmap kept in
// in-list order (inpos: the synapse's in-list position, uint16 in shared memory; shared-memory atomicOr), then
// each post sums the weights of its set bits in ascending order from an in-list-ordered copy of w (L2), and
// keeps the sum in a register for the next step. One L2 load on the step's chain instead of a ring read and
// the REDs.
__global__ void BlockHitsSkeleton(const uint16_t* inpos, const int32_t* in_ptr, const float* w_in, Out* out) {
  extern __shared__ __align__(16) uint32_t hsm[];
  uint32_t* hits = hsm;                                                      // kTable / 32 + 1 words
  uint16_t* inpos_sh = reinterpret_cast<uint16_t*>(hsm + kTable / 32 + 1);   // kTable
  int32_t* in_ptr_sh = reinterpret_cast<int32_t*>(inpos_sh + kTable);         // kN + 1
  int32_t* list = in_ptr_sh + kN + 1;                                         // kN
  __shared__ int32_t count;
  __shared__ uint32_t table[1024];
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, nwarps = blockDim.x / 32;
  LoadSpikeTable(table);
  for (int u = tid; u < kTable; u += blockDim.x) inpos_sh[u] = inpos[u];
  for (int u = tid; u <= kN; u += blockDim.x) in_ptr_sh[u] = in_ptr[u];
  for (int u = tid; u < kTable / 32 + 1; u += blockDim.x) hits[u] = 0u;
  if (tid == 0) count = 0;
  __syncthreads();
  const int r_n = (kN + blockDim.x - 1) / blockDim.x;
  float v[kR], in[kR];
  for (int r = 0; r < kR; ++r) v[r] = in[r] = 0.f;
  long long t0 = 0;
  for (int it = 0; it < kIters + kWarm; ++it) {
    if (it == kWarm) t0 = clock64();
#pragma unroll
    for (int r = 0; r < kR; ++r) {
      const int i = tid + r * blockDim.x;
      if (r < r_n && i < kN) {
        v[r] = v[r] * 0.9f + in[r];
        if (Spikes(table, it, i) || v[r] > 1e30f) list[atomicAdd(&count, 1)] = i;
      }
    }
    __syncthreads();
    const int ns = count;
    __syncthreads();
    if (tid == 0) count = 0;
    for (int u = warp; u < ns; u += nwarps) {
      const int j = list[u];
      for (int k = j * kFan + lane; k < (j + 1) * kFan; k += 32) {
        const uint32_t q = inpos_sh[k];
        atomicOr(&hits[q >> 5], 1u << (q & 31));
      }
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < kR; ++r) {
      const int i = tid + r * blockDim.x;
      in[r] = 0.f;
      if (r < r_n && i < kN) {
        const int q0 = in_ptr_sh[i], q1 = in_ptr_sh[i + 1];
        for (int wd = q0 >> 5; wd <= (q1 - 1) >> 5; ++wd) {
          const uint32_t lo = wd == (q0 >> 5) ? ~0u << (q0 & 31) : ~0u;
          const uint32_t hi = wd == ((q1 - 1) >> 5) ? ~0u >> (31 - ((q1 - 1) & 31)) : ~0u;
          uint32_t b = hits[wd] & lo & hi;
          if (b) atomicAnd(&hits[wd], ~b);
          while (b) {
            in[r] += __ldg(w_in + wd * 32 + __ffs(b) - 1);
            b &= b - 1;
          }
        }
      }
    }
  }
  uint32_t sink = 0;
  for (int r = 0; r < kR; ++r) sink += static_cast<uint32_t>(v[r]);
  if (tid == 0) {
    out->cycles = clock64() - t0;
    out->sink = sink;
  }
}

// Cluster path (C CTAs, posts partitioned, everything in shared memory): each thread owns one post. The spike
// words reach every CTA by one of four exchanges (kX):
//   kRelease: remote stores + one cluster barrier (arrive.release / wait.acquire);
//   kMbar:    st.async completing on each CTA's mbarrier, double-buffered by step parity;
//   kTagged:  each word is stored with its step number as one 64-bit remote store (relaxed, single-copy
//             atomic), double-buffered by parity; readers poll the word until its tag is the step's;
//   kLocal:   one CTA, a CTA barrier (the skeleton's cost without any exchange).
// Then (kDeliver) each CTA marks its local deliveries of every spiking row (shared-memory integer atomics,
// kFan / C per row), a CTA barrier, and each post sums its marks.
enum Exchange { kRelease, kMbar, kTagged, kLocal };
template <int kX, bool kDeliver>
__global__ void ClusterSkeleton(Out* out) {
  extern __shared__ __align__(16) uint64_t sm64[];
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, nwarps = blockDim.x / 32;
  const uint32_t csize = cg::this_cluster().num_blocks(), rank = cg::this_cluster().block_rank();
  const int words = static_cast<int>(csize) * nwarps;  // spike words of the whole cluster
  uint64_t* tagged = sm64;                             // 2 x words (kTagged)
  uint32_t* flags = reinterpret_cast<uint32_t*>(sm64 + 2 * words);  // 2 x words
  int32_t* acc = reinterpret_cast<int32_t*>(flags + 2 * words);     // blockDim.x
  __shared__ __align__(8) uint64_t mbar[2];
  __shared__ uint32_t table[1024];
  LoadSpikeTable(table);
  const int n_local = blockDim.x;
  acc[tid] = 0;
  for (int u = tid; u < 2 * words; u += blockDim.x) tagged[u] = ~0ull;
  if (tid == 0) {
    MbarInit(SmemAddr(&mbar[0]), 1);
    MbarInit(SmemAddr(&mbar[1]), 1);
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  ClusterBarrier(false);
  const uint32_t gw = rank * nwarps + warp;  // this warp's spike word
  uint32_t phase = 0, sink = 0;
  float v = 0.f;
  long long t0 = 0;
  for (int it = 0; it < kIters + kWarm; ++it) {
    if (it == kWarm) t0 = clock64();
    const int par = it & 1;
    const int32_t in = acc[tid];
    acc[tid] = 0;
    v = v * 0.9f + static_cast<float>(in);
    const uint32_t bits = (gw * 32 < kN ? SpikeWord(table, it, gw) : 0u) | (v > 1e30f ? 1u : 0u);
    uint32_t* fl = flags + par * words;
    if constexpr (kX == kMbar) {
      if (lane < static_cast<int>(csize)) {
        StAsync(Mapa(SmemAddr(fl + gw), lane), bits, Mapa(SmemAddr(&mbar[par]), lane));
      }
      if (tid == 0) MbarArriveExpect(SmemAddr(&mbar[par]), 4u * words);
      MbarWait(SmemAddr(&mbar[par]), (phase >> par) & 1u);
      phase ^= 1u << par;
    } else if constexpr (kX == kRelease) {
      if (lane < static_cast<int>(csize)) {
        asm volatile("st.shared::cluster.u32 [%0], %1;" ::"r"(Mapa(SmemAddr(fl + gw), lane)), "r"(bits) : "memory");
      }
      ClusterBarrier(false);
    } else if constexpr (kX == kTagged) {
      if (lane < static_cast<int>(csize)) {
        const uint64_t val = (static_cast<uint64_t>(it) << 32) | bits;
        asm volatile("st.relaxed.cluster.shared::cluster.u64 [%0], %1;" ::"r"(
                         Mapa(SmemAddr(tagged + par * words + gw), lane)),
                     "l"(val)
                     : "memory");
      }
    } else {
      fl[gw] = bits;
      __syncthreads();
    }
    const int fan = (kFan + static_cast<int>(csize) - 1) / static_cast<int>(csize);
    for (int u = warp; u < words; u += nwarps) {
      uint32_t b;
      if constexpr (kX == kTagged) {
        uint64_t val;
        do {
          asm volatile("ld.relaxed.cluster.shared.u64 %0, [%1];"
                       : "=l"(val)
                       : "r"(SmemAddr(tagged + par * words + u))
                       : "memory");
        } while (static_cast<uint32_t>(val >> 32) != static_cast<uint32_t>(it));
        b = static_cast<uint32_t>(val);
      } else {
        b = fl[u];
      }
      if constexpr (kDeliver) {
        while (b) {
          const int j = u * 32 + __ffs(b) - 1;
          b &= b - 1;
          if (lane < fan) atomicAdd(&acc[(j * 37 + lane * 101) & (n_local - 1)], 1);
        }
      } else {
        sink += b;
      }
    }
    __syncthreads();
  }
  sink += static_cast<uint32_t>(v);
  if (tid == 0 && rank == 0) {
    out->cycles = clock64() - t0;
    out->sink = sink;
  }
  ClusterBarrier(false);  // no CTA exits while a peer may still write into its shared memory
}

// ---- one CTA, everything the dynamics touch on chip (16-bit weights) -------------------------------------
// The design the skeletons above leave open. FUM-1k's synapses fit one CTA's shared memory only at 16 bits:
// post (uint16) and w (bfloat16) of 50,000 synapses are 200 KB; with row_ptr, the ring and the spike list,
// ~212 KB of the 227 KB a CTA may have. Unlike the skeletons above this one does the model's per-neuron work:
// the LIF arithmetic, the traces, the next step's input row loaded from L2 a step ahead (cur), the raster
// stored to global memory, the window count; and its deliveries load post and w (shared memory) per synapse.
// Spikes still come from the table (thresholds are out of reach), ~9 a step. Each thread owns kRn neurons
// (tid + r * blockDim.x). The ring (kRing):
//   0: float atomicAdd into shared memory (sm_90 has no native shared float add: a CAS loop per lane);
//   1: float RED into a global ring (L2), read back by the next step with ld.cg and zeroed with st.cg;
//   2: integer atomicAdd (native) into a shared ring of 2^-20 mV fixed point: not the model's arithmetic,
//      only what the float CAS loop costs against it.
// kWindow: every 50 steps the window's end on the chip: the variance of the window rates over the neurons (a
// block reduction), the reward coefficient, then w = bf16(w + c e) for every synapse (e, bfloat16, read from
// global memory, 16-byte loads; w written to shared and global memory); its cost is spread over the window's
// steps.
// Not included: STDP and eligibility updates, which a split design runs on other warps (issue contention and
// their L2 traffic come on top). So the figure is a lower bound for such a kernel's step.
constexpr int kWin = 50;
template <int kRing, bool kWindow, int kRn>
__global__ void OnChipSkeleton(const float* iext, uint8_t* raster, float* ring_g, const __nv_bfloat16* elig,
                               __nv_bfloat16* w_g, Out* out) {
  extern __shared__ __align__(16) unsigned char osm[];
  uint16_t* post_sh = reinterpret_cast<uint16_t*>(osm);                       // kTable
  __nv_bfloat16* w_sh = reinterpret_cast<__nv_bfloat16*>(osm + 2 * kTable);   // kTable
  uint32_t* rp_sh = reinterpret_cast<uint32_t*>(osm + 4 * kTable);            // kN + 1 (+ 3 pad)
  float* ring_sh = reinterpret_cast<float*>(rp_sh + kN + 4);                  // kN (or int32 fixed point)
  int32_t* ring_i = reinterpret_cast<int32_t*>(ring_sh);
  int32_t* list = reinterpret_cast<int32_t*>(ring_sh + kN);                    // kN
  __shared__ int32_t count[2];
  __shared__ float red[2][32];
  __shared__ uint32_t table[1024];
  LoadSpikeTable(table);
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, nwarps = blockDim.x / 32;
  for (int k = tid; k < kTable; k += blockDim.x) {
    post_sh[k] = static_cast<uint16_t>((k * 2654435761u >> 7) % kN);
    w_sh[k] = w_g[k];
  }
  for (int j = tid; j <= kN; j += blockDim.x) rp_sh[j] = j * kFan;
  for (int i = tid; i < kN; i += blockDim.x) {
    ring_sh[i] = 0.f;
    if (kRing == 1) ring_g[i] = 0.f;
  }
  if (tid < 2) count[tid] = 0;
  const float v_rest = -70.f, v_reset = -70.f, dx = 0.951229f, dy = 0.951229f, g = 2.f;
  float v[kRn], ratio[kRn], vth[kRn], x[kRn], y[kRn], cur[kRn];
  int32_t ws[kRn];
#pragma unroll
  for (int r = 0; r < kRn; ++r) {
    const int i = tid + r * blockDim.x;
    v[r] = -65.f;
    ratio[r] = 0.05f + 1e-5f * (i % 7);
    vth[r] = 1e30f;
    x[r] = y[r] = 0.f;
    ws[r] = 0;
    cur[r] = i < kN ? __ldg(iext + i) : 0.f;
  }
  __syncthreads();
  long long t0 = 0;
  for (int it = 0; it < kIters + kWarm; ++it) {
    if (it == kWarm) t0 = clock64();
    const int par = it & 1;
    uint32_t bits = 0;
#pragma unroll
    for (int r = 0; r < kRn; ++r) {
      const int i = tid + r * blockDim.x;
      if (i >= kN) continue;
      float rin;
      if constexpr (kRing == 1) {
        rin = __ldcg(ring_g + i);
        __stcg(ring_g + i, 0.f);
      } else if constexpr (kRing == 2) {
        rin = static_cast<float>(ring_i[i]) * 9.5367431640625e-7f;
        ring_i[i] = 0;
      } else {
        rin = ring_sh[i];
        ring_sh[i] = 0.f;
      }
      const float in = __fadd_rn(rin, cur[r]);
      const float vn = __fadd_rn(__fmaf_rn(ratio[r], __fsub_rn(v_rest, v[r]), v[r]), in);
      const bool sp = vn >= vth[r] || Spikes(table, it, i);
      v[r] = sp ? v_reset : vn;
      raster[static_cast<size_t>(it) * kN + i] = static_cast<uint8_t>(sp);
      const float s = sp ? 1.f : 0.f;
      x[r] = __fmaf_rn(x[r], dx, s);
      y[r] = __fmaf_rn(y[r], dy, s);
      ws[r] += sp;
      bits |= static_cast<uint32_t>(sp) << r;
      cur[r] = __ldg(iext + ((it + 1) & 1023) * kN + i);  // the next step's input, a step ahead
    }
    unsigned m[kRn];
    int tot = 0;
#pragma unroll
    for (int r = 0; r < kRn; ++r) {
      m[r] = __ballot_sync(0xffffffffu, (bits >> r) & 1u);
      tot += __popc(m[r]);
    }
    if (tot) {
      int off = 0;
      if (lane == 0) off = atomicAdd(&count[par], tot);
      off = __shfl_sync(0xffffffffu, off, 0);
#pragma unroll
      for (int r = 0; r < kRn; ++r) {
        if ((bits >> r) & 1u) list[off + __popc(m[r] & ((1u << lane) - 1u))] = tid + r * blockDim.x;
        off += __popc(m[r]);
      }
    }
    __syncthreads();
    const int ns = count[par];
    if (tid == 0) count[par ^ 1] = 0;  // read last in the step before, whose readers all passed the barrier
    for (int u = warp; u < ns; u += nwarps) {
      const int j = list[u];
      const int k1 = rp_sh[j + 1];
      for (int k = rp_sh[j] + lane; k < k1; k += 32) {
        const int i = post_sh[k];
        const float val = __fmul_rn(g, __bfloat162float(w_sh[k]));
        if constexpr (kRing == 1) {
          atomicAdd(ring_g + i, val);
        } else if constexpr (kRing == 2) {
          atomicAdd(ring_i + i, __float2int_rn(val * 1048576.f));
        } else {
          atomicAdd(ring_sh + i, val);
        }
      }
    }
    __syncthreads();
    if (kWindow && it % kWin == kWin - 1) {
      float s1 = 0.f, s2 = 0.f;
#pragma unroll
      for (int r = 0; r < kRn; ++r) {
        const float rate = static_cast<float>(ws[r]) * (1000.f / kWin);
        if (tid + r * static_cast<int>(blockDim.x) < kN) s1 += rate, s2 += rate * rate;
        ws[r] = 0;
      }
      for (int o = 16; o > 0; o >>= 1) {
        s1 += __shfl_xor_sync(0xffffffffu, s1, o);
        s2 += __shfl_xor_sync(0xffffffffu, s2, o);
      }
      if (lane == 0) red[0][warp] = s1, red[1][warp] = s2;
      __syncthreads();
      float t1 = 0.f, t2 = 0.f;
      for (int q = 0; q < nwarps; ++q) t1 += red[0][q], t2 += red[1][q];
      const float var = t2 / kN - (t1 / kN) * (t1 / kN);
      const float reward = fminf(fmaxf(1.f - fabsf(var - 25.f) / 25.f, 0.f), 1.f);
      const float c = 0.02f / (1.f + __expf(-reward)) * reward;
      // 8 synapses per 16-byte load, two loads in flight per thread (kTable is a multiple of 8)
      const uint4* e4 = reinterpret_cast<const uint4*>(elig);
      uint4* w4_sh = reinterpret_cast<uint4*>(w_sh);
      uint4* w4_g = reinterpret_cast<uint4*>(w_g);
      for (int q = tid; q < kTable / 8; q += 2 * blockDim.x) {
        uint4 ev[2], wv[2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int qq = q + h * blockDim.x;
          if (qq < kTable / 8) ev[h] = __ldcg(e4 + qq), wv[h] = w4_sh[qq];
        }
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int qq = q + h * blockDim.x;
          if (qq >= kTable / 8) continue;
          __nv_bfloat16* eb = reinterpret_cast<__nv_bfloat16*>(&ev[h]);
          __nv_bfloat16* wb = reinterpret_cast<__nv_bfloat16*>(&wv[h]);
#pragma unroll
          for (int l = 0; l < 8; ++l) {
            wb[l] = __float2bfloat16_rn(__fmaf_rn(c, __bfloat162float(eb[l]), __bfloat162float(wb[l])));
          }
          w4_sh[qq] = wv[h];
          w4_g[qq] = wv[h];
        }
      }
      __syncthreads();
    }
  }
  float sink = 0.f;
#pragma unroll
  for (int r = 0; r < kRn; ++r) sink += v[r] + x[r] + y[r] + static_cast<float>(ws[r]);
  if (tid == 0) {
    out->cycles = clock64() - t0;
    out->sink = static_cast<uint32_t>(sink);
  }
}

// ---- host -------------------------------------------------------------------------------------------
template <typename F, typename... A>
double Median(int csize, int threads, size_t smem, F kernel, Out* d_out, A... args) {
  cudaLaunchConfig_t cfg = {};
  cudaLaunchAttribute attr[1];
  cfg.gridDim = dim3(csize);
  cfg.blockDim = dim3(threads);
  cfg.dynamicSmemBytes = smem;
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = csize;
  attr[0].val.clusterDim.y = attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  if (csize > 8) CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
  if (smem > 48 * 1024) CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  std::vector<double> per;
  for (int r = 0; r < 5; ++r) {
    CHECK(cudaLaunchKernelEx(&cfg, kernel, args..., d_out));
    CHECK(cudaDeviceSynchronize());
    Out h;
    CHECK(cudaMemcpy(&h, d_out, sizeof h, cudaMemcpyDeviceToHost));
    per.push_back(static_cast<double>(h.cycles) / kIters);
  }
  std::sort(per.begin(), per.end());
  return per[2];
}

int main(int argc, char** argv) {
  // "onchip": only the one-CTA on-chip skeletons (OnChipSkeleton)
  const bool only_onchip = argc > 1 && std::string(argv[1]) == "onchip";
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device %s, %d SMs; SM cycles per iteration, median of 5 launches of %d iterations\n", prop.name,
              prop.multiProcessorCount, kIters);
  Out* d_out;
  CHECK(cudaMalloc(&d_out, sizeof(Out)));
  {
    std::vector<uint32_t> table(1024, 0u);
    uint64_t s = 0x2545F4914F6CDD1Dull;
    for (auto& word : table) {
      for (int b = 0; b < 32; ++b) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        if (s % 111 == 0) word |= 1u << b;
      }
    }
    CHECK(cudaMemcpyToSymbol(kSpikeTable, table.data(), sizeof(uint32_t) * 1024));
  }
  auto line = [](const char* name, int c, int t, double cyc) {
    std::printf("%-44s %2d x %4d  %8.0f\n", name, c, t, cyc);
  };
  if (!only_onchip) {
    for (int t : {256, 512, 1024}) line("__syncthreads", 1, t, Median(1, t, 0, BarLoop, d_out));
    {
      const uint32_t n = 4u << 20;  // 16 MB of uint32
      std::vector<uint32_t> perm(n), next(n);
      for (uint32_t i = 0; i < n; ++i) perm[i] = i;
      uint64_t s = 88172645463325252ull;
      for (uint32_t i = n - 1; i > 0; --i) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        std::swap(perm[i], perm[s % (i + 1)]);
      }
      for (uint32_t i = 0; i < n; ++i) next[perm[i]] = perm[(i + 1) % n];
      uint32_t* d_next;
      CHECK(cudaMalloc(&d_next, n * 4));
      CHECK(cudaMemcpy(d_next, next.data(), n * 4, cudaMemcpyHostToDevice));
      line("L2 hit, dependent ld.cg", 1, 1, Median(1, 1, 0, L2Chase, d_out, static_cast<const uint32_t*>(d_next)));
      CHECK(cudaFree(d_next));
    }
    for (int c : {2, 8}) {
      for (int t : {128, 1024}) {
        line("cluster barrier, arrive.release", c, t, Median(c, t, 0, ClusterSyncLoop<false>, d_out));
        line("cluster barrier, arrive.relaxed", c, t, Median(c, t, 0, ClusterSyncLoop<true>, d_out));
      }
    }
    {
      std::vector<int32_t> post(kTable);
      std::vector<float> w(kTable, 1e-3f);
      for (int k = 0; k < kTable; ++k) post[k] = static_cast<int32_t>((k * 2654435761u >> 7) % kN);
      int32_t* d_post;
      float *d_w, *d_ring;
      CHECK(cudaMalloc(&d_post, kTable * 4));
      CHECK(cudaMalloc(&d_w, kTable * 4));
      CHECK(cudaMalloc(&d_ring, 2 * kN * 4));
      CHECK(cudaMemcpy(d_post, post.data(), kTable * 4, cudaMemcpyHostToDevice));
      CHECK(cudaMemcpy(d_w, w.data(), kTable * 4, cudaMemcpyHostToDevice));
      CHECK(cudaMemset(d_ring, 0, 2 * kN * 4));
      {
        std::vector<int32_t> in_ptr(kN + 1, 0);
        for (int k = 0; k < kTable; ++k) ++in_ptr[post[k] + 1];
        for (int i = 0; i < kN; ++i) in_ptr[i + 1] += in_ptr[i];
        std::vector<int32_t> fill(in_ptr.begin(), in_ptr.end() - 1);
        std::vector<uint16_t> inpos(kTable);
        for (int k = 0; k < kTable; ++k) inpos[k] = static_cast<uint16_t>(fill[post[k]]++);
        uint16_t* d_inpos;
        int32_t* d_in_ptr;
        CHECK(cudaMalloc(&d_inpos, kTable * 2));
        CHECK(cudaMalloc(&d_in_ptr, (kN + 1) * 4));
        CHECK(cudaMemcpy(d_inpos, inpos.data(), kTable * 2, cudaMemcpyHostToDevice));
        CHECK(cudaMemcpy(d_in_ptr, in_ptr.data(), (kN + 1) * 4, cudaMemcpyHostToDevice));
        const size_t smem = (kTable / 32 + 1) * 4 + kTable * 2 + (kN + 1) * 4 + kN * 4;
        for (int t : {128, 256, 512, 1024}) {
          line("step: block, hit bits, w from L2", 1, t,
               Median(1, t, smem, BlockHitsSkeleton, d_out, static_cast<const uint16_t*>(d_inpos),
                      static_cast<const int32_t*>(d_in_ptr), static_cast<const float*>(d_w)));
        }
        CHECK(cudaFree(d_inpos));
        CHECK(cudaFree(d_in_ptr));
      }
      for (int t : {128, 256, 512, 1024}) {
        const auto* cp = static_cast<const int32_t*>(d_post);
        const auto* cw = static_cast<const float*>(d_w);
        line("step: block, ring in L2", 1, t, Median(1, t, 0, BlockSkeleton<1, 0>, d_out, d_ring, cp, cw));
        line("step: block, REDs into a buffer not read", 1, t,
             Median(1, t, 0, BlockSkeleton<1, 1>, d_out, d_ring, cp, cw));
        line("step: block, no rows", 1, t, Median(1, t, 0, BlockSkeleton<0, 0>, d_out, d_ring, cp, cw));
        line("step: block, ring by parity", 1, t, Median(1, t, 0, BlockSkeleton<1, 2>, d_out, d_ring, cp, cw));
        line("step: block, ring by parity, no rows", 1, t, Median(1, t, 0, BlockSkeleton<0, 2>, d_out, d_ring, cp, cw));
      }
      CHECK(cudaFree(d_post));
      CHECK(cudaFree(d_w));
      CHECK(cudaFree(d_ring));
    }
  }
  {
    // One CTA on chip (16-bit weights): the input rows (1024 x kN floats, ~4 MB, L2-resident like a window's
    // drive), the raster, a global ring, e and w.
    float *d_iext, *d_ring;
    uint8_t* d_raster;
    __nv_bfloat16 *d_e, *d_w;
    CHECK(cudaMalloc(&d_iext, 1024 * kN * 4));
    CHECK(cudaMalloc(&d_raster, static_cast<size_t>(kIters + kWarm) * kN));
    CHECK(cudaMalloc(&d_ring, kN * 4));
    CHECK(cudaMalloc(&d_e, kTable * 2));
    CHECK(cudaMalloc(&d_w, kTable * 2));
    {
      std::vector<float> iext(1024 * kN);
      for (size_t q = 0; q < iext.size(); ++q) iext[q] = (q * 2654435761u >> 11) % 7 == 0 ? 2.25f : 0.f;
      CHECK(cudaMemcpy(d_iext, iext.data(), iext.size() * 4, cudaMemcpyHostToDevice));
      std::vector<__nv_bfloat16> e(kTable), w(kTable);
      for (int k = 0; k < kTable; ++k) {
        e[k] = __float2bfloat16(1e-3f * static_cast<float>((k * 40503u >> 5) % 17) - 8e-3f);
        w[k] = __float2bfloat16(0.15f);
      }
      CHECK(cudaMemcpy(d_e, e.data(), kTable * 2, cudaMemcpyHostToDevice));
      CHECK(cudaMemcpy(d_w, w.data(), kTable * 2, cudaMemcpyHostToDevice));
    }
    const size_t smem = 4 * kTable + (kN + 4) * 4 + 2 * kN * 4;
    const char* ring_names[] = {"smem float CAS", "L2 RED", "smem int fixed point"};
    // One variant at 1024, 512 and 256 threads (1, 2 and 4 neurons a thread).
    auto on_chip = [&](auto ring, auto win) {
      constexpr int kRing = decltype(ring)::value;
      constexpr bool kWindow = decltype(win)::value;
      using K = void (*)(const float*, uint8_t*, float*, const __nv_bfloat16*, __nv_bfloat16*, Out*);
      const K ks[3] = {OnChipSkeleton<kRing, kWindow, 1>, OnChipSkeleton<kRing, kWindow, 2>,
                       OnChipSkeleton<kRing, kWindow, 4>};
      const int ts[3] = {1024, 512, 256};
      char name[96];
      std::snprintf(name, sizeof name, "on chip: ring %s%s", ring_names[kRing], kWindow ? ", win end" : "");
      for (int q = 0; q < 3; ++q) {
        line(name, 1, ts[q],
             Median(1, ts[q], smem, ks[q], d_out, static_cast<const float*>(d_iext), d_raster, d_ring,
                    static_cast<const __nv_bfloat16*>(d_e), d_w));
      }
    };
    using std::false_type, std::true_type;
    on_chip(std::integral_constant<int, 0>{}, false_type{});
    on_chip(std::integral_constant<int, 0>{}, true_type{});
    on_chip(std::integral_constant<int, 1>{}, false_type{});
    on_chip(std::integral_constant<int, 1>{}, true_type{});
    on_chip(std::integral_constant<int, 2>{}, false_type{});
    on_chip(std::integral_constant<int, 2>{}, true_type{});
    CHECK(cudaFree(d_iext));
    CHECK(cudaFree(d_raster));
    CHECK(cudaFree(d_ring));
    CHECK(cudaFree(d_e));
    CHECK(cudaFree(d_w));
  }
  if (!only_onchip) {
    const char* names[] = {"remote st + barrier.release", "st.async + mbarrier", "tagged words, polled",
                           "CTA barrier only"};
    for (int deliver = 0; deliver < 2; ++deliver) {
      for (int c : {1, 2, 4, 8}) {
        for (int t : {128, 256, 512, 1024}) {
          if (c * t < kN || c * t > 2 * kN + 100) continue;
          const size_t smem = (2 * c * (t / 32)) * 12 + t * 4;
          for (int x = 0; x < 4; ++x) {
            if (x == kLocal && c > 1) continue;
            char name[96];
            std::snprintf(name, sizeof name, "%s: %s", deliver ? "step" : "exchange", names[x]);
            using K = void (*)(Out*);
            const K ks[2][4] = {{ClusterSkeleton<kRelease, false>, ClusterSkeleton<kMbar, false>,
                                 ClusterSkeleton<kTagged, false>, ClusterSkeleton<kLocal, false>},
                                {ClusterSkeleton<kRelease, true>, ClusterSkeleton<kMbar, true>,
                                 ClusterSkeleton<kTagged, true>, ClusterSkeleton<kLocal, true>}};
            line(name, c, t, Median(c, t, smem, ks[deliver][x], d_out));
          }
        }
      }
    }
  }
  CHECK(cudaFree(d_out));
  return 0;
}
