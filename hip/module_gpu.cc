// nanobind module fumjax._core_gpu: registrations() -> {target name: PyCapsule},
// platform() -> the jax.ffi platform name ("CUDA" or "ROCM") to register them under, and
// block_path_fits(n, e, float_bytes) -> whether run_steps takes the one-block path on this device.
#include <cstdint>
#include <type_traits>

#include <nanobind/nanobind.h>

#include "xla/ffi/api/api.h"
#include "xla/ffi/api/c_api.h"

#ifndef FUMJAX_GPU_PLATFORM
#define FUMJAX_GPU_PLATFORM "CUDA"
#endif

namespace nb = nanobind;

XLA_FFI_DECLARE_HANDLER_SYMBOL(FumjaxLifStepGpu);
XLA_FFI_DECLARE_HANDLER_SYMBOL(FumjaxRunStepsGpu);
XLA_FFI_DECLARE_HANDLER_SYMBOL(FumjaxWindowRewardGpu);
XLA_FFI_DECLARE_HANDLER_SYMBOL(FumjaxWindowEndGpu);

namespace fumjax {
bool BlockPathFits(int64_t n, int64_t e, int32_t float_bytes);  // hip/run_steps.hip
}  // namespace fumjax

namespace {

template <typename T>
nb::capsule EncapsulateFfiHandler(T* fn) {
  static_assert(std::is_invocable_r_v<XLA_FFI_Error*, T, XLA_FFI_CallFrame*>,
                "Encapsulated function must be an XLA FFI handler");
  return nb::capsule(reinterpret_cast<void*>(fn));
}

}  // namespace

NB_MODULE(_core_gpu, m) {
  m.doc() = "fumjax GPU XLA FFI handlers";
  m.def("registrations", []() {
    nb::dict d;
    d["fumjax_lif_step"] = EncapsulateFfiHandler(FumjaxLifStepGpu);
    d["fumjax_run_steps"] = EncapsulateFfiHandler(FumjaxRunStepsGpu);
    d["fumjax_window_reward"] = EncapsulateFfiHandler(FumjaxWindowRewardGpu);
    d["fumjax_window_end"] = EncapsulateFfiHandler(FumjaxWindowEndGpu);
    return d;
  });
  m.def("platform", []() { return FUMJAX_GPU_PLATFORM; });
  m.def("block_path_fits", &fumjax::BlockPathFits, nb::arg("n"), nb::arg("e"), nb::arg("float_bytes"));
}
