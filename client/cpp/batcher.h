// Batcher packs data-path operations submitted from any number of threads
// into the messages of one Batch stream, so that a driver gets the stream's
// throughput without writing stream code. Each operation completes on its
// own, through a future or a callback.
//
//   absl::StatusOr<std::unique_ptr<Batcher>> batcher = Batcher::Create(channel, {});
//   std::future<absl::StatusOr<v1::MapResponse>> map = (*batcher)->Map(request);
//   (*batcher)->Submit(operation, [](absl::StatusOr<v1::OperationResult> result) { ... });
//   absl::StatusOr<v1::MapResponse> mapped = map.get();
//
// Messages. A message is sent once max_operations_per_message operations are
// waiting, or once the oldest waiting one has waited max_delay (so a lone
// operation is never stranded), whichever comes first.
//
// Order. Operations run on the broker in the order Submit queued them (one
// thread's calls: in call order): the broker runs a message's operations in
// order, and one message after another. A Map and then an Unmap of its IOVA may therefore
// be submitted without waiting in between, as long as the Unmap knows the
// IOVA (a fixed-IOVA Map).
//
// Results. Each operation gets its own status (the broker's per-operation
// status, e.g. INVALID_ARGUMENT for one unaligned unmap) and, when OK, its
// reply. One failing operation fails alone.
//
// Backpressure. At most max_in_flight_messages messages are sent and not
// yet answered; behind them at most as many messages' worth of operations
// wait to be sent. Submit blocks while that queue is full. Submit from a
// callback never blocks (it may overfill the queue): the callback runs on a
// thread the queue is waiting for.
//
// Failure. When the stream fails (broker gone or draining, cancelled, a
// limit of the broker's), every operation submitted and not yet answered
// completes with the stream's status (UNAVAILABLE, CANCELLED,
// RESOURCE_EXHAUSTED, ...). The next Submit opens a new stream.
//
// Destruction sends what is queued, waits for every result, then closes the
// stream: every future is ready once the destructor returns. Operations
// submitted by callbacks after closing started fail with CANCELLED.
//
// Why the synchronous API with two threads (a writer, and a reader per
// stream) rather than a ClientBidiReactor: the time bound needs a thread
// that sleeps until a deadline anyway; a blocking Write is the flow control;
// reopening a stream is a loop rather than a chain of reactor lifetimes; and
// callbacks run on the Batcher's reader thread, never on gRPC's. Both
// threads block (condition variable, Read) while idle.
//
// Thread-safety: thread-safe. Callbacks run one at a time, on the reader
// thread (or on the writer thread when the stream fails), and should be
// short: the next message's results wait for them.
#ifndef IOMMU_BROKER_CLIENT_CPP_BATCHER_H_
#define IOMMU_BROKER_CLIENT_CPP_BATCHER_H_

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <future>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/channel.h"
#include "iommu_broker/v1/iommu_broker.grpc.pb.h"
#include "iommu_broker/v1/iommu_broker.pb.h"

namespace iommu_broker::client {

// The broker's default max_batch_operations: a larger message ends the
// stream with RESOURCE_EXHAUSTED.
inline constexpr int kMaxBatchOperations = 4096;

struct BatcherOptions {
  // Operations per message at most. 1-kMaxBatchOperations, and no more than
  // the broker's max_batch_operations if it was lowered.
  int max_operations_per_message = 256;
  // How long an operation may wait for a message to fill. Zero: send
  // whatever is waiting as soon as the writer is free. 0-1 s.
  absl::Duration max_delay = absl::Microseconds(100);
  // Messages sent and not yet answered at most (the pipeline's depth). 1-1024.
  int max_in_flight_messages = 4;
};

// INVALID_ARGUMENT naming the field and value if `options` is unusable.
absl::Status ValidateBatcherOptions(const BatcherOptions& options);

class Batcher final {
 public:
  // Called once with the operation's status and, when OK, its result.
  using Callback = absl::AnyInvocable<void(absl::StatusOr<v1::OperationResult>)>;

  // INVALID_ARGUMENT for bad options. The stream opens with the first
  // message: an unreachable broker shows up in the first results.
  static absl::StatusOr<std::unique_ptr<Batcher>> Create(std::shared_ptr<grpc::Channel> channel,
                                                         const BatcherOptions& options);

  // Use Create (the key keeps construction with unchecked options out).
  class ConstructionKey final {
    friend class Batcher;
    ConstructionKey() = default;
  };
  Batcher(ConstructionKey, std::shared_ptr<grpc::Channel> channel, const BatcherOptions& options);
  ~Batcher();
  Batcher(const Batcher&) = delete;
  Batcher& operator=(const Batcher&) = delete;

  void Submit(v1::Operation operation, Callback done);
  std::future<absl::StatusOr<v1::OperationResult>> Submit(v1::Operation operation);

  // Typed forms of Submit.
  std::future<absl::StatusOr<v1::MapResponse>> Map(v1::MapRequest request);
  std::future<absl::StatusOr<v1::UnmapResponse>> Unmap(v1::UnmapRequest request);
  std::future<absl::StatusOr<v1::TranslateResponse>> Translate(v1::TranslateRequest request);
  std::future<absl::StatusOr<v1::FlushResponse>> Flush(v1::FlushRequest request);

 private:
  using Clock = std::chrono::steady_clock;
  struct Stream;  // one Batch call and its reader thread

  struct Waiting {
    v1::Operation operation;
    Callback done;
    Clock::time_point submitted;
  };

  // Submits `operation` and completes the future with `extract` applied to
  // its OK result.
  template <typename Response, typename Extract>
  std::future<absl::StatusOr<Response>> SubmitForFuture(v1::Operation operation, Extract extract);

  // The writer thread: packs and sends messages, opens and closes streams.
  void RunWriter();
  // Blocks until a message should go out, the stream ended, or the Batcher
  // is closing with nothing left to send.
  void WaitForWriterWorkLocked(std::unique_lock<std::mutex>& lock)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  bool MessageDueLocked(Clock::time_point now) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Moves up to a message's worth of waiting operations into `request` and
  // their callbacks onto in_flight_.
  void TakeMessageLocked(v1::BatchRequest& request) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  std::unique_ptr<Stream> OpenStream();
  // Waits for the stream's reader, then fails everything not answered with
  // the stream's final status.
  void CloseStream(std::unique_ptr<Stream> stream);

  // A stream's reader thread: completes each message's callbacks in order.
  void RunReader(Stream& stream);
  bool OnBatcherThreadLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  const BatcherOptions options_;
  const Clock::duration max_delay_;
  const size_t max_waiting_;  // operations queued behind the in-flight messages
  const std::unique_ptr<v1::IommuBroker::Stub> stub_;

  std::mutex mutex_;
  std::condition_variable writer_wake_;  // work for the writer
  std::condition_variable queue_space_;  // room in waiting_
  std::deque<Waiting> waiting_ ABSL_GUARDED_BY(mutex_);
  // The callbacks of each message sent and not answered, oldest first.
  std::deque<std::vector<Callback>> in_flight_ ABSL_GUARDED_BY(mutex_);
  bool stream_ended_ ABSL_GUARDED_BY(mutex_) = false;  // the reader saw the end
  bool closing_ ABSL_GUARDED_BY(mutex_) = false;       // the destructor runs
  bool closed_ ABSL_GUARDED_BY(mutex_) = false;        // nothing more is sent
  // Threads that run callbacks, on which Submit must not block.
  std::thread::id writer_id_ ABSL_GUARDED_BY(mutex_);
  std::thread::id reader_id_ ABSL_GUARDED_BY(mutex_);
  std::thread writer_;  // started last: it uses everything above
};

}  // namespace iommu_broker::client

#endif  // IOMMU_BROKER_CLIENT_CPP_BATCHER_H_
