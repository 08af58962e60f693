// Completion is a one-shot event that fires once a fixed number of parties
// have arrived. An unmap that must wait for device-side IOTLBs to
// acknowledge its invalidation returns one: each linked cache is a party,
// and so is the unmap itself until it has sent to all of them (so the
// completion cannot fire half-sent).
//
//   auto done = std::make_shared<Completion>(/*parties=*/2, [] { ...free IOVAs... });
//   done->OnDone([] { ...reply to the caller... });   // or done->Wait()
//   done->Arrive();  // party 1
//   done->Arrive();  // party 2: runs the action, then the OnDone callbacks
//
// Thread-safety: thread-safe. The action and the callbacks run on the thread
// of the last Arrive (or, for a callback added after completion, on the
// thread adding it), without any lock held.
#ifndef IOMMU_BROKER_CORE_IOMMU_COMPLETION_H_
#define IOMMU_BROKER_CORE_IOMMU_COMPLETION_H_

#include <condition_variable>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"

namespace iommu_broker {

class Completion final {
 public:
  // `action` (may be empty) runs first when the last party arrives.
  explicit Completion(int parties, absl::AnyInvocable<void()> action = nullptr)
      : remaining_(parties), action_(std::move(action)) {}
  Completion(const Completion&) = delete;
  Completion& operator=(const Completion&) = delete;

  // Counts one party; the last one fires the completion.
  void Arrive() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (remaining_ == 0 || --remaining_ > 0) return;
    }
    if (action_) action_();
    std::vector<absl::AnyInvocable<void()>> callbacks;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      fired_ = true;
      callbacks.swap(callbacks_);
      fired_changed_.notify_all();
    }
    for (absl::AnyInvocable<void()>& callback : callbacks) callback();
  }

  // Runs `callback` once the completion has fired (now, if it has).
  void OnDone(absl::AnyInvocable<void()> callback) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!fired_) {
        callbacks_.push_back(std::move(callback));
        return;
      }
    }
    callback();
  }

  void Wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    fired_changed_.wait(lock, [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) { return fired_; });
  }

  bool done() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return fired_;
  }

  // A completion that fires once every one of `completions` has (null if
  // there are none; the one itself if there is one).
  static std::shared_ptr<Completion> AllOf(std::vector<std::shared_ptr<Completion>> completions) {
    if (completions.size() <= 1) return completions.empty() ? nullptr : completions.front();
    auto all = std::make_shared<Completion>(static_cast<int>(completions.size()));
    for (const std::shared_ptr<Completion>& completion : completions) {
      completion->OnDone([all] { all->Arrive(); });
    }
    return all;
  }

 private:
  mutable std::mutex mutex_;
  std::condition_variable fired_changed_;
  int remaining_ ABSL_GUARDED_BY(mutex_);
  bool fired_ ABSL_GUARDED_BY(mutex_) = false;  // the action has run
  // Runs once, by the last arrival, outside the lock; constant until then.
  absl::AnyInvocable<void()> action_;
  std::vector<absl::AnyInvocable<void()>> callbacks_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace iommu_broker

#endif  // IOMMU_BROKER_CORE_IOMMU_COMPLETION_H_
