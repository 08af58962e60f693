// PerThread<Slot> gives every thread its own Slot of one owner object (a
// domain's statistics, a reclaimer's reader state), so that hot paths update
// state no other thread writes: plain loads and stores, no atomic
// read-modify-write, no shared cache line. The owner visits all slots to sum
// or scan them.
//
//   struct alignas(64) Hits { std::atomic<int64_t> hits{0}; };
//   PerThread<Hits> hits;                          // a member of the owner
//   AddOwned(hits.Local().hits, 1);                // this thread's slot
//   int64_t total = 0;
//   hits.ForEach([&](const Hits& slot) { total += slot.hits.load(); });
//
// Local() costs one thread-local load and a compare while a thread keeps
// using the same owner (one cached binding per Slot type); switching owners
// searches the thread's short list of bindings. A slot outlives its thread:
// when the thread exits, the slot is handed to the next thread that binds to
// the owner, with its contents (so counts are never lost). Slots are freed
// with the owner, so their number is the most threads that used it at once. Bindings name owners by
// the address of their registry, which weak references keep from being reused while any binding
// names it.
//
// Thread-safety: thread-safe. A thread writes only its own slot (Local());
// ForEach may run on any thread, concurrently with those writes, so Slot's
// members must be atomics.
#ifndef IOMMU_BROKER_CORE_UTIL_PER_THREAD_H_
#define IOMMU_BROKER_CORE_UTIL_PER_THREAD_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "absl/base/attributes.h"
#include "absl/base/optimization.h"

namespace iommu_broker {

// Adds `delta` to an atomic that only the calling thread writes: a load and
// a store, no read-modify-write. Always inlined: it is two instructions, and
// link-time optimization had made it a call.
ABSL_ATTRIBUTE_ALWAYS_INLINE inline void AddOwned(std::atomic<int64_t>& value, int64_t delta) {
  value.store(value.load(std::memory_order_relaxed) + delta, std::memory_order_relaxed);
}

namespace per_thread_internal {

// What a thread's bindings know of an owner's registry.
class Registry {
 public:
  virtual ~Registry() = default;
  // The thread owning `entry` exits: the entry is free for the next thread.
  virtual void Release(void* entry) = 0;
};

// One thread's bindings, for every PerThread it has used. On thread exit,
// the slots of owners still alive are released.
class ThreadBindings final {
 public:
  struct Binding {
    std::weak_ptr<Registry> owner;
    const Registry* registry;
    const void* type;  // which PerThread<Slot> instantiation bound it
    void* entry;
  };

  ~ThreadBindings() {
    for (const Binding& binding : bindings_) {
      if (std::shared_ptr<Registry> owner = binding.owner.lock()) owner->Release(binding.entry);
    }
  }
  std::vector<Binding>& bindings() { return bindings_; }

 private:
  std::vector<Binding> bindings_;
};

inline thread_local ThreadBindings thread_bindings;

}  // namespace per_thread_internal

template <typename Slot>
class PerThread final {
 public:
  PerThread() : registry_(std::make_shared<Registry>()) {}
  PerThread(const PerThread&) = delete;
  PerThread& operator=(const PerThread&) = delete;

  // The calling thread's slot, bound on first use. Always inlined, with the
  // binding out of line: link-time optimization otherwise inlines the
  // binding into callers and then leaves them out of line.
  ABSL_ATTRIBUTE_ALWAYS_INLINE Slot& Local() {
    if (ABSL_PREDICT_TRUE(last_.registry == registry_.get())) return last_.entry->slot;
    return Bind();
  }

  // Calls visit(const Slot&) for every slot (of live threads and of exited
  // ones, whose contents stay). Lock-free: a walk of a list that only grows.
  template <typename Visit>
  void ForEach(Visit visit) const {
    ForEachEntry([&](Entry& entry) { visit(std::as_const(entry.slot)); });
  }
  // The same with mutable slots, for owners whose Slot synchronizes the
  // visit with its thread in its own way (a lock, a gate).
  template <typename Visit>
  void ForEach(Visit visit) {
    ForEachEntry([&](Entry& entry) { visit(entry.slot); });
  }

 private:
  struct Entry {
    Slot slot;
    Entry* next = nullptr;  // constant once published
    // Whether no thread owns it: set by the exiting owner, cleared by the
    // thread that takes it over.
    std::atomic<bool> free{false};
  };
  struct Registry final : per_thread_internal::Registry {
    ~Registry() override {
      for (Entry* entry = head.load(std::memory_order_acquire); entry != nullptr;) {
        std::unique_ptr<Entry> owned(entry);
        entry = entry->next;
      }
    }
    void Release(void* entry) override {
      // Release: the next owner sees everything this thread wrote to it.
      static_cast<Entry*>(entry)->free.store(true, std::memory_order_release);
    }
    std::atomic<Entry*> head{nullptr};
  };
  struct LastBinding {
    const Registry* registry;
    Entry* entry;
  };

  template <typename Visit>
  void ForEachEntry(Visit visit) const {
    for (Entry* entry = registry_->head.load(std::memory_order_acquire); entry != nullptr;
         entry = entry->next) {
      visit(*entry);
    }
  }

  // Takes over a slot an exited thread left, or adds one.
  Entry* Acquire() {
    for (Entry* entry = registry_->head.load(std::memory_order_acquire); entry != nullptr;
         entry = entry->next) {
      bool free = true;
      if (entry->free.load(std::memory_order_relaxed) &&
          entry->free.compare_exchange_strong(free, false, std::memory_order_acquire)) {
        return entry;
      }
    }
    auto fresh = std::make_unique<Entry>();
    fresh->next = registry_->head.load(std::memory_order_relaxed);
    while (!registry_->head.compare_exchange_weak(
        fresh->next, fresh.get(), std::memory_order_release, std::memory_order_relaxed)) {
    }
    return fresh.release();  // now owned by the registry
  }

  ABSL_ATTRIBUTE_NOINLINE Slot& Bind() {
    using per_thread_internal::ThreadBindings;
    std::vector<ThreadBindings::Binding>& bindings =
        per_thread_internal::thread_bindings.bindings();
    // Forget this type's bindings of owners that are gone; the cache, which
    // may name one, is overwritten below.
    bindings.erase(std::remove_if(bindings.begin(), bindings.end(),
                                  [](const ThreadBindings::Binding& binding) {
                                    return binding.type == &last_ && binding.owner.expired();
                                  }),
                   bindings.end());
    Entry* entry = nullptr;
    for (const ThreadBindings::Binding& binding : bindings) {
      if (binding.registry == registry_.get()) entry = static_cast<Entry*>(binding.entry);
    }
    if (entry == nullptr) {
      entry = Acquire();
      bindings.push_back({registry_, registry_.get(), &last_, entry});
    }
    last_ = {registry_.get(), entry};
    return entry->slot;
  }

  static inline constinit thread_local LastBinding last_{};

  const std::shared_ptr<Registry> registry_;
};

}  // namespace iommu_broker

#endif  // IOMMU_BROKER_CORE_UTIL_PER_THREAD_H_
