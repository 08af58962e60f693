#include "core/iommu/device_tlb_port.h"

#include <memory>
#include <mutex>
#include <optional>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "absl/types/span.h"

namespace iommu_broker {

DeviceTlbPort::DeviceTlbPort(std::shared_ptr<Device> device, size_t capacity,
                             absl::Duration ack_timeout)
    : device_(std::move(device)), capacity_(std::max<size_t>(capacity, 1)), ack_timeout_(ack_timeout) {}

std::optional<DeviceTlbInvalidation> DeviceTlbPort::Next() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (unread_.empty()) return std::nullopt;
  DeviceTlbInvalidation next = std::move(unread_.front());
  unread_.pop_front();
  return next;
}

void DeviceTlbPort::SetReadyCallback(absl::AnyInvocable<void()> on_ready) {
  std::lock_guard<std::mutex> lock(callback_mutex_);
  on_ready_ = std::move(on_ready);
}

absl::Status DeviceTlbPort::Acknowledge(uint64_t sequence) {
  std::vector<Wait> released;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (sequence > sent_) {
      return absl::InvalidArgumentError(absl::StrCat("acknowledged sequence ", sequence,
                                                     " was never sent (last sent: ", sent_, ")"));
    }
    acknowledged_ = std::max(acknowledged_, sequence);
    while (!waits_.empty() && waits_.front().sequence <= acknowledged_) {
      released.push_back(std::move(waits_.front()));
      waits_.pop_front();
    }
  }
  Release(released);
  return absl::OkStatus();
}

absl::Status DeviceTlbPort::status() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return status_;
}

void DeviceTlbPort::Close() {
  {
    std::lock_guard<std::mutex> callback_lock(callback_mutex_);
    on_ready_ = nullptr;
  }
  std::vector<Wait> released;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (status_.ok()) released = UnlinkLocked(absl::CancelledError("the device IOTLB closed its link"));
  }
  Release(released);
}

bool DeviceTlbPort::Send(absl::Span<const InvalidationEvent> events,
                         const std::shared_ptr<Completion>& wait, absl::Time now) {
  std::vector<Wait> released;
  bool queued = false;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!status_.ok()) return false;
    if (unread_.size() + events.size() > capacity_) {
      // Dropping one would leave the cache serving what it missed.
      released = UnlinkLocked(absl::ResourceExhaustedError(
          absl::StrCat("device ", device_->id(), "'s IOTLB left ", unread_.size(),
                       " invalidations unread (capacity ", capacity_, "); relink it")));
    } else {
      for (const InvalidationEvent& event : events) unread_.push_back({++sent_, event});
      if (wait != nullptr) waits_.push_back({sent_, now + ack_timeout_, wait});
      queued = true;
    }
  }
  Release(released);
  NotifyReady();
  return queued;
}

void DeviceTlbPort::CutOffIfOverdue(absl::Time now) {
  std::vector<Wait> released;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!status_.ok() || waits_.empty() || waits_.front().deadline > now) return;
    released = UnlinkLocked(absl::DeadlineExceededError(absl::StrCat(
        "device ", device_->id(), "'s IOTLB did not acknowledge invalidation ",
        waits_.front().sequence, " within ", absl::FormatDuration(ack_timeout_), "; relink it")));
  }
  Release(released);
  NotifyReady();
}

std::vector<DeviceTlbPort::Wait> DeviceTlbPort::UnlinkLocked(absl::Status why) {
  status_ = std::move(why);
  unread_.clear();
  std::vector<Wait> released(std::make_move_iterator(waits_.begin()),
                             std::make_move_iterator(waits_.end()));
  waits_.clear();
  return released;
}

void DeviceTlbPort::Release(std::vector<Wait>& waits) {
  for (Wait& wait : waits) wait.completion->Arrive();
}

void DeviceTlbPort::NotifyReady() {
  std::lock_guard<std::mutex> lock(callback_mutex_);
  if (on_ready_) on_ready_();
}

}  // namespace iommu_broker
