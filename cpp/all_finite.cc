// XLA FFI CPU handler `fumjax_all_finite`: for each operand (a floating array of any shape: float16, bfloat16,
// float32 or float64), whether every element is finite, as one uint8 per operand (1 finite, 0 a NaN or an
// Inf somewhere). The public API's input check (dynamics._check_all_finite) scans the state and the input
// with it on the CPU: one branch-free pass over each array's bits (an exponent of all ones is a NaN or an
// Inf), where XLA's per-array reductions ran at ~8 GB/s (bench/RESULTS.md).
//
// Layers: AllFiniteBits (pure) -> AllFiniteDispatch (dtype checks, returns ffi::Error, never throws) ->
// XLA_FFI_DEFINE_HANDLER_SYMBOL.

#include <cstdint>
#include <string>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace fumjax {
namespace {

// Whether no element of the n values at p has all the bits of exp_mask set (the exponent field).
template <typename U>
bool AllFiniteBits(const U* p, int64_t n, U exp_mask) {
  U bad = 0;  // OR of per-element flags: no early exit, so the loop vectorizes
  for (int64_t k = 0; k < n; ++k) bad |= static_cast<U>((p[k] & exp_mask) == exp_mask);
  return bad == 0;
}

ffi::Error AllFiniteDispatch(ffi::RemainingArgs args, ffi::Result<ffi::AnyBuffer> flags) {
  if (flags->element_type() != ffi::DataType::U8 || flags->element_count() != args.size()) {
    return ffi::Error::InvalidArgument("fumjax_all_finite: the result must be uint8 with one entry per operand");
  }
  uint8_t* out = flags->typed_data<uint8_t>();
  for (size_t q = 0; q < args.size(); ++q) {
    ffi::ErrorOr<ffi::AnyBuffer> arg = args.get<ffi::AnyBuffer>(q);
    if (!arg.has_value()) return arg.error();
    const ffi::AnyBuffer& x = arg.value();
    const int64_t n = static_cast<int64_t>(x.element_count());
    bool ok;
    switch (x.element_type()) {
      case ffi::DataType::F16:
        ok = AllFiniteBits(static_cast<const uint16_t*>(x.untyped_data()), n, uint16_t{0x7C00});
        break;
      case ffi::DataType::BF16:
        ok = AllFiniteBits(static_cast<const uint16_t*>(x.untyped_data()), n, uint16_t{0x7F80});
        break;
      case ffi::DataType::F32:
        ok = AllFiniteBits(static_cast<const uint32_t*>(x.untyped_data()), n, uint32_t{0x7F800000u});
        break;
      case ffi::DataType::F64:
        ok = AllFiniteBits(static_cast<const uint64_t*>(x.untyped_data()), n, uint64_t{0x7FF0000000000000ull});
        break;
      default:
        return ffi::Error::InvalidArgument("fumjax_all_finite: operand " + std::to_string(q) +
                                           " is not float16, bfloat16, float32 or float64");
    }
    out[q] = static_cast<uint8_t>(ok);
  }
  return ffi::Error::Success();
}

}  // namespace
}  // namespace fumjax

XLA_FFI_DEFINE_HANDLER_SYMBOL(FumjaxAllFiniteCpu, fumjax::AllFiniteDispatch,
                              ffi::Ffi::Bind()
                                  .RemainingArgs()          // the arrays to scan
                                  .Ret<ffi::AnyBuffer>());  // (k,) uint8
