// Ctrl-C for a command that blocks in a stream read: instead of SIGINT or
// SIGTERM killing the process, a callback runs (say, cancelling the stream)
// and the command ends normally, with its exit code.
//
//   InterruptsBlocked blocked;           // first: before gRPC starts threads
//   ... connect, open the stream ...
//   InterruptHandler on_interrupt([&stream] { stream->Cancel(); });
//   while (stream->Next(&event)) ...
//
// A signal that arrives between the two is held and handled as soon as the
// handler starts. Signals are taken with sigwait on the handler's own
// thread, never by an asynchronous signal handler.
//
// Thread-safety: create and destroy both on one thread; fired() may be read
// from any thread.
#ifndef IOMMU_BROKER_CLIENT_IOMMUCTL_INTERRUPT_H_
#define IOMMU_BROKER_CLIENT_IOMMUCTL_INTERRUPT_H_

#include <signal.h>

#include <atomic>
#include <thread>

#include "absl/functional/any_invocable.h"

namespace iommu_broker::iommuctl {

// Blocks SIGINT and SIGTERM in the calling thread, and so in every thread it
// starts, until destroyed.
class InterruptsBlocked final {
 public:
  InterruptsBlocked();
  ~InterruptsBlocked();
  InterruptsBlocked(const InterruptsBlocked&) = delete;
  InterruptsBlocked& operator=(const InterruptsBlocked&) = delete;

 private:
  sigset_t previous_;
};

// Runs `on_interrupt` once, on its own thread, at the first SIGINT or
// SIGTERM. Needs an InterruptsBlocked alive; stops its thread when destroyed.
class InterruptHandler final {
 public:
  explicit InterruptHandler(absl::AnyInvocable<void()> on_interrupt);
  ~InterruptHandler();
  InterruptHandler(const InterruptHandler&) = delete;
  InterruptHandler& operator=(const InterruptHandler&) = delete;

  // Whether a signal came (and on_interrupt ran or is running).
  bool fired() const { return fired_.load(std::memory_order_acquire); }

 private:
  void Run();

  absl::AnyInvocable<void()> on_interrupt_;
  std::atomic<bool> stopping_{false};
  std::atomic<bool> fired_{false};
  std::thread thread_;  // last: starts once the rest is initialized
};

}  // namespace iommu_broker::iommuctl

#endif  // IOMMU_BROKER_CLIENT_IOMMUCTL_INTERRUPT_H_
