#include "server/watch_reactor.h"

#include <optional>
#include <utility>

#include "server/convert.h"

namespace iommu_broker {

WatchReactor::WatchReactor(std::shared_ptr<FaultSubscription> faults,
                           std::shared_ptr<Invalidations> invalidations,
                           std::string domain_filter, std::string device_filter,
                           std::string device_domain,
                           absl::AnyInvocable<void(StoppableStream*)> on_done)
    : faults_(std::move(faults)),
      invalidations_(std::move(invalidations)),
      domain_filter_(std::move(domain_filter)),
      device_filter_(std::move(device_filter)),
      on_done_(std::move(on_done)),
      device_domain_(std::move(device_domain)) {}

void WatchReactor::Start() {
  // Headers go out at once, so a client knows it is subscribed before the
  // first event (tests and `iommuctl events` rely on it).
  StartSendInitialMetadata();
  const auto on_ready = [this] {
    std::lock_guard<std::mutex> lock(mutex_);
    WriteNextLocked();
  };
  if (faults_ != nullptr) faults_->SetReadyCallback(on_ready);
  if (invalidations_ != nullptr) invalidations_->SetReadyCallback(on_ready);
  std::lock_guard<std::mutex> lock(mutex_);
  WriteNextLocked();
}

void WatchReactor::Stop() {
  std::lock_guard<std::mutex> lock(mutex_);
  stopping_ = true;
  if (!writing_) FinishLocked(grpc::Status::OK);
}

bool WatchReactor::TakeFaultLocked() {
  if (faults_ == nullptr) return false;
  while (std::optional<Fault> fault = faults_->Next(absl::ZeroDuration())) {
    if (!device_filter_.empty() && fault->device_id != device_filter_) continue;
    event_.Clear();
    FaultToProto(*fault, event_.mutable_fault());
    const uint64_t dropped = faults_->dropped();
    event_.set_dropped_before(dropped - reported_fault_drops_);
    reported_fault_drops_ = dropped;
    return true;
  }
  return false;
}

bool WatchReactor::TakeInvalidationLocked() {
  if (invalidations_ == nullptr) return false;
  while (std::optional<InvalidationEvent> invalidation =
             invalidations_->Next(absl::ZeroDuration())) {
    if (!WantedLocked(*invalidation)) continue;
    event_.Clear();
    InvalidationToProto(*invalidation, event_.mutable_invalidation());
    const uint64_t dropped = invalidations_->dropped();
    event_.set_dropped_before(dropped - reported_invalidation_drops_);
    reported_invalidation_drops_ = dropped;
    return true;
  }
  return false;
}

bool WatchReactor::WantedLocked(const InvalidationEvent& invalidation) {
  const bool device_event = invalidation.scope == InvalidationScope::kRequester;
  if (!device_filter_.empty() && device_event && invalidation.device_id == device_filter_) {
    // Attach and move end with the event for the device's new domain.
    device_domain_ = invalidation.domain_id;
  }
  if (!domain_filter_.empty() && invalidation.domain_id != domain_filter_) return false;
  if (device_filter_.empty()) return true;
  if (device_event) return invalidation.device_id == device_filter_;
  // Range and domain invalidations concern every device of their domain.
  return invalidation.domain_id == device_domain_;
}

void WatchReactor::WriteNextLocked() {
  if (writing_ || finished_) return;
  if (stopping_) {
    FinishLocked(grpc::Status::OK);
    return;
  }
  if (TakeInvalidationLocked() || TakeFaultLocked()) {
    writing_ = true;
    StartWrite(&event_);
  }
}

void WatchReactor::OnWriteDone(bool ok) {
  std::lock_guard<std::mutex> lock(mutex_);
  writing_ = false;
  if (!ok) {
    FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "the stream was cancelled"));
    return;
  }
  WriteNextLocked();
}

void WatchReactor::OnCancel() {
  std::lock_guard<std::mutex> lock(mutex_);
  stopping_ = true;
  if (!writing_) FinishLocked(grpc::Status::CANCELLED);
}

void WatchReactor::FinishLocked(const grpc::Status& status) {
  if (finished_) return;
  finished_ = true;
  Finish(status);
}

void WatchReactor::OnDone() {
  // Close waits for a callback in flight, so none can touch `this` later;
  // taking mutex_ waits for the thread that called Finish to let go of it.
  if (faults_ != nullptr) faults_->Close();
  if (invalidations_ != nullptr) invalidations_->Close();
  { std::lock_guard<std::mutex> lock(mutex_); }
  on_done_(this);
  delete this;
}

}  // namespace iommu_broker
