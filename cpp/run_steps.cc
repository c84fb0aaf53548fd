// XLA FFI CPU handler `fumjax_run_steps`: T whole simulation steps (dynamics._simulate) in one call.
//
// Layers: RunSteps (run_steps_compute.h, pure) -> RunStepsTyped<T> (buffers -> RunStepsArgs, scratch,
// FMA dispatch) -> RunStepsDispatch (shape/dtype checks, returns ffi::Error, never throws) ->
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

#include <climits>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <type_traits>
#include <utility>
#include <vector>

#include "run_steps_compute.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace fumjax {
namespace {

#if defined(__x86_64__) || defined(__i386__)
#define FUMJAX_X86 1
__attribute__((target("avx2,fma"))) int RunStepsFmaF32(const RunStepsArgs<float>& a) {
  return RunSteps<true, float>(a);
}
__attribute__((target("avx2,fma"))) int RunStepsFmaF64(const RunStepsArgs<double>& a) {
  return RunSteps<true, double>(a);
}
bool HostHasFma() {
  static const bool has = __builtin_cpu_supports("fma") && __builtin_cpu_supports("avx2");
  return has;
}
#else
#define FUMJAX_X86 0
#endif

template <typename T>
int RunStepsHost(const RunStepsArgs<T>& a) {
#if FUMJAX_X86
  if (HostHasFma()) {
    if constexpr (std::is_same_v<T, float>) {
      return RunStepsFmaF32(a);
    } else {
      return RunStepsFmaF64(a);
    }
  }
  return RunSteps<false, T>(a);
#else
  // Non-x86 hosts (aarch64 ...) always have FMA and LLVM contracts there too.
  return RunSteps<true, T>(a);
#endif
}

// Result buffer `out` starts as a copy of operand `in` (a no-op when XLA aliased them).
template <typename U>
U* InPlace(const ffi::AnyBuffer& in, ffi::Result<ffi::AnyBuffer>& out) {
  U* dst = out->typed_data<U>();
  const U* src = in.typed_data<U>();
  if (dst != src && in.size_bytes() > 0) std::memcpy(dst, src, in.size_bytes());
  return dst;
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

struct Operands {
  ffi::AnyBuffer v, refrac, x, y, ring, w, elig, elig_t0, window_spikes, step;
  ffi::AnyBuffer tau, v_th, i_ext, row_ptr, pre, post, delay, in_ptr, in_syn, excitatory, gamma_pow,
      inv_pow;
};

struct Results {
  ffi::Result<ffi::AnyBuffer> v, refrac, x, y, ring, w, elig, elig_t0, window_spikes, step, spikes;
};

struct Scalars {
  double v_rest, v_reset, dt, g_syn, a_plus, a_minus, w_clip, decay_x, decay_y;
  int32_t refractory_steps, mode;
};

constexpr int64_t kInPreMinSteps = 1000;

template <typename T>
ffi::Error RunStepsTyped(Operands& o, Results& r, const Scalars& c) {
  RunStepsArgs<T> a;
  a.n = static_cast<int64_t>(o.v.element_count());
  a.e = static_cast<int64_t>(o.w.element_count());
  a.d = static_cast<int32_t>(o.ring.dimensions()[0]);
  a.t_steps = static_cast<int64_t>(o.i_ext.dimensions()[0]);
  a.k_max = static_cast<int32_t>(o.gamma_pow.element_count()) - 1;

  a.v = InPlace<T>(o.v, r.v);
  a.refrac = InPlace<int32_t>(o.refrac, r.refrac);
  a.x = InPlace<T>(o.x, r.x);
  a.y = InPlace<T>(o.y, r.y);
  a.ring = InPlace<T>(o.ring, r.ring);
  a.w = InPlace<T>(o.w, r.w);
  a.elig = InPlace<T>(o.elig, r.elig);
  a.elig_t0 = InPlace<int32_t>(o.elig_t0, r.elig_t0);
  a.window_spikes = InPlace<int32_t>(o.window_spikes, r.window_spikes);
  a.step = InPlace<int32_t>(o.step, r.step);

  a.tau = o.tau.typed_data<T>();
  a.v_th = o.v_th.typed_data<T>();
  a.i_ext = o.i_ext.typed_data<T>();
  a.row_ptr = o.row_ptr.typed_data<int32_t>();
  a.pre = o.pre.typed_data<int32_t>();
  a.post = o.post.typed_data<int32_t>();
  a.delay = o.delay.typed_data<int32_t>();
  a.in_ptr = o.in_ptr.typed_data<int32_t>();
  a.in_syn = o.in_syn.typed_data<int32_t>();
  a.excitatory = o.excitatory.typed_data<uint8_t>();
  a.gamma_pow = o.gamma_pow.typed_data<T>();
  a.inv_pow = o.inv_pow.typed_data<T>();

  // Python floats reach jnp as weak-typed constants: rounded once to T.
  a.v_rest = static_cast<T>(c.v_rest);
  a.v_reset = static_cast<T>(c.v_reset);
  a.dt = static_cast<T>(c.dt);
  a.g_syn = static_cast<T>(c.g_syn);
  a.a_plus = static_cast<T>(c.a_plus);
  a.a_minus = static_cast<T>(c.a_minus);
  a.w_clip = static_cast<T>(c.w_clip);
  a.decay_x = static_cast<T>(c.decay_x);
  a.decay_y = static_cast<T>(c.decay_y);
  a.refractory_steps = c.refractory_steps;
  a.mode = static_cast<PlasticityMode>(c.mode);

  a.spikes = r.spikes->typed_data<uint8_t>();
  std::vector<T> ratio(static_cast<size_t>(a.n));
  std::vector<int32_t> spike_list(static_cast<size_t>(a.n));
  a.ratio = ratio.data();
  a.spike_list = spike_list.data();
  // Long plastic runs: pre of each in-list entry, so the incoming-synapse STDP pass reads it sequentially
  // instead of through a dependent random load (~10% faster; building it costs ~E random loads).
  std::vector<int32_t> in_pre;
  if (a.mode != PlasticityMode::kOff && a.t_steps >= kInPreMinSteps) {
    in_pre.resize(static_cast<size_t>(a.e));
    for (int64_t p = 0; p < a.e; ++p) {
      const int32_t k = a.in_syn[p];
      if (static_cast<uint64_t>(static_cast<uint32_t>(k)) >= static_cast<uint64_t>(a.e)) {
        return ffi::Error::InvalidArgument("fumjax_run_steps: a neuron or synapse index is out of range");
      }
      in_pre[static_cast<size_t>(p)] = a.pre[k];
    }
    a.in_pre = in_pre.data();
  }

  switch (RunStepsHost<T>(a)) {
    case 0:
      return ffi::Error::Success();
    case -2:
      return ffi::Error::InvalidArgument("fumjax_run_steps: a synapse delay is outside [1, ring slots]");
    case -3:
      return ffi::Error::InvalidArgument("fumjax_run_steps: row_ptr/in_ptr is not a valid CSR pointer");
    default:
      return ffi::Error::InvalidArgument("fumjax_run_steps: a neuron or synapse index is out of range");
  }
}

ffi::Error RunStepsDispatch(ffi::AnyBuffer v, ffi::AnyBuffer refrac, ffi::AnyBuffer x, ffi::AnyBuffer y,
                            ffi::AnyBuffer ring, ffi::AnyBuffer w, ffi::AnyBuffer elig, ffi::AnyBuffer elig_t0,
                            ffi::AnyBuffer window_spikes, ffi::AnyBuffer step, ffi::AnyBuffer tau,
                            ffi::AnyBuffer v_th, ffi::AnyBuffer i_ext, ffi::AnyBuffer row_ptr, ffi::AnyBuffer pre,
                            ffi::AnyBuffer post, ffi::AnyBuffer delay, ffi::AnyBuffer in_ptr,
                            ffi::AnyBuffer in_syn, ffi::AnyBuffer excitatory, ffi::AnyBuffer gamma_pow,
                            ffi::AnyBuffer inv_pow, double v_rest, double v_reset, double dt, double g_syn,
                            double a_plus, double a_minus, double w_clip, double decay_x, double decay_y,
                            int32_t refractory_steps, int32_t mode, ffi::Result<ffi::AnyBuffer> v_out,
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
  if (d < 1 || d > INT32_MAX || n >= INT32_MAX || e >= INT32_MAX || k1 < 1) {
    return ffi::Error::InvalidArgument(
        "fumjax_run_steps: need D >= 1, N and E below 2^31 and a non-empty eligibility table");
  }
  if (mode < 0 || mode > 2) {
    return ffi::Error::InvalidArgument("fumjax_run_steps: mode must be 0 (off), 1 (stdp) or 2 (rstdp)");
  }
  const ffi::AnyBuffer* float_bufs[] = {&v,   &x,    &y,     &ring, &w,        &elig,   &tau,
                                        &v_th, &i_ext, &gamma_pow, &inv_pow};
  for (const ffi::AnyBuffer* b : float_bufs) {
    if (b->element_type() != dt_f) {
      return ffi::Error::InvalidArgument(
          "fumjax_run_steps: v, x, y, ring, w, elig, tau, v_th, i_ext and the eligibility tables must "
          "share one float dtype (float32 or float64)");
    }
  }
  const ffi::AnyBuffer* int_bufs[] = {&refrac, &elig_t0, &window_spikes, &step, &row_ptr,
                                      &pre,    &post,    &delay,         &in_ptr, &in_syn};
  for (const ffi::AnyBuffer* b : int_bufs) {
    if (b->element_type() != ffi::DataType::S32) {
      return ffi::Error::InvalidArgument(
          "fumjax_run_steps: refrac_left, elig_t0, window_spikes, step and the network index arrays "
          "must be int32");
    }
  }
  if (excitatory.element_type() != ffi::DataType::U8 || spikes->element_type() != ffi::DataType::U8) {
    return ffi::Error::InvalidArgument("fumjax_run_steps: excitatory and the spikes output must be uint8");
  }
  const bool shapes_ok =
      Dims(v, {n}) && Dims(refrac, {n}) && Dims(x, {n}) && Dims(y, {n}) && Dims(ring, {d, n}) &&
      Dims(w, {e}) && Dims(elig, {e}) && Dims(elig_t0, {}) && Dims(window_spikes, {n}) && Dims(step, {}) &&
      Dims(tau, {n}) && Dims(v_th, {n}) && Dims(i_ext, {t, n}) && Dims(row_ptr, {n + 1}) &&
      Dims(pre, {e}) && Dims(post, {e}) && Dims(delay, {e}) && Dims(in_ptr, {n + 1}) && Dims(in_syn, {e}) &&
      Dims(excitatory, {n}) && Dims(gamma_pow, {k1}) && Dims(inv_pow, {k1}) && Dims(*spikes, {t, n});
  if (!shapes_ok) {
    return ffi::Error::InvalidArgument(
        "fumjax_run_steps: shapes must be v, refrac, x, y, window_spikes, tau, v_th, excitatory (N,); "
        "ring (D, N); w, elig, pre, post, delay, in_syn (E,); row_ptr, in_ptr (N+1,); elig_t0, step (); "
        "i_ext and spikes (T, N); gamma_pow, inv_pow (K+1,)");
  }
  const std::pair<const ffi::AnyBuffer*, ffi::Result<ffi::AnyBuffer>*> aliased[] = {
      {&v, &v_out},       {&refrac, &refrac_out}, {&x, &x_out},         {&y, &y_out},
      {&ring, &ring_out}, {&w, &w_out},           {&elig, &elig_out},   {&elig_t0, &elig_t0_out},
      {&window_spikes, &window_spikes_out},       {&step, &step_out}};
  for (const auto& [in, out] : aliased) {
    if ((*out)->element_type() != in->element_type() || (*out)->size_bytes() != in->size_bytes()) {
      return ffi::Error::InvalidArgument(
          "fumjax_run_steps: each state result must have its operand's dtype and shape");
    }
  }

  Operands o{v, refrac, x, y, ring, w, elig, elig_t0, window_spikes, step, tau, v_th, i_ext, row_ptr, pre,
             post, delay, in_ptr, in_syn, excitatory, gamma_pow, inv_pow};
  Results r{v_out, refrac_out, x_out, y_out, ring_out, w_out, elig_out, elig_t0_out, window_spikes_out,
            step_out, spikes};
  const Scalars c{v_rest, v_reset, dt, g_syn, a_plus, a_minus, w_clip, decay_x, decay_y, refractory_steps,
                  mode};
  if (dt_f == ffi::DataType::F32) return RunStepsTyped<float>(o, r, c);
  return RunStepsTyped<double>(o, r, c);
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
                                  .Arg<ffi::AnyBuffer>()  // row_ptr
                                  .Arg<ffi::AnyBuffer>()  // pre
                                  .Arg<ffi::AnyBuffer>()  // post
                                  .Arg<ffi::AnyBuffer>()  // delay_steps
                                  .Arg<ffi::AnyBuffer>()  // in_ptr
                                  .Arg<ffi::AnyBuffer>()  // in_syn
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
