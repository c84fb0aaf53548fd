// XLA FFI CPU handler `fumjax_lif_step`: fused LIF step for float32 and float64.
//
// Layers: LifStep (lif_compute.h, pure) -> LifStepTyped<T> -> LifStepDispatch (checks
// shapes/dtypes, returns ffi::Error, never throws) -> XLA_FFI_DEFINE_HANDLER_SYMBOL.

#include <cstdint>
#include <string>

#include "lif_compute.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace fumjax {
namespace {

template <typename T>
ffi::Error LifStepTyped(ffi::AnyBuffer v, ffi::AnyBuffer i, ffi::AnyBuffer tau, ffi::AnyBuffer v_th,
                        ffi::AnyBuffer refrac, double v_rest, double v_reset, double dt,
                        int32_t refractory_steps, ffi::Result<ffi::AnyBuffer> v_out,
                        ffi::Result<ffi::AnyBuffer> spikes, ffi::Result<ffi::AnyBuffer> refrac_out) {
  // Scalars round to T exactly like jnp's weak-typed Python floats do.
  LifStep<T>(static_cast<int64_t>(v.element_count()), v.typed_data<T>(), i.typed_data<T>(),
             tau.typed_data<T>(), v_th.typed_data<T>(), refrac.typed_data<int32_t>(),
             static_cast<T>(v_rest), static_cast<T>(v_reset), static_cast<T>(dt), refractory_steps,
             v_out->typed_data<T>(), spikes->typed_data<uint8_t>(), refrac_out->typed_data<int32_t>());
  return ffi::Error::Success();
}

bool SameDims(const ffi::AnyBuffer& a, const ffi::AnyBuffer& b) {
  auto da = a.dimensions();
  auto db = b.dimensions();
  if (da.size() != db.size()) return false;
  for (size_t k = 0; k < da.size(); ++k) {
    if (da[k] != db[k]) return false;
  }
  return true;
}

ffi::Error LifStepDispatch(ffi::AnyBuffer v, ffi::AnyBuffer i, ffi::AnyBuffer tau, ffi::AnyBuffer v_th,
                           ffi::AnyBuffer refrac, double v_rest, double v_reset, double dt,
                           int32_t refractory_steps, ffi::Result<ffi::AnyBuffer> v_out,
                           ffi::Result<ffi::AnyBuffer> spikes, ffi::Result<ffi::AnyBuffer> refrac_out) {
  const ffi::DataType dtype = v.element_type();
  if (dtype != ffi::DataType::F32 && dtype != ffi::DataType::F64) {
    return ffi::Error::InvalidArgument("fumjax_lif_step: v_mV must be float32 or float64");
  }
  if (i.element_type() != dtype || tau.element_type() != dtype || v_th.element_type() != dtype ||
      v_out->element_type() != dtype) {
    return ffi::Error::InvalidArgument(
        "fumjax_lif_step: v_mV, i_mV, tau_ms, v_th_mV and the v output must share one float dtype");
  }
  if (refrac.element_type() != ffi::DataType::S32 || refrac_out->element_type() != ffi::DataType::S32) {
    return ffi::Error::InvalidArgument("fumjax_lif_step: refrac_left must be int32");
  }
  if (spikes->element_type() != ffi::DataType::U8) {
    return ffi::Error::InvalidArgument("fumjax_lif_step: spikes output must be uint8");
  }
  if (!SameDims(v, i) || !SameDims(v, tau) || !SameDims(v, v_th) || !SameDims(v, refrac) ||
      !SameDims(v, *v_out) || !SameDims(v, *spikes) || !SameDims(v, *refrac_out)) {
    return ffi::Error::InvalidArgument("fumjax_lif_step: all inputs and outputs must have the same shape");
  }
  if (dtype == ffi::DataType::F32) {
    return LifStepTyped<float>(v, i, tau, v_th, refrac, v_rest, v_reset, dt, refractory_steps, v_out, spikes,
                               refrac_out);
  }
  return LifStepTyped<double>(v, i, tau, v_th, refrac, v_rest, v_reset, dt, refractory_steps, v_out, spikes,
                              refrac_out);
}

}  // namespace
}  // namespace fumjax

XLA_FFI_DEFINE_HANDLER_SYMBOL(FumjaxLifStepCpu, fumjax::LifStepDispatch,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()  // v_mV
                                  .Arg<ffi::AnyBuffer>()  // i_mV
                                  .Arg<ffi::AnyBuffer>()  // tau_ms
                                  .Arg<ffi::AnyBuffer>()  // v_th_mV
                                  .Arg<ffi::AnyBuffer>()  // refrac_left
                                  .Attr<double>("v_rest_mV")
                                  .Attr<double>("v_reset_mV")
                                  .Attr<double>("dt_ms")
                                  .Attr<int32_t>("refractory_steps")
                                  .Ret<ffi::AnyBuffer>()   // v_mV
                                  .Ret<ffi::AnyBuffer>()   // spikes
                                  .Ret<ffi::AnyBuffer>());  // refrac_left
