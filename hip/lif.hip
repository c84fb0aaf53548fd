// GPU XLA FFI handler `fumjax_lif_step` (CUDA via hip_compat.h, or ROCm via hipcc).
//
// Same semantics and bit-exact arithmetic as cpp/lif_compute.h: explicit round-to-nearest
// intrinsics (no FMA contraction, IEEE division), plus --fmad=false / -ffp-contract=off.
// The handler only launches on XLA's stream: no sync, no allocation (CUDA-graph compatible).

#include <cstdint>
#include <string>

#include "hip_compat.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace fumjax {
namespace {

__device__ __forceinline__ float Div(float a, float b) { return __fdiv_rn(a, b); }
__device__ __forceinline__ float Mul(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ float Add(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ float Sub(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ double Div(double a, double b) { return __ddiv_rn(a, b); }
__device__ __forceinline__ double Mul(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ double Add(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ double Sub(double a, double b) { return __dsub_rn(a, b); }

template <typename T>
__global__ void LifStepKernel(int64_t n, const T* __restrict__ v, const T* __restrict__ i,
                              const T* __restrict__ tau, const T* __restrict__ v_th,
                              const int32_t* __restrict__ refrac, T v_rest, T v_reset, T dt,
                              int32_t refractory_steps, T* __restrict__ v_out,
                              uint8_t* __restrict__ spikes, int32_t* __restrict__ refrac_out) {
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < n; k += stride) {
    const T vk = v[k];
    const T ratio = Div(dt, tau[k]);
    const T drive = Mul(ratio, Sub(v_rest, vk));
    T vn = Add(Add(vk, drive), i[k]);
    const int32_t r = refrac[k];
    const bool refractory = r > 0;
    vn = refractory ? v_reset : vn;
    const bool spiked = (vn >= v_th[k]) & !refractory;
    vn = spiked ? v_reset : vn;
    v_out[k] = vn;
    spikes[k] = static_cast<uint8_t>(spiked);
    const int32_t dec = static_cast<int32_t>(static_cast<uint32_t>(r) - 1u);
    const int32_t held = dec > 0 ? dec : 0;
    refrac_out[k] = spiked ? refractory_steps : held;
  }
}

constexpr int kBlock = 256;
constexpr int64_t kMaxGrid = 65535;

template <typename T>
ffi::Error LifStepTyped(hipStream_t stream, ffi::AnyBuffer v, ffi::AnyBuffer i, ffi::AnyBuffer tau,
                        ffi::AnyBuffer v_th, ffi::AnyBuffer refrac, double v_rest, double v_reset,
                        double dt, int32_t refractory_steps, ffi::Result<ffi::AnyBuffer> v_out,
                        ffi::Result<ffi::AnyBuffer> spikes, ffi::Result<ffi::AnyBuffer> refrac_out) {
  const int64_t n = static_cast<int64_t>(v.element_count());
  if (n == 0) return ffi::Error::Success();
  int64_t grid = (n + kBlock - 1) / kBlock;
  if (grid > kMaxGrid) grid = kMaxGrid;
  LifStepKernel<T><<<static_cast<unsigned>(grid), kBlock, 0, stream>>>(
      n, v.typed_data<T>(), i.typed_data<T>(), tau.typed_data<T>(), v_th.typed_data<T>(),
      refrac.typed_data<int32_t>(), static_cast<T>(v_rest), static_cast<T>(v_reset), static_cast<T>(dt),
      refractory_steps, v_out->typed_data<T>(), spikes->typed_data<uint8_t>(),
      refrac_out->typed_data<int32_t>());
  const hipError_t err = hipGetLastError();
  if (err != hipSuccess) {
    return ffi::Error::Internal(std::string("fumjax_lif_step: kernel launch failed: ") +
                                hipGetErrorString(err));
  }
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

ffi::Error LifStepDispatch(hipStream_t stream, ffi::AnyBuffer v, ffi::AnyBuffer i, ffi::AnyBuffer tau,
                           ffi::AnyBuffer v_th, ffi::AnyBuffer refrac, double v_rest, double v_reset,
                           double dt, int32_t refractory_steps, ffi::Result<ffi::AnyBuffer> v_out,
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
    return LifStepTyped<float>(stream, v, i, tau, v_th, refrac, v_rest, v_reset, dt, refractory_steps, v_out,
                               spikes, refrac_out);
  }
  return LifStepTyped<double>(stream, v, i, tau, v_th, refrac, v_rest, v_reset, dt, refractory_steps, v_out,
                              spikes, refrac_out);
}

}  // namespace
}  // namespace fumjax

XLA_FFI_DEFINE_HANDLER_SYMBOL(FumjaxLifStepGpu, fumjax::LifStepDispatch,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<hipStream_t>>()
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
                                  .Ret<ffi::AnyBuffer>(),  // refrac_left
                              {xla::ffi::Traits::kCmdBufferCompatible});
