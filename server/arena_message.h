// ArenaMessage<Message> is one protobuf message on an arena whose first block
// it owns, for a stream that fills a message per read or write and then drops
// it. Clearing a reused message frees every sub-message of a oneof one by one
// (a Batch message's 256 operations: 256 frees, and 256 mallocs to refill);
// Renew() instead drops the old message and everything it allocated at once
// and hands out a fresh one, and while a message fits the block nothing is
// malloc'ed at all. A larger message spills into blocks freed by the next
// Renew(), so memory stays bounded by the largest message the stream allows.
//
//   ArenaMessage<v1::BatchResponse> response(kBlockBytes);
//   v1::BatchResponse& next = response.Renew();   // the previous one is gone
//   ... fill next ...; StartWrite(&next);
//
// Thread-safety: not thread-safe; one reaction at a time uses it.
#ifndef IOMMU_BROKER_SERVER_ARENA_MESSAGE_H_
#define IOMMU_BROKER_SERVER_ARENA_MESSAGE_H_

#include <cstddef>
#include <memory>

#include "google/protobuf/arena.h"

namespace iommu_broker {

template <typename Message>
class ArenaMessage final {
 public:
  explicit ArenaMessage(size_t block_bytes)
      : block_(std::make_unique_for_overwrite<char[]>(block_bytes)),
        arena_(block_.get(), block_bytes),
        message_(NewMessage()) {}
  ArenaMessage(const ArenaMessage&) = delete;
  ArenaMessage& operator=(const ArenaMessage&) = delete;

  // Ends the current message (references to it dangle) and returns an empty one.
  Message& Renew() {
    arena_.Reset();
    message_ = NewMessage();
    return *message_;
  }

  Message& operator*() const { return *message_; }
  Message* operator->() const { return message_; }
  Message* get() const { return message_; }

 private:
  Message* NewMessage() { return google::protobuf::Arena::CreateMessage<Message>(&arena_); }

  // Declared before the arena, which allocates from it until destroyed.
  std::unique_ptr<char[]> block_;
  google::protobuf::Arena arena_;
  Message* message_;  // owned by arena_
};

}  // namespace iommu_broker

#endif  // IOMMU_BROKER_SERVER_ARENA_MESSAGE_H_
