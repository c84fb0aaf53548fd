// XLA FFI CPU handler `fumjax_window_end`: a window's end (dynamics._end_window) in one call.
//
// Layers: WindowEndSynapses / WindowEndNeurons (pure loops) -> WindowEndTyped<T, W> (buffers, thread pool,
// FMA dispatch) -> WindowEndDispatch (shape/dtype checks, returns ffi::Error, never throws) ->
// XLA_FFI_DEFINE_HANDLER_SYMBOL.
//
// rstdp, on the synapses (one pass over E): the eligibility unscaled, e = e_hat * gamma^(step - elig_t0)
// (storage dtype), and w = clip(w + coef * e, -w_clip, w_clip) with coef = eta_eff(R) * R from XLA (its
// sigmoid is XLA's). Then on the neurons (every mode): the running rate estimate with this window's spikes,
// intrinsic plasticity from it, and the counters (elig_t0 = window_start = step, window_spikes = 0).
// The same roundings as the jitted reference on this host: XLA:CPU contracts coef * e + w and
// (1 - a) * rate + a * window_rate into FMAs exactly when the host has FMA (see run_steps.cc), so the loops
// are built with and without hardware FMA and the host's cpuid picks one. Operands 0..7 are results 0..7,
// aliased except the counters elig_t0 and window_start (as for the GPU handler, fumjax/kernels/fused.py).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>

#include "ffi_util.h"
#include "run_steps_compute.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace fumjax {
namespace {

constexpr double kDisabledVThMv = 1.0e9;  // plasticity.DISABLED_V_TH_MV: a disabled neuron slot's threshold

// Window-end scalars, as the reference rounds them (Python floats are weak-typed: they take the array's
// dtype; C is the reward coefficient's dtype, float32 or float64).
struct WindowEndScalars {
  double w_clip, dt_ms, rate_ema, rate_min_hz, rate_max_hz, v_th_step_mV, tau_step_ms, v_th_min_mV, v_th_max_mV,
      tau_min_ms, tau_max_ms;
  int32_t mode, intrinsic, threads;
};

template <typename T, typename W>
struct WindowEndArgs {
  int64_t n = 0, e = 0;
  int32_t k_max = 0, threads = 1;
  W* w = nullptr;
  W* elig = nullptr;
  const W* gamma_pow = nullptr;
  T coef = T(0);
  int32_t since = 0;  // step - elig_t0
  T* tau = nullptr;
  T* v_th = nullptr;
  T* rate = nullptr;
  const int32_t* window_spikes = nullptr;
  int32_t n_steps = 1;  // max(step - window_start, 1)
  const WindowEndScalars* c = nullptr;
};

// Synapses [k0, k1): e = e_hat * g (one rounding to W), w = clip(fma(coef, e, w)) rounded to W.
template <bool kFma, typename T, typename W>
FUMJAX_ALWAYS_INLINE void WindowEndSynapses(const WindowEndArgs<T, W>& a, int64_t k0, int64_t k1) {
  using S = Store<T, W>;
  const T g = S::Load(a.gamma_pow[JnpIndex(a.since, a.k_max + 1)]);
  const T coef = a.coef, hi = static_cast<T>(a.c->w_clip), lo = static_cast<T>(-a.c->w_clip);
  W* __restrict w = a.w;
  W* __restrict elig = a.elig;
  // bfloat16: XLA:CPU computes bfloat16 ops in float32 and, allowed excess precision, feeds the product
  // e_hat * g (exact in float32) to the weight update without rounding it to bfloat16 first; float16 and
  // float32 use the stored (rounded) e.
  constexpr bool kExcess = std::is_same_v<W, BFloat16>;
  for (int64_t k = k0; k < k1; ++k) {
    const T e = S::Load(elig[k]) * g;
    const W e_w = S::Put(e);
    elig[k] = e_w;
    const T nw = MulAdd<kFma>(coef, kExcess ? e : S::Load(e_w), S::Load(w[k]));
    w[k] = S::Put(std::min(std::max(nw, lo), hi));
  }
}

// Neurons [i0, i1): running rate (plasticity.update_rate_estimate of running_rate_hz) and, when enabled,
// plasticity.intrinsic_update from it.
template <bool kFma, typename T, typename W>
FUMJAX_ALWAYS_INLINE void WindowEndNeurons(const WindowEndArgs<T, W>& a, int64_t i0, int64_t i1) {
  const WindowEndScalars& c = *a.c;
  const T per_spike = T(1000) / (static_cast<T>(a.n_steps) * static_cast<T>(c.dt_ms));
  const T keep = static_cast<T>(1.0 - c.rate_ema), take = static_cast<T>(c.rate_ema);
  const T r_min = static_cast<T>(c.rate_min_hz), r_max = static_cast<T>(c.rate_max_hz);
  const T th_step = static_cast<T>(c.v_th_step_mV), tau_step = static_cast<T>(c.tau_step_ms);
  const T th_lo = static_cast<T>(c.v_th_min_mV), th_hi = static_cast<T>(c.v_th_max_mV);
  const T tau_lo = static_cast<T>(c.tau_min_ms), tau_hi = static_cast<T>(c.tau_max_ms);
  const T disabled = static_cast<T>(kDisabledVThMv);
  for (int64_t i = i0; i < i1; ++i) {
    const T win = static_cast<T>(a.window_spikes[i]) * per_spike;
    const T old = a.rate[i];
    const T r = old < T(0) ? win : MulAdd<kFma>(keep, old, take * win);
    a.rate[i] = r;
    if (c.intrinsic == 0) continue;
    const T above = r > r_max ? T(1) : T(0), below = r < r_min ? T(1) : T(0);
    const T th = a.v_th[i];
    const T th_new = std::min(std::max(th + th_step * (above - below), th_lo), th_hi);
    a.v_th[i] = th >= disabled ? th : th_new;
    a.tau[i] = std::min(std::max(a.tau[i] + tau_step * (below - above), tau_lo), tau_hi);
  }
}

template <bool kFma, typename T, typename W>
FUMJAX_ALWAYS_INLINE void WindowEndPart(const WindowEndArgs<T, W>& a, int p) {
  const auto share = [&](int64_t m, int64_t* b, int64_t* en) {
    *b = m * p / a.threads;
    *en = m * (p + 1) / a.threads;
  };
  int64_t b, en;
  if (a.c->mode == 2) {
    share(a.e, &b, &en);
    WindowEndSynapses<kFma>(a, b, en);
  }
  share(a.n, &b, &en);
  WindowEndNeurons<kFma>(a, b, en);
}

template <typename T, typename W>
void PartNoFma(void* ctx, int p) {
#if FUMJAX_X86
  WindowEndPart<false>(*static_cast<const WindowEndArgs<T, W>*>(ctx), p);
#else
  WindowEndPart<true>(*static_cast<const WindowEndArgs<T, W>*>(ctx), p);  // LLVM contracts there too
#endif
}
#if FUMJAX_X86
template <typename T, typename W>
FUMJAX_FMA_TARGET void PartFma(void* ctx, int p) {
  WindowEndPart<true>(*static_cast<const WindowEndArgs<T, W>*>(ctx), p);
}
#endif

struct Buffers {
  ffi::AnyBuffer w, elig, elig_t0, tau, v_th, rate, window_spikes, window_start, step, gamma_pow, coef;
};
struct Outs {
  ffi::Result<ffi::AnyBuffer> w, elig, elig_t0, tau, v_th, rate, window_spikes, window_start;
};

template <typename T, typename W>
ffi::Error WindowEndTyped(Buffers& b, Outs& o, const WindowEndScalars& c) {
  WindowEndArgs<T, W> a;
  a.n = static_cast<int64_t>(b.tau.element_count());
  a.e = static_cast<int64_t>(b.w.element_count());
  a.k_max = static_cast<int32_t>(b.gamma_pow.element_count()) - 1;
  a.threads = ResolveThreads(c.threads, a.n, c.mode == 2 ? a.e : 0);
  a.c = &c;
  a.w = InPlace<W>(b.w, o.w);
  a.elig = InPlace<W>(b.elig, o.elig);
  a.gamma_pow = b.gamma_pow.typed_data<W>();
  a.tau = InPlace<T>(b.tau, o.tau);
  a.v_th = InPlace<T>(b.v_th, o.v_th);
  a.rate = InPlace<T>(b.rate, o.rate);
  int32_t* ws = InPlace<int32_t>(b.window_spikes, o.window_spikes);
  a.window_spikes = ws;
  int32_t* elig_t0 = InPlace<int32_t>(b.elig_t0, o.elig_t0);
  int32_t* window_start = InPlace<int32_t>(b.window_start, o.window_start);
  const int32_t step = *b.step.typed_data<int32_t>();
  a.since = static_cast<int32_t>(static_cast<uint32_t>(step) - static_cast<uint32_t>(*elig_t0));  // int32 wrap
  a.n_steps = std::max(static_cast<int32_t>(static_cast<uint32_t>(step) - static_cast<uint32_t>(*window_start)), 1);
  a.coef = static_cast<T>(b.coef.element_type() == ffi::DataType::F64 ? *b.coef.typed_data<double>()
                                                                       : *b.coef.typed_data<float>());

  ThreadPool::Fn fn = &PartNoFma<T, W>;
#if FUMJAX_X86
  if (HostHasFma()) fn = &PartFma<T, W>;
#endif
  ThreadPool::Global().Run(a.threads, fn, &a);
  std::fill(ws, ws + a.n, 0);
  *elig_t0 = step;
  *window_start = step;
  return ffi::Error::Success();
}

ffi::Error WindowEndDispatch(ffi::AnyBuffer w, ffi::AnyBuffer elig, ffi::AnyBuffer elig_t0, ffi::AnyBuffer tau,
                             ffi::AnyBuffer v_th, ffi::AnyBuffer rate, ffi::AnyBuffer window_spikes,
                             ffi::AnyBuffer window_start, ffi::AnyBuffer step, ffi::AnyBuffer gamma_pow,
                             ffi::AnyBuffer coef, double w_clip, double dt_ms, double rate_ema, double rate_min_hz,
                             double rate_max_hz, double v_th_step_mV, double tau_step_ms, double v_th_min_mV,
                             double v_th_max_mV, double tau_min_ms, double tau_max_ms, int32_t mode,
                             int32_t intrinsic, int32_t threads, ffi::Result<ffi::AnyBuffer> w_out,
                             ffi::Result<ffi::AnyBuffer> elig_out, ffi::Result<ffi::AnyBuffer> elig_t0_out,
                             ffi::Result<ffi::AnyBuffer> tau_out, ffi::Result<ffi::AnyBuffer> v_th_out,
                             ffi::Result<ffi::AnyBuffer> rate_out, ffi::Result<ffi::AnyBuffer> window_spikes_out,
                             ffi::Result<ffi::AnyBuffer> window_start_out) {
  const ffi::DataType dt_f = tau.element_type();
  if (dt_f != ffi::DataType::F32 && dt_f != ffi::DataType::F64) {
    return ffi::Error::InvalidArgument("fumjax_window_end: tau_ms must be float32 or float64");
  }
  if (!AllOfType(dt_f, {&v_th, &rate}) || !SynapseStorageOk(dt_f, w, elig, gamma_pow)) {
    return ffi::Error::InvalidArgument(
        "fumjax_window_end: tau_ms, v_th_mV and rate_hz must share the state's float dtype; w, elig and "
        "gamma_pow the synapse storage dtype (the state's, or float16/bfloat16 with float32 state)");
  }
  const ffi::DataType want_coef = dt_f == ffi::DataType::F64 ? ffi::DataType::F64 : ffi::DataType::F32;
  if (!AllOfType(ffi::DataType::S32, {&elig_t0, &window_spikes, &window_start, &step}) ||
      coef.element_type() != want_coef) {
    return ffi::Error::InvalidArgument(
        "fumjax_window_end: elig_t0, window_spikes, window_start and step must be int32, and the reward "
        "coefficient float32 (float64 with float64 state)");
  }
  const int64_t n = static_cast<int64_t>(tau.element_count());
  const int64_t e = static_cast<int64_t>(w.element_count());
  if (!Dims(tau, {n}) || !Dims(v_th, {n}) || !Dims(rate, {n}) || !Dims(window_spikes, {n}) || !Dims(w, {e}) ||
      !Dims(elig, {e}) || !Dims(elig_t0, {}) || !Dims(window_start, {}) || !Dims(step, {}) || !Dims(coef, {}) ||
      gamma_pow.dimensions().size() != 1 || gamma_pow.element_count() < 1) {
    return ffi::Error::InvalidArgument(
        "fumjax_window_end: shapes must be tau, v_th, rate_hz, window_spikes (N,); w, elig (E,); elig_t0, "
        "window_start, step, coef (); gamma_pow (K + 1,) with K >= 0");
  }
  if (!ResultsLikeOperands({{&w, &w_out},
                            {&elig, &elig_out},
                            {&elig_t0, &elig_t0_out},
                            {&tau, &tau_out},
                            {&v_th, &v_th_out},
                            {&rate, &rate_out},
                            {&window_spikes, &window_spikes_out},
                            {&window_start, &window_start_out}})) {
    return ffi::Error::InvalidArgument("fumjax_window_end: each result must match its operand's dtype and size");
  }
  Buffers b{w, elig, elig_t0, tau, v_th, rate, window_spikes, window_start, step, gamma_pow, coef};
  Outs o{w_out, elig_out, elig_t0_out, tau_out, v_th_out, rate_out, window_spikes_out, window_start_out};
  const WindowEndScalars c{w_clip,      dt_ms,       rate_ema,   rate_min_hz, rate_max_hz, v_th_step_mV,
                           tau_step_ms, v_th_min_mV, v_th_max_mV, tau_min_ms, tau_max_ms,  mode,
                           intrinsic,   threads};
  return DispatchStateAndStorage(dt_f, w.element_type(), "fumjax_window_end", [&](auto t, auto s) {
    return WindowEndTyped<decltype(t), decltype(s)>(b, o, c);
  });
}

}  // namespace
}  // namespace fumjax

XLA_FFI_DEFINE_HANDLER_SYMBOL(FumjaxWindowEndCpu, fumjax::WindowEndDispatch,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()  // w            (0)
                                  .Arg<ffi::AnyBuffer>()  // elig         (1)
                                  .Arg<ffi::AnyBuffer>()  // elig_t0      (2)
                                  .Arg<ffi::AnyBuffer>()  // tau_ms       (3)
                                  .Arg<ffi::AnyBuffer>()  // v_th_mV      (4)
                                  .Arg<ffi::AnyBuffer>()  // rate_hz      (5)
                                  .Arg<ffi::AnyBuffer>()  // window_spikes (6)
                                  .Arg<ffi::AnyBuffer>()  // window_start (7)
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
                                  .Ret<ffi::AnyBuffer>());  // window_start
