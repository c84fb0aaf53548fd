// Small helpers shared by the CPU FFI handlers (run_steps.cc, synapse_step.cc).
#ifndef FUMJAX_CPP_FFI_UTIL_H_
#define FUMJAX_CPP_FFI_UTIL_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <string>
#include <type_traits>
#include <utility>

#include "run_steps_compute.h"  // Half, BFloat16, FUMJAX_HAVE_FLOAT16
#include "thread_pool.h"       // AvailableCores
#include "xla/ffi/api/ffi.h"

#if defined(__x86_64__) || defined(__i386__)
#define FUMJAX_X86 1
#define FUMJAX_FMA_TARGET __attribute__((target("avx2,fma,f16c")))
#else
#define FUMJAX_X86 0
#endif

namespace fumjax {

#if FUMJAX_X86
// Whether this host runs the AVX2/FMA/F16C variants (the ones that round like jitted XLA there).
inline bool HostHasFma() {
  static const bool has =
      __builtin_cpu_supports("fma") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
  return has;
}
#endif

// Whether run_steps' row pass uses AVX2 gathers: on x86 hosts other than AMD, whose vpgatherdd is microcoded
// (Zen 4: the scalar row loop was 17% faster per FUM-1k step, bench/RESULTS.md), unless the environment
// variable FUMJAX_CPU_VECTOR_ROWS is "0" or "1" (read at each call; both give identical results, and the
// tests run both on any x86 host).
inline bool UseVectorRows() {
  const char* env = std::getenv("FUMJAX_CPU_VECTOR_ROWS");
  if (env != nullptr && (std::strcmp(env, "0") == 0 || std::strcmp(env, "1") == 0)) return env[0] == '1';
#if FUMJAX_X86
  static const bool gathers_fast = !__builtin_cpu_is("amd");
  return gathers_fast;
#else
  return false;
#endif
}

// Automatic thread count (threads = 0): one thread per this many synapses, at most the usable cores that
// other work leaves idle (cores minus the 1-minute load average, which counts this process too, so at
// least 1): a small network's step is too short to split (a barrier costs about as much as its work),
// and on an oversubscribed machine every barrier waits for a descheduled thread.
inline constexpr int64_t kSynapsesPerAutoThread = 200000;

inline int IdleCores() {
  const int cores = AvailableCores();
#if defined(__linux__) || defined(__APPLE__)
  double load[1];
  if (getloadavg(load, 1) == 1) {
    return std::max(1, std::min(cores, cores + 1 - static_cast<int>(std::ceil(load[0]))));
  }
#endif
  return cores;
}

inline int ResolveThreads(int32_t requested, int64_t n, int64_t e) {
  int64_t t = requested;
  if (t <= 0) {
    // IdleCores reads /proc/loadavg (a few us): skipped where the network wants one thread anyway, which
    // FUM's 50-step window calls of small networks would otherwise pay every call.
    const int64_t want = std::max<int64_t>(1, e / kSynapsesPerAutoThread);
    t = want == 1 ? 1 : std::min<int64_t>(IdleCores(), want);
  }
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(t, std::max<int64_t>(1, n))));
}

// The errors of a handler `target` for a bad index and a bad CSR pointer read from the network arrays.
inline xla::ffi::Error BadIndex(const std::string& target) {
  return xla::ffi::Error::InvalidArgument(target + ": a neuron or synapse index is out of range");
}
inline xla::ffi::Error BadPointer(const std::string& target) {
  return xla::ffi::Error::InvalidArgument(target + ": row_ptr/in_ptr is not a valid CSR pointer");
}

// A kernel's return code as the handler's error: 0 success, -2 a delay outside the ring, -3 a bad CSR
// pointer, anything else (-1) a bad index.
inline xla::ffi::Error KernelCodeError(int code, const std::string& target) {
  switch (code) {
    case 0:
      return xla::ffi::Error::Success();
    case -2:
      return xla::ffi::Error::InvalidArgument(target + ": a synapse delay is outside [1, ring slots]");
    case -3:
      return BadPointer(target);
    default:
      return BadIndex(target);
  }
}

// Result buffer `out` starts as a copy of operand `in` (a no-op when XLA aliased them).
template <typename U>
U* InPlace(const xla::ffi::AnyBuffer& in, xla::ffi::Result<xla::ffi::AnyBuffer>& out) {
  U* dst = out->typed_data<U>();
  const U* src = in.typed_data<U>();
  if (dst != src && in.size_bytes() > 0) std::memcpy(dst, src, in.size_bytes());
  return dst;
}

// Whether buffer b has exactly the dimensions `want`.
inline bool Dims(const xla::ffi::AnyBuffer& b, std::initializer_list<int64_t> want) {
  auto dims = b.dimensions();
  if (dims.size() != want.size()) return false;
  size_t k = 0;
  for (int64_t w : want) {
    if (dims[k++] != w) return false;
  }
  return true;
}

// Whether every buffer has element type t.
inline bool AllOfType(xla::ffi::DataType t, std::initializer_list<const xla::ffi::AnyBuffer*> bufs) {
  for (const xla::ffi::AnyBuffer* b : bufs) {
    if (b->element_type() != t) return false;
  }
  return true;
}

// Synapse storage (w, elig, gamma_pow): the state's float type dt_f, or float16/bfloat16 with float32 state.
inline bool SynapseStorageOk(xla::ffi::DataType dt_f, const xla::ffi::AnyBuffer& w, const xla::ffi::AnyBuffer& elig,
                             const xla::ffi::AnyBuffer& gamma_pow) {
  using xla::ffi::DataType;
  const DataType dt_w = w.element_type();
  const bool ok = dt_w == dt_f || (dt_f == DataType::F32 && (dt_w == DataType::F16 || dt_w == DataType::BF16));
  return ok && elig.element_type() == dt_w && gamma_pow.element_type() == dt_w;
}

// Whether each in-place result has its operand's dtype and size.
inline bool ResultsLikeOperands(
    std::initializer_list<std::pair<const xla::ffi::AnyBuffer*, xla::ffi::Result<xla::ffi::AnyBuffer>*>> pairs) {
  for (const auto& [in, out] : pairs) {
    if ((*out)->element_type() != in->element_type() || (*out)->size_bytes() != in->size_bytes()) return false;
  }
  return true;
}

// fn(T{}, W{}) for the state type T (dt_f) and synapse storage W (dt_w) of a checked call: double/double,
// float/float, float/bfloat16 or float/float16 (an error naming `target` where this build has no float16).
template <typename Fn>
xla::ffi::Error DispatchStateAndStorage(xla::ffi::DataType dt_f, xla::ffi::DataType dt_w, const char* target,
                                        Fn&& fn) {
  using xla::ffi::DataType;
  if (dt_f == DataType::F64) return fn(double{}, double{});
  if (dt_w == DataType::F32) return fn(float{}, float{});
  if (dt_w == DataType::BF16) return fn(float{}, BFloat16{});
#if FUMJAX_HAVE_FLOAT16
  return fn(float{}, Half{});
#else
  return xla::ffi::Error::InvalidArgument(std::string(target) + ": this build has no float16 support (_Float16)");
#endif
}

// The slot -> pre table (O(E >> shift)): entry b must be the row (of n_rows) holding CSR slot b << shift.
inline bool BucketsMatchRows(const uint32_t* row_ptr, int64_t n_rows, const int32_t* bucket, int64_t n_buckets,
                             int32_t shift) {
  for (int64_t b = 0; b < n_buckets; ++b) {
    const int64_t i = bucket[b], s = b << shift;
    if (i < 0 || i >= n_rows || row_ptr[i] > s || row_ptr[i + 1] <= s) return false;
  }
  return true;
}

// The synapse operands and parameters both kernels' argument structs hold under the same names (a.d set
// first): o has row_ptr, pre_bucket, post, delay, in_ptr, in_syn, excitatory, gamma_pow, inv_pow buffers,
// c the doubles g_syn, a_plus, a_minus, w_clip, decay_x, decay_y and int32 mode, pre_shift. Python floats
// reach jnp as weak-typed constants: each scalar is rounded once to the state type T.
template <typename Args, typename Ops, typename Sc>
void SetSynapseOperands(Args& a, const Ops& o, const Sc& c) {
  using T = decltype(a.g_syn);
  a.row_ptr = o.row_ptr.template typed_data<uint32_t>();
  a.pre_bucket = o.pre_bucket.template typed_data<int32_t>();
  a.pre_shift = c.pre_shift;
  a.post = o.post.template typed_data<int32_t>();
  a.delay = a.d > 1 ? o.delay.template typed_data<int32_t>() : nullptr;
  a.in_ptr = o.in_ptr.template typed_data<uint32_t>();
  a.in_syn = o.in_syn.template typed_data<uint32_t>();
  a.excitatory = o.excitatory.template typed_data<uint8_t>();
  a.gamma_pow = static_cast<decltype(a.gamma_pow)>(o.gamma_pow.untyped_data());
  a.inv_pow = o.inv_pow.template typed_data<T>();
  a.g_syn = static_cast<T>(c.g_syn);
  a.a_plus = static_cast<T>(c.a_plus);
  a.a_minus = static_cast<T>(c.a_minus);
  a.w_clip = static_cast<T>(c.w_clip);
  a.decay_x = static_cast<T>(c.decay_x);
  a.decay_y = static_cast<T>(c.decay_y);
  a.mode = static_cast<decltype(a.mode)>(c.mode);
}

}  // namespace fumjax

#endif  // FUMJAX_CPP_FFI_UTIL_H_
