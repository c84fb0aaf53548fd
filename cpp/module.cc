// nanobind module fumjax._core: exposes registrations() -> {target name: PyCapsule}.
#include <type_traits>

#include <nanobind/nanobind.h>

#include "xla/ffi/api/api.h"
#include "xla/ffi/api/c_api.h"

namespace nb = nanobind;

namespace fumjax {
void RegisterSpikeCodec(nb::module_& m);  // spike_codec.cc
}

XLA_FFI_DECLARE_HANDLER_SYMBOL(FumjaxLifStepCpu);
XLA_FFI_DECLARE_HANDLER_SYMBOL(FumjaxRunStepsCpu);
XLA_FFI_DECLARE_HANDLER_SYMBOL(FumjaxSynapseStepCpu);
XLA_FFI_DECLARE_HANDLER_SYMBOL(FumjaxSpikeMessageCpu);
XLA_FFI_DECLARE_HANDLER_SYMBOL(FumjaxWindowEndCpu);
XLA_FFI_DECLARE_HANDLER_SYMBOL(FumjaxAllFiniteCpu);

namespace {

template <typename T>
nb::capsule EncapsulateFfiHandler(T* fn) {
  static_assert(std::is_invocable_r_v<XLA_FFI_Error*, T, XLA_FFI_CallFrame*>,
                "Encapsulated function must be an XLA FFI handler");
  return nb::capsule(reinterpret_cast<void*>(fn));
}

}  // namespace

NB_MODULE(_core, m) {
  m.doc() = "fumjax CPU XLA FFI handlers, and the MPI exchange's spike codec";
  m.def("registrations", []() {
    nb::dict d;
    d["fumjax_lif_step"] = EncapsulateFfiHandler(FumjaxLifStepCpu);
    d["fumjax_run_steps"] = EncapsulateFfiHandler(FumjaxRunStepsCpu);
    d["fumjax_synapse_step"] = EncapsulateFfiHandler(FumjaxSynapseStepCpu);
    d["fumjax_spike_message"] = EncapsulateFfiHandler(FumjaxSpikeMessageCpu);
    d["fumjax_window_end"] = EncapsulateFfiHandler(FumjaxWindowEndCpu);
    d["fumjax_all_finite"] = EncapsulateFfiHandler(FumjaxAllFiniteCpu);
    return d;
  });
  fumjax::RegisterSpikeCodec(m);
}
