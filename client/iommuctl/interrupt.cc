#include "client/iommuctl/interrupt.h"

#include <pthread.h>

#include <utility>

namespace iommu_broker::iommuctl {
namespace {

sigset_t InterruptSignals() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  return signals;
}

}  // namespace

InterruptsBlocked::InterruptsBlocked() {
  const sigset_t signals = InterruptSignals();
  pthread_sigmask(SIG_BLOCK, &signals, &previous_);
}

// A signal still pending (a second Ctrl-C) now takes its default action.
InterruptsBlocked::~InterruptsBlocked() { pthread_sigmask(SIG_SETMASK, &previous_, nullptr); }

InterruptHandler::InterruptHandler(absl::AnyInvocable<void()> on_interrupt)
    : on_interrupt_(std::move(on_interrupt)), thread_([this] { Run(); }) {}

InterruptHandler::~InterruptHandler() {
  stopping_.store(true, std::memory_order_release);
  // Wakes the thread's sigwait; directed at it, so no other thread sees it.
  pthread_kill(thread_.native_handle(), SIGTERM);
  thread_.join();
}

void InterruptHandler::Run() {
  const sigset_t signals = InterruptSignals();
  int signal_number = 0;
  sigwait(&signals, &signal_number);
  if (stopping_.load(std::memory_order_acquire)) return;
  fired_.store(true, std::memory_order_release);
  on_interrupt_();
}

}  // namespace iommu_broker::iommuctl
