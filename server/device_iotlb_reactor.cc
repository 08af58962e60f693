#include "server/device_iotlb_reactor.h"

#include <cstddef>
#include <memory>
#include <mutex>
#include <optional>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "server/convert.h"
#include "server/status.h"

namespace iommu_broker {
namespace {

// Invalidations per message when they pile up: bounds the message size
// while still amortizing a write over many.
constexpr int kMaxInvalidationsPerMessage = 256;

}  // namespace

DeviceIotlbReactor::DeviceIotlbReactor(Iommu& iommu, size_t queue_capacity, Caller caller,
                                       absl::AnyInvocable<void(StoppableStream*)> on_done)
    : iommu_(iommu),
      queue_capacity_(queue_capacity),
      caller_(std::move(caller)),
      on_done_(std::move(on_done)) {
  StartRead(&request_);
}

void DeviceIotlbReactor::Stop() {
  std::lock_guard<std::mutex> lock(mutex_);
  FinishWhenIdleLocked(grpc::Status::OK);
}

void DeviceIotlbReactor::OnReadDone(bool ok) {
  if (!ok) {  // the cache closed its side (or the call ended)
    std::lock_guard<std::mutex> lock(mutex_);
    FinishWhenIdleLocked(grpc::Status::OK);
    return;
  }
  bool linked;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    linked = port_ != nullptr;
  }
  switch (request_.message_case()) {
    case v1::DeviceIotlbRequest::kLink:
      if (linked) break;
      Link();
      return;
    case v1::DeviceIotlbRequest::kAcknowledgedSequence:
      if (!linked) break;
      Acknowledge(request_.acknowledged_sequence());
      return;
    case v1::DeviceIotlbRequest::MESSAGE_NOT_SET:
      break;
  }
  std::lock_guard<std::mutex> lock(mutex_);
  FinishWhenIdleLocked(grpc::Status(
      grpc::StatusCode::INVALID_ARGUMENT,
      linked ? "after the first message, send only acknowledged_sequence"
             : "the first message must be link, naming the device"));
}

void DeviceIotlbReactor::Link() {
  const std::string& device_id = request_.link().device_id();
  absl::Status permitted = caller_.PermitDevice(device_id);
  absl::StatusOr<std::shared_ptr<DeviceTlbPort>> port =
      device_id.empty() ? absl::InvalidArgumentError("link.device_id is empty")
      : !permitted.ok() ? permitted
                        : iommu_.LinkDeviceTlb(device_id, queue_capacity_);
  if (!port.ok()) {
    std::lock_guard<std::mutex> lock(mutex_);
    FinishWhenIdleLocked(ToGrpcStatus(port.status()));
    return;
  }
  // Outside mutex_: the port's callback lock comes first.
  (*port)->SetReadyCallback([this] {
    std::lock_guard<std::mutex> lock(mutex_);
    WriteNextLocked();
  });
  {
    std::lock_guard<std::mutex> lock(mutex_);
    port_ = *std::move(port);
    confirm_link_ = true;
    WriteNextLocked();
  }
  StartRead(&request_);
}

void DeviceIotlbReactor::Acknowledge(uint64_t sequence) {
  std::shared_ptr<DeviceTlbPort> port;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    port = port_;
  }
  // Outside mutex_: releasing waits runs the unmaps' completions.
  if (absl::Status status = port->Acknowledge(sequence); !status.ok()) {
    std::lock_guard<std::mutex> lock(mutex_);
    FinishWhenIdleLocked(ToGrpcStatus(status));
    return;
  }
  StartRead(&request_);
}

void DeviceIotlbReactor::WriteNextLocked() {
  if (writing_ || finished_) return;
  if (finish_with_.has_value()) {
    finished_ = true;
    Finish(*finish_with_);
    return;
  }
  if (port_ == nullptr) return;
  message_.Clear();
  while (message_.invalidations_size() < kMaxInvalidationsPerMessage) {
    std::optional<DeviceTlbInvalidation> next = port_->Next();
    if (!next.has_value()) break;
    v1::DeviceIotlbInvalidation* out = message_.add_invalidations();
    out->set_sequence(next->sequence);
    InvalidationToProto(next->event, out->mutable_invalidation());
    out->set_flush_pending(next->event.flush_pending);
  }
  // The first message goes out even if empty: it tells the cache it is
  // linked, so invalidations from then on reach it.
  if (message_.invalidations_size() > 0 || confirm_link_) {
    confirm_link_ = false;
    writing_ = true;
    StartWrite(&message_);
    return;
  }
  if (absl::Status status = port_->status(); !status.ok()) FinishWhenIdleLocked(ToGrpcStatus(status));
}

void DeviceIotlbReactor::FinishWhenIdleLocked(const grpc::Status& status) {
  if (!finish_with_.has_value()) finish_with_ = status;
  if (!writing_) WriteNextLocked();
}

void DeviceIotlbReactor::OnWriteDone(bool ok) {
  std::lock_guard<std::mutex> lock(mutex_);
  writing_ = false;
  if (!ok) FinishWhenIdleLocked(grpc::Status(grpc::StatusCode::CANCELLED, "the stream was cancelled"));
  WriteNextLocked();
}

void DeviceIotlbReactor::OnCancel() {
  std::lock_guard<std::mutex> lock(mutex_);
  FinishWhenIdleLocked(grpc::Status::CANCELLED);
}

void DeviceIotlbReactor::OnDone() {
  std::shared_ptr<DeviceTlbPort> port;
  {
    // Also waits for the thread that called Finish to let go of mutex_.
    std::lock_guard<std::mutex> lock(mutex_);
    port = std::move(port_);
  }
  // Close waits for a ready callback in flight, so none can touch `this`
  // later, and releases the unmaps waiting on this cache.
  if (port != nullptr) port->Close();
  on_done_(this);
  delete this;
}

}  // namespace iommu_broker
