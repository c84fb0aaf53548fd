// XLA FFI CPU handler `fumjax_synapse_step`: one `dynamics.synapse_phase` (transmission, STDP/eligibility,
// traces), event-driven, for a whole network or one part of a partition (the step of an MPI rank, whose
// presynaptic spikes come from the exchange between its LIF half and this call).
//
// Layers: SynapseStep (synapse_step_compute.h, pure) -> SynapseStepHost (FMA dispatch) -> SynapseStepTyped
// <T, W> -> SynapseStepDispatch (shape/dtype checks, returns ffi::Error, never throws) ->
// XLA_FFI_DEFINE_HANDLER_SYMBOL. Operands 0..5 (ring, w, elig, elig_t0, x_pre, y_post) are aliased to the
// results (input_output_aliases in fumjax/kernels/fused.py). FMA as in run_steps.cc: built with and without
// hardware FMA, the host's cpuid picks the variant that matches jitted XLA.

#include <climits>
#include <cstdint>
#include <utility>

#include "ffi_util.h"
#include "synapse_step_compute.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace fumjax {
namespace {

template <bool kFma, typename T, typename W>
FUMJAX_ALWAYS_INLINE int SynapseStepMode(const SynapseStepArgs<T, W>& a) {
  switch (a.mode) {
    case PlasticityMode::kStdp:
      return SynapseStep<kFma, PlasticityMode::kStdp, T, W>(a);
    case PlasticityMode::kRstdp:
      return SynapseStep<kFma, PlasticityMode::kRstdp, T, W>(a);
    default:
      return SynapseStep<kFma, PlasticityMode::kOff, T, W>(a);
  }
}

#if FUMJAX_X86
template <typename T, typename W>
FUMJAX_FMA_TARGET int SynapseStepFma(const SynapseStepArgs<T, W>& a) {
  return SynapseStepMode<true, T, W>(a);
}
#endif

template <typename T, typename W>
int SynapseStepHost(const SynapseStepArgs<T, W>& a) {
#if FUMJAX_X86
  if (HostHasFma()) return SynapseStepFma<T, W>(a);
  return SynapseStepMode<false, T, W>(a);
#else
  return SynapseStepMode<true, T, W>(a);  // non-x86 hosts always have FMA and LLVM contracts there
#endif
}

struct Operands {
  ffi::AnyBuffer ring, w, elig, elig_t0, x, y, step, spikes_pre, spikes, row_ptr, pre_bucket, pre, post, delay,
      in_ptr, in_syn, excitatory, gamma_pow, inv_pow;
};
struct Results {
  ffi::Result<ffi::AnyBuffer> ring, w, elig, elig_t0, x, y;
};
struct Scalars {
  double g_syn, a_plus, a_minus, w_clip, decay_x, decay_y;
  int32_t mode, pre_shift;
};

template <typename T, typename W>
ffi::Error SynapseStepTyped(Operands& o, Results& r, const Scalars& c) {
  SynapseStepArgs<T, W> a;
  a.n = static_cast<int64_t>(o.y.element_count());
  a.n_pre = static_cast<int64_t>(o.x.element_count());
  a.e = static_cast<int64_t>(o.w.element_count());
  a.d = static_cast<int32_t>(o.ring.dimensions()[0]);
  a.k_max = static_cast<int32_t>(o.gamma_pow.element_count()) - 1;
  a.step = *o.step.typed_data<int32_t>();
  a.ring = InPlace<T>(o.ring, r.ring);
  a.w = InPlace<W>(o.w, r.w);
  a.elig = InPlace<W>(o.elig, r.elig);
  a.elig_t0 = InPlace<int32_t>(o.elig_t0, r.elig_t0);
  a.x = InPlace<T>(o.x, r.x);
  a.y = InPlace<T>(o.y, r.y);
  a.spikes_pre = o.spikes_pre.typed_data<uint8_t>();
  a.spikes = o.spikes.typed_data<uint8_t>();
  SetSynapseOperands(a, o, c);
  a.pre = o.pre.element_count() > 0 ? o.pre.typed_data<int32_t>() : nullptr;

  if (a.row_ptr[0] > a.e || a.row_ptr[a.n_pre] > a.e || a.in_ptr[0] > a.e || a.in_ptr[a.n] > a.e) {
    return BadPointer("fumjax_synapse_step");
  }
  const int64_t n_buckets = static_cast<int64_t>(o.pre_bucket.element_count());
  if (a.mode != PlasticityMode::kOff && a.pre == nullptr &&
      !BucketsMatchRows(a.row_ptr, a.n_pre, a.pre_bucket, n_buckets, a.pre_shift)) {
    return ffi::Error::InvalidArgument(
        "fumjax_synapse_step: pre_bucket does not match row_ptr (entry b must be the pre neuron whose row "
        "holds CSR slot b << pre_shift)");
  }
  return KernelCodeError(SynapseStepHost<T, W>(a), "fumjax_synapse_step");
}

ffi::Error SynapseStepDispatch(ffi::AnyBuffer ring, ffi::AnyBuffer w, ffi::AnyBuffer elig,
                               ffi::AnyBuffer elig_t0, ffi::AnyBuffer x, ffi::AnyBuffer y, ffi::AnyBuffer step,
                               ffi::AnyBuffer spikes_pre, ffi::AnyBuffer spikes, ffi::AnyBuffer row_ptr,
                               ffi::AnyBuffer pre_bucket, ffi::AnyBuffer pre, ffi::AnyBuffer post,
                               ffi::AnyBuffer delay,
                               ffi::AnyBuffer in_ptr, ffi::AnyBuffer in_syn, ffi::AnyBuffer excitatory,
                               ffi::AnyBuffer gamma_pow, ffi::AnyBuffer inv_pow, double g_syn, double a_plus,
                               double a_minus, double w_clip, double decay_x, double decay_y, int32_t mode,
                               int32_t pre_shift, ffi::Result<ffi::AnyBuffer> ring_out,
                               ffi::Result<ffi::AnyBuffer> w_out, ffi::Result<ffi::AnyBuffer> elig_out,
                               ffi::Result<ffi::AnyBuffer> elig_t0_out, ffi::Result<ffi::AnyBuffer> x_out,
                               ffi::Result<ffi::AnyBuffer> y_out) {
  const ffi::DataType dt_f = y.element_type();
  if (dt_f != ffi::DataType::F32 && dt_f != ffi::DataType::F64) {
    return ffi::Error::InvalidArgument("fumjax_synapse_step: y_post must be float32 or float64");
  }
  if (ring.dimensions().size() != 2 || w.dimensions().size() != 1 || x.dimensions().size() != 1 ||
      y.dimensions().size() != 1) {
    return ffi::Error::InvalidArgument("fumjax_synapse_step: expected ring (D, N), w (E,), x (N_pre,), y (N,)");
  }
  const int64_t n = y.dimensions()[0], n_pre = x.dimensions()[0], e = w.dimensions()[0];
  const int64_t d = ring.dimensions()[0];
  const int64_t k1 = static_cast<int64_t>(gamma_pow.element_count());
  if (d < 1 || d > INT32_MAX || n_pre >= INT32_MAX || e > static_cast<int64_t>(UINT32_MAX) || k1 < 1) {
    return ffi::Error::InvalidArgument(
        "fumjax_synapse_step: need D >= 1, N_pre below 2^31, E below 2^32 and a non-empty eligibility "
        "table");
  }
  if (pre_shift < 0 || pre_shift > 31 || mode < 0 || mode > 2) {
    return ffi::Error::InvalidArgument("fumjax_synapse_step: need pre_shift in [0, 31] and mode 0, 1 or 2");
  }
  const int64_t n_buckets = e > 0 ? ((e - 1) >> pre_shift) + 1 : 0;
  const int64_t n_delay = delay.element_count() == 0 && d == 1 ? 0 : e;
  if (!AllOfType(dt_f, {&ring, &x, &y, &inv_pow})) {
    return ffi::Error::InvalidArgument(
        "fumjax_synapse_step: ring, x, y and inv_pow must share one float dtype (float32 or float64)");
  }
  if (!SynapseStorageOk(dt_f, w, elig, gamma_pow)) {
    return ffi::Error::InvalidArgument(
        "fumjax_synapse_step: w, elig and gamma_pow must share one dtype: the state's, or "
        "float16/bfloat16 with float32 state");
  }
  if (!AllOfType(ffi::DataType::S32, {&elig_t0, &step, &pre_bucket, &pre, &post, &delay})) {
    return ffi::Error::InvalidArgument(
        "fumjax_synapse_step: elig_t0, step, pre_bucket, pre, post and delay must be int32");
  }
  if (!AllOfType(ffi::DataType::U32, {&row_ptr, &in_ptr, &in_syn})) {
    return ffi::Error::InvalidArgument("fumjax_synapse_step: row_ptr, in_ptr and in_syn must be uint32");
  }
  if (!AllOfType(ffi::DataType::U8, {&spikes_pre, &spikes, &excitatory})) {
    return ffi::Error::InvalidArgument(
        "fumjax_synapse_step: spikes_pre, spikes and excitatory (pre codes) must be uint8");
  }
  const bool shapes_ok = Dims(ring, {d, n}) && Dims(w, {e}) && Dims(elig, {e}) && Dims(elig_t0, {}) &&
                         Dims(x, {n_pre}) && Dims(y, {n}) && Dims(step, {}) && Dims(spikes_pre, {n_pre}) &&
                         Dims(spikes, {n}) && Dims(row_ptr, {n_pre + 1}) && Dims(pre_bucket, {n_buckets}) &&
                         (Dims(pre, {e}) || Dims(pre, {0})) &&
                         Dims(post, {e}) && Dims(delay, {n_delay}) && Dims(in_ptr, {n + 1}) &&
                         Dims(in_syn, {e}) && Dims(excitatory, {n_pre}) && Dims(gamma_pow, {k1}) &&
                         Dims(inv_pow, {k1});
  if (!shapes_ok) {
    return ffi::Error::InvalidArgument(
        "fumjax_synapse_step: shapes must be ring (D, N); w, elig, post, in_syn (E,); delay (E,) or (0,) "
        "with D = 1; x_pre, spikes_pre, excitatory (N_pre,); y_post, spikes (N,); row_ptr (N_pre + 1,); in_ptr "
        "(N + 1,); pre_bucket ((E-1 >> pre_shift) + 1,); pre (E,) or (0,); elig_t0, step (); gamma_pow, inv_pow "
        "(K+1,)");
  }
  if (!ResultsLikeOperands({{&ring, &ring_out},
                            {&w, &w_out},
                            {&elig, &elig_out},
                            {&elig_t0, &elig_t0_out},
                            {&x, &x_out},
                            {&y, &y_out}})) {
    return ffi::Error::InvalidArgument(
        "fumjax_synapse_step: each state result must have its operand's dtype and shape");
  }
  Operands o{ring, w, elig, elig_t0, x, y, step, spikes_pre, spikes, row_ptr, pre_bucket, pre, post, delay,
             in_ptr, in_syn, excitatory, gamma_pow, inv_pow};
  Results r{ring_out, w_out, elig_out, elig_t0_out, x_out, y_out};
  const Scalars c{g_syn, a_plus, a_minus, w_clip, decay_x, decay_y, mode, pre_shift};
  return DispatchStateAndStorage(dt_f, w.element_type(), "fumjax_synapse_step", [&](auto t, auto w_tag) {
    return SynapseStepTyped<decltype(t), decltype(w_tag)>(o, r, c);
  });
}

}  // namespace
}  // namespace fumjax

XLA_FFI_DEFINE_HANDLER_SYMBOL(FumjaxSynapseStepCpu, fumjax::SynapseStepDispatch,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()  // ring_mV  (aliased to result 0)
                                  .Arg<ffi::AnyBuffer>()  // w        (1)
                                  .Arg<ffi::AnyBuffer>()  // elig     (2)
                                  .Arg<ffi::AnyBuffer>()  // elig_t0  (3)
                                  .Arg<ffi::AnyBuffer>()  // x_pre    (4)
                                  .Arg<ffi::AnyBuffer>()  // y_post   (5)
                                  .Arg<ffi::AnyBuffer>()  // step
                                  .Arg<ffi::AnyBuffer>()  // spikes_pre (N_pre,) uint8
                                  .Arg<ffi::AnyBuffer>()  // spikes (N,) uint8
                                  .Arg<ffi::AnyBuffer>()  // row_ptr (uint32)
                                  .Arg<ffi::AnyBuffer>()  // pre_bucket (int32)
                                  .Arg<ffi::AnyBuffer>()  // pre (E,) or (0,) (int32)
                                  .Arg<ffi::AnyBuffer>()  // post
                                  .Arg<ffi::AnyBuffer>()  // delay_steps
                                  .Arg<ffi::AnyBuffer>()  // in_ptr (uint32)
                                  .Arg<ffi::AnyBuffer>()  // in_syn (uint32)
                                  .Arg<ffi::AnyBuffer>()  // pre codes (uint8)
                                  .Arg<ffi::AnyBuffer>()  // gamma_pow
                                  .Arg<ffi::AnyBuffer>()  // inv_pow
                                  .Attr<double>("g_syn_mV")
                                  .Attr<double>("a_plus")
                                  .Attr<double>("a_minus")
                                  .Attr<double>("w_clip")
                                  .Attr<double>("decay_x")
                                  .Attr<double>("decay_y")
                                  .Attr<int32_t>("mode")
                                  .Attr<int32_t>("pre_shift")
                                  .Ret<ffi::AnyBuffer>()   // ring_mV
                                  .Ret<ffi::AnyBuffer>()   // w
                                  .Ret<ffi::AnyBuffer>()   // elig
                                  .Ret<ffi::AnyBuffer>()   // elig_t0
                                  .Ret<ffi::AnyBuffer>()   // x_pre
                                  .Ret<ffi::AnyBuffer>());  // y_post
