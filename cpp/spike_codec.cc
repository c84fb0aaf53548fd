// The MPI exchange's spike messages (format: spike_codec.h) in C++: nanobind functions for the exchange
// callback (encode_spikes / decode_spikes: numpy's nonzero and fancy indexing on a cache-cold (n_p,) block
// cost ~80 us there), and the XLA FFI handler `fumjax_spike_message` that encodes inside the jitted step, so
// the callback gets the message ready (the block is still in cache, and no Python touches it).

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include "spike_codec.h"
#include "xla/ffi/api/ffi.h"

namespace nb = nanobind;
namespace ffi = xla::ffi;

namespace fumjax {

// FFI operand types (aliases: a comma inside the handler macro's arguments would split them)
using Ids = ffi::Buffer<ffi::S32, 1>;
using Step = ffi::Buffer<ffi::S32, 0>;
using MessageBuffer = ffi::Buffer<ffi::U8, 1>;
using MessageOut = ffi::ResultBuffer<ffi::U8, 1>;

namespace {

using Block = nb::ndarray<const uint8_t, nb::c_contig, nb::device::cpu>;
using Members = nb::ndarray<const int32_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using Message = nb::ndarray<const uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using Out = nb::ndarray<uint8_t, nb::c_contig, nb::device::cpu>;
using Bytes = nb::ndarray<nb::numpy, uint8_t, nb::ndim<1>>;

// (n_p,) or (k, n_p) 0/1 spikes of steps step.. of the part with `members` -> the message bytes.
Bytes EncodeSpikes(Block block, Members members, int32_t step, int64_t n_total) {
  if (block.ndim() != 1 && block.ndim() != 2) throw std::invalid_argument("spikes: need (n_p,) or (k, n_p)");
  const int64_t n_p = static_cast<int64_t>(block.shape(block.ndim() - 1));
  const int64_t k = block.ndim() == 2 ? static_cast<int64_t>(block.shape(0)) : 1;
  if (static_cast<int64_t>(members.shape(0)) != n_p)
    throw std::invalid_argument("members has " + std::to_string(members.shape(0)) + " ids for " +
                                std::to_string(n_p) + " spike columns");
  auto* buf = new uint8_t[MaxMessageBytes(k * n_p)];
  nb::capsule owner(buf, [](void* p) noexcept { delete[] static_cast<uint8_t*>(p); });
  const int64_t len = EncodeSpikesInto(block.data(), k, n_p, members.data(), step, n_total, buf);
  return Bytes(buf, {static_cast<size_t>(len)}, owner);
}

// Set the spikes of one message from the part with `members` in spikes_pre ((N,) or (k, N)); a bit-packed
// message writes the part's columns whole. Returns the message's step.
int32_t DecodeSpikes(Message msg, Members members, Out spikes_pre) {
  const int64_t len = static_cast<int64_t>(msg.shape(0));
  if (len < 8) throw std::invalid_argument("spike message of " + std::to_string(len) + " bytes: no header");
  if (spikes_pre.ndim() != 1 && spikes_pre.ndim() != 2)
    throw std::invalid_argument("spikes_pre: need (N,) or (k, N)");
  int32_t head[2];
  std::memcpy(head, msg.data(), 8);
  const uint8_t* body = msg.data() + 8;
  uint8_t* flat = spikes_pre.data();
  const int64_t n = static_cast<int64_t>(spikes_pre.shape(spikes_pre.ndim() - 1));
  const int64_t k = spikes_pre.ndim() == 2 ? static_cast<int64_t>(spikes_pre.shape(0)) : 1;
  const int64_t size = k * n, n_p = static_cast<int64_t>(members.shape(0));
  const int32_t* m = members.data();
  if (head[1] == kSpikeEvents) {
    if ((len - 8) % 4) throw std::invalid_argument("event message: body not a whole number of int32");
    const int64_t count = (len - 8) / 4;
    for (int64_t q = 0; q < count; ++q) {
      int32_t id;
      std::memcpy(&id, body + 4 * q, 4);
      if (id < 0 || id >= size)
        throw std::out_of_range("spike event " + std::to_string(id) + " outside [0, " + std::to_string(size) + ")");
      flat[id] = 1;
    }
    return head[0];
  }
  if (head[1] != kSpikeBitmask) throw std::invalid_argument("spike message kind " + std::to_string(head[1]));
  if (len - 8 != (k * n_p + 7) / 8)
    throw std::invalid_argument("bit-packed message of " + std::to_string(len - 8) + " bytes for " +
                                std::to_string(k) + " x " + std::to_string(n_p) + " spikes");
  for (int64_t c = 0; c < n_p; ++c)
    if (m[c] < 0 || m[c] >= n)
      throw std::out_of_range("member id " + std::to_string(m[c]) + " outside [0, " + std::to_string(n) + ")");
  for (int64_t r = 0; r < k; ++r)
    for (int64_t c = 0; c < n_p; ++c) {
      const int64_t i = r * n_p + c;
      flat[r * n + m[c]] = (body[i >> 3] >> (7 - (i & 7))) & 1;
    }
  return head[0];
}

// FFI: out (4 + MaxMessageBytes(k * n_p),) uint8 = int32 message length, then the message of `spikes`.
ffi::Error SpikeMessage(ffi::Buffer<ffi::U8> spikes, Ids members, Step step, int64_t n_total, MessageOut out) {
  auto dims = spikes.dimensions();
  if (dims.size() != 1 && dims.size() != 2)
    return ffi::Error::InvalidArgument("fumjax_spike_message: spikes must be (n_p,) or (k, n_p)");
  const int64_t n_p = dims.back(), k = dims.size() == 2 ? dims[0] : 1;
  if (members.dimensions()[0] != n_p)
    return ffi::Error::InvalidArgument("fumjax_spike_message: members must have one id per spike column");
  if (out->dimensions()[0] != 4 + MaxMessageBytes(k * n_p))
    return ffi::Error::InvalidArgument("fumjax_spike_message: out must hold 4 + MaxMessageBytes(k * n_p) bytes");
  uint8_t* o = out->typed_data();
  const int32_t len = static_cast<int32_t>(
      EncodeSpikesInto(spikes.typed_data(), k, n_p, members.typed_data(), step.typed_data()[0], n_total, o + 4));
  std::memcpy(o, &len, 4);
  return ffi::Error::Success();
}

}  // namespace

void RegisterSpikeCodec(nb::module_& m) {
  m.def("encode_spikes", &EncodeSpikes, nb::arg("spikes"), nb::arg("members"), nb::arg("step"),
        nb::arg("n_total"), "A part's spike message (see mpi_runner.encode_spikes).");
  m.def("decode_spikes", &DecodeSpikes, nb::arg("msg"), nb::arg("members"), nb::arg("spikes_pre").noconvert(),
        "Set one message's spikes in spikes_pre; returns its step (see mpi_runner.decode_spikes).");
}

}  // namespace fumjax

XLA_FFI_DEFINE_HANDLER_SYMBOL(FumjaxSpikeMessageCpu, fumjax::SpikeMessage,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::U8>>()  // spikes (n_p,) or (k, n_p)
                                  .Arg<fumjax::Ids>()           // members (n_p,)
                                  .Arg<fumjax::Step>()          // step
                                  .Attr<int64_t>("n_total")
                                  .Ret<fumjax::MessageBuffer>());  // length, message
