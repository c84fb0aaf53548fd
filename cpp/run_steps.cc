// XLA FFI CPU handler `fumjax_run_steps`: T whole simulation steps (dynamics._simulate) in one call.
//
// Layers: RunStepsPart (run_steps_compute.h, one thread's share) -> RunStepsHost (thread pool, FMA
// dispatch) -> RunStepsTyped<T, W> (buffers -> RunStepsArgs; T the state's float type, W the synapse
// storage type) -> RunStepsDispatch (shape/dtype checks, returns ffi::Error, never throws) ->
// XLA_FFI_DEFINE_HANDLER_SYMBOL.
//
// The state operands 0..9 are aliased to results 0..9 (input_output_aliases in fumjax/kernels/fused.py):
// the kernel updates the result buffers in place, copying an operand into its result first only when
// XLA did not give both the same buffer.
//
// FMA: XLA:CPU contracts a*b + c into an FMA exactly when the host CPU has FMA (it compiles for the host).
// The kernel is built twice, with hardware FMA (target attribute, so the file still needs no -march) and
// without (plain a*b + c); the host's cpuid picks one, so the result matches jitted XLA on either kind
// of host.

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <type_traits>
#include <utility>
#include <vector>

#include "ffi_util.h"
#include "run_steps_compute.h"
#include "xla/ffi/api/ffi.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace ffi = xla::ffi;

namespace fumjax {
namespace {

// Thread entry points, one per (FMA, T, W): the loop nest is generated inside each (forced inlining), so
// the FMA variants get AVX2/FMA/F16C code while the file needs no -march.
template <typename T, typename W>
void PartNoFma(void* ctx, int p) {
#if FUMJAX_X86
  RunStepsPart<false, T, W>(*static_cast<RunShared<T, W>*>(ctx), p);
#else
  // Non-x86 hosts (aarch64 ...) always have FMA and LLVM contracts there too.
  RunStepsPart<true, T, W>(*static_cast<RunShared<T, W>*>(ctx), p);
#endif
}
#if FUMJAX_X86
template <typename T, typename W>
FUMJAX_FMA_TARGET void PartFma(void* ctx, int p) {
  RunStepsPart<true, T, W>(*static_cast<RunShared<T, W>*>(ctx), p);
}
#endif

// Runs a.t_steps steps on a.threads threads. Returns 0, or a negative code when an index read from the
// network arrays is out of range (-1: post/in_syn, -2: delay, -3: row_ptr/in_ptr).
template <typename T, typename W>
int RunStepsHost(const RunStepsArgs<T, W>& a) {
  RunShared<T, W> sh(a.threads);
  PrepareShared(a, sh);
  ThreadPool::Fn fn = &PartNoFma<T, W>;
#if FUMJAX_X86
  if (HostHasFma()) fn = &PartFma<T, W>;
#endif
  ThreadPool::Global().Run(a.threads, fn, &sh);
  return sh.error.load();
}

struct Operands {
  ffi::AnyBuffer v, refrac, x, y, ring, w, elig, elig_t0, window_spikes, step;
  ffi::AnyBuffer tau, v_th, i_ext, row_ptr, pre_bucket, post, delay, in_ptr, in_syn, excitatory, gamma_pow,
      inv_pow;
};

struct Results {
  ffi::Result<ffi::AnyBuffer> v, refrac, x, y, ring, w, elig, elig_t0, window_spikes, step, spikes;
};

struct Scalars {
  double v_rest, v_reset, dt, g_syn, a_plus, a_minus, w_clip, decay_x, decay_y;
  int32_t refractory_steps, mode, threads, pre_shift;
};

// Calls of at least this many steps check every index once (O(E)) and build the learning in-list with each
// entry's pre (O(E)); shorter ones check inside the loops and search each visited entry's pre. The setup
// pays for itself after ~25 steps at ~10 Hz (it was 1000: FUM's 50-step windows were 10-16% slower).
// Plastic calls of a network the memo below keeps do so at any length: after the first call they only
// compare the arrays (the searches made a 31-step FUM-1k call ~2x slower per step than a 32-step one).
constexpr int64_t kInPreMinSteps = 32;
// The (T, N) spike raster is a fresh output buffer of every call, written once, a row per step: on Linux
// each 4 KiB page of it costs a page fault at its first write (measured: ~25,000 faults, ~13% of a
// 10k-neuron x 10k-step call). Where transparent huge pages are enabled on request (the usual "madvise"
// setting), asking for them turns that into one fault per 2 MiB. Only a hint: the contents do not change,
// and an error (no THP support) is ignored.
void AdviseHugePages(void* p, int64_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{1} << 21;
  if (bytes < static_cast<int64_t>(2 * kHuge)) return;
  const uintptr_t lo = (reinterpret_cast<uintptr_t>(p) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t hi = (reinterpret_cast<uintptr_t>(p) + static_cast<uintptr_t>(bytes)) & ~(kHuge - 1);
  if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
#else
  (void)p;
  (void)bytes;
#endif
}

// The per-call checks and the in-list below are O(E) passes that a call of a 50-step window repeats: they
// are written without early exits or per-element branches so that they vectorize (with per-element
// returns and push_back they took ~110 us of a ~250 us FUM-1k window call, bench/RESULTS.md).

// Every post index of the rows [row_ptr[0], row_ptr[N]) below N (else false); sets whether each row's posts
// ascend (sorted) or strictly ascend (distinct). row_ptr must already be checked (ascending, <= E).
// One flat pass counts the out-of-order neighbour pairs over all slots; the pairs that straddle two rows
// are counted again per row (O(N)) and taken off, since rows are ~50 slots: too short to vectorize alone.
bool CheckRows(const uint32_t* row_ptr, const int32_t* post, int64_t n, bool* sorted, bool* distinct) {
  const uint32_t n_u = static_cast<uint32_t>(n);
  const int64_t k0 = row_ptr[0], k1 = row_ptr[n];
  uint32_t out_of_range = 0;
  for (int64_t k = k0; k < k1; ++k) out_of_range |= static_cast<uint32_t>(post[k]) >= n_u;
  if (out_of_range) return false;
  uint32_t descending = 0, repeated = 0;  // post[k] < post[k - 1], post[k] == post[k - 1] (E < 2^32)
  for (int64_t k = k0 + 1; k < k1; ++k) {
    descending += post[k] < post[k - 1];
    repeated += post[k] == post[k - 1];
  }
  for (int64_t j = 1; j < n; ++j) {
    const int64_t k = row_ptr[j];
    if (k > row_ptr[j - 1] && k < k1) {  // starts row j after a non-empty row (each such k once)
      descending -= post[k] < post[k - 1];
      repeated -= post[k] == post[k - 1];
    }
  }
  *sorted = descending == 0;
  *distinct = descending == 0 && repeated == 0;
  return true;
}

// Whether every one of the m 32-bit values lies in [lo, hi] (hi - lo < 2^32): one unsigned compare each,
// no early exit.
template <typename I>
bool AllWithin(const I* v, int64_t m, int64_t lo, int64_t hi) {
  static_assert(sizeof(I) == 4, "32-bit indices");
  const uint32_t base = static_cast<uint32_t>(lo), span = static_cast<uint32_t>(hi - lo);
  uint32_t outside = 0;
  for (int64_t k = 0; k < m; ++k) outside |= static_cast<uint32_t>(v[k]) - base > span;
  return outside == 0;
}

// The learning in-list of a long plastic call: each entry's pre (pre[q] for q in [in_ptr[0], in_ptr[N]),
// indexed like in_syn) and, when some presynaptic neurons are static (code 2), an in-list without their
// synapses (ptr, syn; pre then follows it). Indices must already be checked.
struct InList {
  std::unique_ptr<uint32_t[]> ptr, syn;
  std::unique_ptr<int32_t[]> pre;
};

InList BuildInList(const uint32_t* row_ptr, const uint32_t* in_ptr, const uint32_t* in_syn,
                   const uint8_t* excitatory, int64_t n, int64_t e) {
  InList out;
  // Each slot's pre, row by row (what PreOfSlot finds; slots past row_ptr[N] go to the last row, slots
  // before row_ptr[0] to neuron 0): one sequential pass instead of a search per entry.
  std::unique_ptr<int32_t[]> slot_pre(new int32_t[static_cast<size_t>(std::max<int64_t>(e, 1))]);
  std::fill(slot_pre.get(), slot_pre.get() + row_ptr[0], 0);
  for (int64_t j = 0; j < n; ++j) {
    std::fill(slot_pre.get() + row_ptr[j], slot_pre.get() + row_ptr[j + 1], static_cast<int32_t>(j));
  }
  std::fill(slot_pre.get() + row_ptr[n], slot_pre.get() + e, static_cast<int32_t>(n - 1));
  bool any_static = false;
  for (int64_t j = 0; j < n; ++j) any_static |= excitatory[j] == 2;
  const int64_t q1 = in_ptr[n];
  out.pre.reset(new int32_t[static_cast<size_t>(std::max<int64_t>(q1, 1))]);
  int32_t* pre = out.pre.get();
  if (!any_static) {
    for (int64_t q = in_ptr[0]; q < q1; ++q) pre[q] = slot_pre[in_syn[q]];
    return out;
  }
  out.ptr.reset(new uint32_t[static_cast<size_t>(n) + 1]);
  out.syn.reset(new uint32_t[static_cast<size_t>(std::max<int64_t>(q1, 1))]);
  uint32_t* syn = out.syn.get();
  uint32_t c = 0;
  out.ptr[0] = 0;
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t q = in_ptr[i]; q < static_cast<int64_t>(in_ptr[i + 1]); ++q) {
      const uint32_t k = in_syn[q];
      const int32_t j = slot_pre[k];
      syn[c] = k;  // written always, kept (c advances) only for a learning pre: no branch
      pre[c] = j;
      c += excitatory[j] != 2;
    }
    out.ptr[static_cast<size_t>(i) + 1] = c;
  }
  return out;
}

// The index checks and the learning in-list of the last checked call, kept for the next one. A call of one
// FUM window (50 steps) re-derived both from network arrays that do not change between windows: O(E) work,
// ~90 us of a ~300 us call at FUM-1k (bench/RESULTS.md). A call takes them only when every array they are
// derived from is byte-identical to the copy kept beside them (compared on every call: post and in_syn,
// 8 bytes per synapse, against their copies), so a changed network, even in the same buffers, is checked and built afresh. One memo for the
// process (the last network checked), shared by calls on any thread: a call holds its own reference while
// it runs. Networks above kMemoMaxSynapses are not kept (the copies cost ~16 bytes per synapse), nor any
// while the environment sets FUMJAX_CPU_NETWORK_MEMO=0 (read on every call).
constexpr int64_t kMemoMaxSynapses = int64_t{1} << 21;

bool MemoAllowed(int64_t e) {
  if (e > kMemoMaxSynapses) return false;
  const char* env = std::getenv("FUMJAX_CPU_NETWORK_MEMO");
  return env == nullptr || std::strcmp(env, "0") != 0;
}

struct NetworkMemo {
  int64_t n = 0, e = 0;
  int32_t d = 0;
  std::vector<uint32_t> row_ptr, in_ptr, in_syn;
  std::vector<int32_t> post, delay;  // delay only when d > 1 (all delays are 1 otherwise, and unread)
  std::vector<uint8_t> code;
  bool in_syn_checked = false;  // checked by a plastic call (calls with plasticity off never read in_syn)
  bool rows_sorted = false, rows_distinct = false;
  InList lin;  // empty (no pre) unless built by a call that wanted it
};

std::mutex& MemoMutex() {
  static std::mutex mu;
  return mu;
}
std::shared_ptr<const NetworkMemo>& MemoSlot() {
  static std::shared_ptr<const NetworkMemo> slot;
  return slot;
}

template <typename U>
bool SameAs(const std::vector<U>& kept, const U* p, int64_t m) {
  return static_cast<int64_t>(kept.size()) == m &&
         (m == 0 || std::memcmp(kept.data(), p, static_cast<size_t>(m) * sizeof(U)) == 0);
}

// The memo, if it was made from exactly these arrays and holds what this call needs (the in_syn check for a
// plastic call, the learning in-list where the call wants one); else null.
template <typename T, typename W>
std::shared_ptr<const NetworkMemo> MatchingMemo(const RunStepsArgs<T, W>& a, bool plastic, bool want_lin) {
  std::shared_ptr<const NetworkMemo> m;
  {
    std::lock_guard<std::mutex> lock(MemoMutex());
    m = MemoSlot();
  }
  if (!m || m->n != a.n || m->e != a.e || m->d != a.d || (plastic && !m->in_syn_checked) ||
      (want_lin && !m->lin.pre)) {
    return nullptr;
  }
  const bool same = SameAs(m->row_ptr, a.row_ptr, a.n + 1) && SameAs(m->in_ptr, a.in_ptr, a.n + 1) &&
                    SameAs(m->code, a.excitatory, a.n) && SameAs(m->post, a.post, a.e) &&
                    SameAs(m->in_syn, a.in_syn, a.e) && (a.d == 1 || SameAs(m->delay, a.delay, a.e));
  return same ? m : nullptr;
}

// A memo of this call's arrays, checks and in-list (moved in), made the process's memo.
template <typename T, typename W>
std::shared_ptr<const NetworkMemo> KeepMemo(const RunStepsArgs<T, W>& a, bool plastic, InList lin) {
  auto m = std::make_shared<NetworkMemo>();
  m->n = a.n;
  m->e = a.e;
  m->d = a.d;
  m->row_ptr.assign(a.row_ptr, a.row_ptr + a.n + 1);
  m->in_ptr.assign(a.in_ptr, a.in_ptr + a.n + 1);
  m->code.assign(a.excitatory, a.excitatory + a.n);
  m->post.assign(a.post, a.post + a.e);
  m->in_syn.assign(a.in_syn, a.in_syn + a.e);
  if (a.d > 1) m->delay.assign(a.delay, a.delay + a.e);
  m->in_syn_checked = plastic;
  m->rows_sorted = a.rows_sorted;
  m->rows_distinct = a.rows_distinct;
  m->lin = std::move(lin);
  std::shared_ptr<const NetworkMemo> kept = std::move(m);
  std::lock_guard<std::mutex> lock(MemoMutex());
  MemoSlot() = kept;
  return kept;
}

template <typename T, typename W>
ffi::Error RunStepsTyped(Operands& o, Results& r, const Scalars& c) {
  RunStepsArgs<T, W> a;
  a.n = static_cast<int64_t>(o.v.element_count());
  a.e = static_cast<int64_t>(o.w.element_count());
  a.d = static_cast<int32_t>(o.ring.dimensions()[0]);
  a.t_steps = static_cast<int64_t>(o.i_ext.dimensions()[0]);
  a.k_max = static_cast<int32_t>(o.gamma_pow.element_count()) - 1;
  a.threads = ResolveThreads(c.threads, a.n, a.e);
  a.vector_rows = UseVectorRows();

  a.v = InPlace<T>(o.v, r.v);
  a.refrac = InPlace<int32_t>(o.refrac, r.refrac);
  a.x = InPlace<T>(o.x, r.x);
  a.y = InPlace<T>(o.y, r.y);
  a.ring = InPlace<T>(o.ring, r.ring);
  a.w = InPlace<W>(o.w, r.w);
  a.elig = InPlace<W>(o.elig, r.elig);
  a.elig_t0 = InPlace<int32_t>(o.elig_t0, r.elig_t0);
  a.window_spikes = InPlace<int32_t>(o.window_spikes, r.window_spikes);
  a.step = InPlace<int32_t>(o.step, r.step);

  a.tau = o.tau.typed_data<T>();
  a.v_th = o.v_th.typed_data<T>();
  a.i_ext = o.i_ext.typed_data<T>();
  SetSynapseOperands(a, o, c);
  a.v_rest = static_cast<T>(c.v_rest);
  a.v_reset = static_cast<T>(c.v_reset);
  a.dt = static_cast<T>(c.dt);
  a.refractory_steps = c.refractory_steps;
  a.spikes = r.spikes->typed_data<uint8_t>();
  AdviseHugePages(a.spikes, a.t_steps * a.n);

  const auto bad_index = [] { return BadIndex("fumjax_run_steps"); };
  const auto bad_ptr = [] { return BadPointer("fumjax_run_steps"); };
  // The slot -> pre table, every call (O(E >> shift)): entry b must be the row holding slot b << shift.
  if (!BucketsMatchRows(a.row_ptr, a.n, a.pre_bucket, static_cast<int64_t>(o.pre_bucket.element_count()),
                        a.pre_shift)) {
    return ffi::Error::InvalidArgument(
        "fumjax_run_steps: pre_bucket does not match row_ptr (entry b must be the pre neuron whose row "
        "holds CSR slot b << pre_shift)");
  }
  // Long calls, threaded calls and plastic calls of a network the memo keeps check every index array once
  // here (O(E), or a comparison with the memo), so the step loops run without checks; several threads split
  // each row by post, by bisection when the posts of every row ascend (as Network builds them), which would
  // also skip a bad post index.
  const auto valid_ptr = [&](const uint32_t* ptr) {
    if (ptr[0] > a.e) return false;
    for (int64_t i = 0; i < a.n; ++i) {
      if (ptr[i + 1] < ptr[i] || ptr[i + 1] > a.e) return false;
    }
    return true;
  };
  // The same plastic calls, long ones always: each in-list entry's pre (4 B per synapse; no slot -> pre
  // search per visit), and when some presynaptic neurons are static a learning in-list without their
  // synapses (their dw is 0), so the incoming-synapse pass skips them.
  const bool plastic = a.mode != PlasticityMode::kOff;
  const bool keep = MemoAllowed(a.e);
  const bool want_lin = plastic && (a.t_steps >= kInPreMinSteps || keep);
  InList lin;
  std::shared_ptr<const NetworkMemo> memo;  // held until the kernel is done with its in-list
  if (a.threads > 1 || a.t_steps >= kInPreMinSteps || want_lin) {
    if (keep) memo = MatchingMemo(a, plastic, want_lin);
    if (memo) {
      a.rows_sorted = memo->rows_sorted;
      a.rows_distinct = memo->rows_distinct;
    } else {
      if (!valid_ptr(a.row_ptr) || !valid_ptr(a.in_ptr)) return bad_ptr();
      if (!CheckRows(a.row_ptr, a.post, a.n, &a.rows_sorted, &a.rows_distinct)) return bad_index();
      if (a.d > 1 && !AllWithin(a.delay, a.e, 1, a.d)) {
        return ffi::Error::InvalidArgument("fumjax_run_steps: a synapse delay is outside [1, ring slots]");
      }
      if (plastic && !AllWithin(a.in_syn, a.e, 0, a.e - 1)) return bad_index();
      if (want_lin) lin = BuildInList(a.row_ptr, a.in_ptr, a.in_syn, a.excitatory, a.n, a.e);
      if (keep) memo = KeepMemo(a, plastic, std::move(lin));
    }
    a.validated = true;
  }
  if (want_lin) {
    const InList& l = memo ? memo->lin : lin;
    a.lin_ptr = l.ptr ? l.ptr.get() : a.in_ptr;
    a.lin_syn = l.syn ? l.syn.get() : a.in_syn;
    a.lin_pre = l.pre.get();
  }

  return KernelCodeError(RunStepsHost<T, W>(a), "fumjax_run_steps");
}

ffi::Error RunStepsDispatch(ffi::AnyBuffer v, ffi::AnyBuffer refrac, ffi::AnyBuffer x, ffi::AnyBuffer y,
                            ffi::AnyBuffer ring, ffi::AnyBuffer w, ffi::AnyBuffer elig, ffi::AnyBuffer elig_t0,
                            ffi::AnyBuffer window_spikes, ffi::AnyBuffer step, ffi::AnyBuffer tau,
                            ffi::AnyBuffer v_th, ffi::AnyBuffer i_ext, ffi::AnyBuffer row_ptr,
                            ffi::AnyBuffer pre_bucket,
                            ffi::AnyBuffer post, ffi::AnyBuffer delay, ffi::AnyBuffer in_ptr,
                            ffi::AnyBuffer in_syn, ffi::AnyBuffer excitatory, ffi::AnyBuffer gamma_pow,
                            ffi::AnyBuffer inv_pow, double v_rest, double v_reset, double dt, double g_syn,
                            double a_plus, double a_minus, double w_clip, double decay_x, double decay_y,
                            int32_t refractory_steps, int32_t mode, int32_t threads, int32_t pre_shift,
                            ffi::Result<ffi::AnyBuffer> v_out,
                            ffi::Result<ffi::AnyBuffer> refrac_out, ffi::Result<ffi::AnyBuffer> x_out,
                            ffi::Result<ffi::AnyBuffer> y_out, ffi::Result<ffi::AnyBuffer> ring_out,
                            ffi::Result<ffi::AnyBuffer> w_out, ffi::Result<ffi::AnyBuffer> elig_out,
                            ffi::Result<ffi::AnyBuffer> elig_t0_out,
                            ffi::Result<ffi::AnyBuffer> window_spikes_out,
                            ffi::Result<ffi::AnyBuffer> step_out, ffi::Result<ffi::AnyBuffer> spikes) {
  const ffi::DataType dt_f = v.element_type();
  if (dt_f != ffi::DataType::F32 && dt_f != ffi::DataType::F64) {
    return ffi::Error::InvalidArgument("fumjax_run_steps: v_mV must be float32 or float64");
  }
  if (v.dimensions().size() != 1 || ring.dimensions().size() != 2 || i_ext.dimensions().size() != 2 ||
      w.dimensions().size() != 1) {
    return ffi::Error::InvalidArgument(
        "fumjax_run_steps: expected v (N,), ring (D, N), i_ext (T, N) and w (E,)");
  }
  const int64_t n = v.dimensions()[0];
  const int64_t e = w.dimensions()[0];
  const int64_t d = ring.dimensions()[0];
  const int64_t t = i_ext.dimensions()[0];
  const int64_t k1 = static_cast<int64_t>(gamma_pow.element_count());
  if (d < 1 || d > INT32_MAX || n >= INT32_MAX || e > static_cast<int64_t>(UINT32_MAX) || k1 < 1) {
    return ffi::Error::InvalidArgument(
        "fumjax_run_steps: need D >= 1, N below 2^31, E below 2^32 (uint32 synapse indices) and a "
        "non-empty eligibility table");
  }
  if (pre_shift < 0 || pre_shift > 31) {
    return ffi::Error::InvalidArgument("fumjax_run_steps: pre_shift must be in [0, 31]");
  }
  const int64_t n_buckets = e > 0 ? ((e - 1) >> pre_shift) + 1 : 0;
  // delay (0,): every delay is 1 (compact networks hold no per-synapse delay); then the ring has one slot.
  const int64_t n_delay = delay.element_count() == 0 && d == 1 ? 0 : e;
  if (mode < 0 || mode > 2) {
    return ffi::Error::InvalidArgument("fumjax_run_steps: mode must be 0 (off), 1 (stdp) or 2 (rstdp)");
  }
  if (!AllOfType(dt_f, {&v, &x, &y, &ring, &tau, &v_th, &i_ext, &inv_pow})) {
    return ffi::Error::InvalidArgument(
        "fumjax_run_steps: v, x, y, ring, tau, v_th, i_ext and inv_pow must share one float dtype "
        "(float32 or float64)");
  }
  if (!SynapseStorageOk(dt_f, w, elig, gamma_pow)) {
    return ffi::Error::InvalidArgument(
        "fumjax_run_steps: w, elig and gamma_pow must share one dtype: the state's, or float16/bfloat16 "
        "with float32 state");
  }
  if (threads < 0) {
    return ffi::Error::InvalidArgument("fumjax_run_steps: threads must be >= 0 (0 = automatic)");
  }
  if (!AllOfType(ffi::DataType::S32, {&refrac, &elig_t0, &window_spikes, &step, &pre_bucket, &post, &delay})) {
    return ffi::Error::InvalidArgument(
        "fumjax_run_steps: refrac_left, elig_t0, window_spikes, step, pre_bucket, post and delay must "
        "be int32");
  }
  if (!AllOfType(ffi::DataType::U32, {&row_ptr, &in_ptr, &in_syn})) {
    return ffi::Error::InvalidArgument("fumjax_run_steps: row_ptr, in_ptr and in_syn must be uint32");
  }
  if (excitatory.element_type() != ffi::DataType::U8 || spikes->element_type() != ffi::DataType::U8) {
    return ffi::Error::InvalidArgument("fumjax_run_steps: excitatory and the spikes output must be uint8");
  }
  const bool shapes_ok =
      Dims(v, {n}) && Dims(refrac, {n}) && Dims(x, {n}) && Dims(y, {n}) && Dims(ring, {d, n}) &&
      Dims(w, {e}) && Dims(elig, {e}) && Dims(elig_t0, {}) && Dims(window_spikes, {n}) && Dims(step, {}) &&
      Dims(tau, {n}) && Dims(v_th, {n}) && Dims(i_ext, {t, n}) && Dims(row_ptr, {n + 1}) &&
      Dims(pre_bucket, {n_buckets}) && Dims(post, {e}) && Dims(delay, {n_delay}) && Dims(in_ptr, {n + 1}) &&
      Dims(in_syn, {e}) &&
      Dims(excitatory, {n}) && Dims(gamma_pow, {k1}) && Dims(inv_pow, {k1}) && Dims(*spikes, {t, n});
  if (!shapes_ok) {
    return ffi::Error::InvalidArgument(
        "fumjax_run_steps: shapes must be v, refrac, x, y, window_spikes, tau, v_th, excitatory (N,); "
        "ring (D, N); w, elig, post, in_syn (E,); delay (E,) or (0,) with D = 1; pre_bucket "
        "((E-1 >> pre_shift) + 1,); row_ptr, in_ptr (N+1,); elig_t0, step (); "
        "i_ext and spikes (T, N); gamma_pow, inv_pow (K+1,)");
  }
  if (!ResultsLikeOperands({{&v, &v_out},
                            {&refrac, &refrac_out},
                            {&x, &x_out},
                            {&y, &y_out},
                            {&ring, &ring_out},
                            {&w, &w_out},
                            {&elig, &elig_out},
                            {&elig_t0, &elig_t0_out},
                            {&window_spikes, &window_spikes_out},
                            {&step, &step_out}})) {
    return ffi::Error::InvalidArgument(
        "fumjax_run_steps: each state result must have its operand's dtype and shape");
  }

  Operands o{v, refrac, x, y, ring, w, elig, elig_t0, window_spikes, step, tau, v_th, i_ext, row_ptr, pre_bucket,
             post, delay, in_ptr, in_syn, excitatory, gamma_pow, inv_pow};
  Results r{v_out, refrac_out, x_out, y_out, ring_out, w_out, elig_out, elig_t0_out, window_spikes_out,
            step_out, spikes};
  const Scalars c{v_rest,  v_reset, dt,      g_syn,           a_plus, a_minus,
                  w_clip,  decay_x, decay_y, refractory_steps, mode,   threads, pre_shift};
  return DispatchStateAndStorage(dt_f, w.element_type(), "fumjax_run_steps", [&](auto t, auto w_tag) {
    return RunStepsTyped<decltype(t), decltype(w_tag)>(o, r, c);
  });
}

}  // namespace
}  // namespace fumjax

XLA_FFI_DEFINE_HANDLER_SYMBOL(FumjaxRunStepsCpu, fumjax::RunStepsDispatch,
                              ffi::Ffi::Bind()
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
                                  .Arg<ffi::AnyBuffer>()  // delay_steps
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
                                  .Attr<int32_t>("threads")  // CPU only: 0 = automatic
                                  .Attr<int32_t>("pre_shift")
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
                                  .Ret<ffi::AnyBuffer>());  // spikes (T, N)
