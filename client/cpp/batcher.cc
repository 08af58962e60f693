#include "client/cpp/batcher.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "client/cpp/connection.h"
#include "grpcpp/client_context.h"
#include "grpcpp/support/sync_stream.h"

namespace iommu_broker::client {
namespace {

constexpr absl::Duration kMaxDelayLimit = absl::Seconds(1);
constexpr int kMaxInFlightMessagesLimit = 1024;

// An operation's own status, or its result when OK.
absl::StatusOr<v1::OperationResult> ResultOf(v1::OperationResult& result) {
  if (result.status().code() != 0) {
    return absl::Status(static_cast<absl::StatusCode>(result.status().code()),
                        result.status().message());
  }
  return std::move(result);
}

// Runs each callback of a message with its operation's result, in order.
void CompleteMessage(std::vector<Batcher::Callback>& callbacks, v1::BatchResponse& response) {
  const size_t answered = static_cast<size_t>(response.results_size());
  for (size_t i = 0; i < callbacks.size(); ++i) {
    if (i < answered) {
      callbacks[i](ResultOf(*response.mutable_results(static_cast<int>(i))));
    } else {
      callbacks[i](
          absl::InternalError(absl::StrCat("the broker answered ", answered, " of the ",
                                           callbacks.size(), " operations of a Batch message")));
    }
  }
}

}  // namespace

struct Batcher::Stream {
  grpc::ClientContext context;  // no deadline: the stream lives as long as it is used
  std::unique_ptr<grpc::ClientReaderWriter<v1::BatchRequest, v1::BatchResponse>> rpc;
  std::thread reader;
};

absl::Status ValidateBatcherOptions(const BatcherOptions& options) {
  if (options.max_operations_per_message < 1 ||
      options.max_operations_per_message > kMaxBatchOperations) {
    return absl::InvalidArgumentError(absl::StrCat("max_operations_per_message ",
                                                   options.max_operations_per_message,
                                                   " is outside [1, ", kMaxBatchOperations, "]"));
  }
  if (options.max_delay < absl::ZeroDuration() || options.max_delay > kMaxDelayLimit) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_delay ", absl::FormatDuration(options.max_delay), " is outside [0, ",
                     absl::FormatDuration(kMaxDelayLimit), "]"));
  }
  if (options.max_in_flight_messages < 1 ||
      options.max_in_flight_messages > kMaxInFlightMessagesLimit) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_in_flight_messages ", options.max_in_flight_messages, " is outside [1, ",
                     kMaxInFlightMessagesLimit, "]"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Batcher>> Batcher::Create(std::shared_ptr<grpc::Channel> channel,
                                                         const BatcherOptions& options) {
  if (channel == nullptr) return absl::InvalidArgumentError("channel is null");
  if (absl::Status valid = ValidateBatcherOptions(options); !valid.ok()) return valid;
  return std::make_unique<Batcher>(ConstructionKey(), std::move(channel), options);
}

Batcher::Batcher(ConstructionKey, std::shared_ptr<grpc::Channel> channel,
                 const BatcherOptions& options)
    : options_(options),
      max_delay_(absl::ToChronoNanoseconds(options.max_delay)),
      max_waiting_(static_cast<size_t>(options.max_in_flight_messages) *
                   static_cast<size_t>(options.max_operations_per_message)),
      stub_(v1::IommuBroker::NewStub(std::move(channel))),
      writer_([this] { RunWriter(); }) {}

Batcher::~Batcher() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    closing_ = true;
  }
  writer_wake_.notify_one();
  writer_.join();
}

void Batcher::Submit(v1::Operation operation, Callback done) {
  std::unique_lock<std::mutex> lock(mutex_);
  if (!OnBatcherThreadLocked()) {
    queue_space_.wait(lock, [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
      return waiting_.size() < max_waiting_ || closed_;
    });
  }
  if (closed_) {
    lock.unlock();
    done(absl::CancelledError("the Batcher is closing; the operation was not sent"));
    return;
  }
  waiting_.push_back(Waiting{std::move(operation), std::move(done), Clock::now()});
  // The writer's decision changes only when the first operation starts the
  // time bound or when a message's worth is waiting.
  const bool wake_writer =
      waiting_.size() == 1 ||
      waiting_.size() == static_cast<size_t>(options_.max_operations_per_message);
  lock.unlock();
  if (wake_writer) writer_wake_.notify_one();
}

template <typename Response, typename Extract>
std::future<absl::StatusOr<Response>> Batcher::SubmitForFuture(v1::Operation operation,
                                                               Extract extract) {
  std::promise<absl::StatusOr<Response>> promise;
  std::future<absl::StatusOr<Response>> future = promise.get_future();
  Submit(std::move(operation), [promise = std::move(promise),
                                extract](absl::StatusOr<v1::OperationResult> result) mutable {
    if (!result.ok()) {
      promise.set_value(result.status());
      return;
    }
    promise.set_value(extract(*std::move(result)));
  });
  return future;
}

std::future<absl::StatusOr<v1::OperationResult>> Batcher::Submit(v1::Operation operation) {
  return SubmitForFuture<v1::OperationResult>(std::move(operation),
                                              [](v1::OperationResult result) { return result; });
}

std::future<absl::StatusOr<v1::MapResponse>> Batcher::Map(v1::MapRequest request) {
  v1::Operation operation;
  *operation.mutable_map() = std::move(request);
  return SubmitForFuture<v1::MapResponse>(std::move(operation), [](v1::OperationResult result) {
    return std::move(*result.mutable_map());
  });
}

std::future<absl::StatusOr<v1::UnmapResponse>> Batcher::Unmap(v1::UnmapRequest request) {
  v1::Operation operation;
  *operation.mutable_unmap() = std::move(request);
  return SubmitForFuture<v1::UnmapResponse>(std::move(operation), [](v1::OperationResult result) {
    return std::move(*result.mutable_unmap());
  });
}

std::future<absl::StatusOr<v1::TranslateResponse>> Batcher::Translate(
    v1::TranslateRequest request) {
  v1::Operation operation;
  *operation.mutable_translate() = std::move(request);
  return SubmitForFuture<v1::TranslateResponse>(
      std::move(operation),
      [](v1::OperationResult result) { return std::move(*result.mutable_translate()); });
}

std::future<absl::StatusOr<v1::FlushResponse>> Batcher::Flush(v1::FlushRequest request) {
  v1::Operation operation;
  *operation.mutable_flush() = std::move(request);
  return SubmitForFuture<v1::FlushResponse>(std::move(operation), [](v1::OperationResult result) {
    return std::move(*result.mutable_flush());
  });
}

void Batcher::RunWriter() {
  std::unique_ptr<Stream> stream;
  std::unique_lock<std::mutex> lock(mutex_);
  writer_id_ = std::this_thread::get_id();
  while (true) {
    WaitForWriterWorkLocked(lock);
    if (stream_ended_) {
      lock.unlock();
      CloseStream(std::move(stream));
      lock.lock();
      continue;
    }
    if (waiting_.empty()) break;  // closing, and everything was sent
    v1::BatchRequest request;
    TakeMessageLocked(request);
    lock.unlock();
    queue_space_.notify_all();
    if (stream == nullptr) stream = OpenStream();
    // A failed write means the call is over: its reader sees the end and
    // wakes this thread to fail what was not answered.
    stream->rpc->Write(request);
    lock.lock();
  }
  closed_ = true;
  lock.unlock();
  queue_space_.notify_all();
  if (stream != nullptr) {
    stream->rpc->WritesDone();
    CloseStream(std::move(stream));
  }
}

void Batcher::WaitForWriterWorkLocked(std::unique_lock<std::mutex>& lock) {
  while (!stream_ended_) {
    if (MessageDueLocked(Clock::now())) return;
    if (waiting_.empty() && closing_) return;
    const bool pipeline_full =
        in_flight_.size() >= static_cast<size_t>(options_.max_in_flight_messages);
    if (waiting_.empty() || pipeline_full) {
      writer_wake_.wait(lock);
    } else {
      writer_wake_.wait_until(lock, waiting_.front().submitted + max_delay_);
    }
  }
}

bool Batcher::MessageDueLocked(Clock::time_point now) const {
  if (waiting_.empty() ||
      in_flight_.size() >= static_cast<size_t>(options_.max_in_flight_messages)) {
    return false;
  }
  return closing_ || waiting_.size() >= static_cast<size_t>(options_.max_operations_per_message) ||
         now >= waiting_.front().submitted + max_delay_;
}

void Batcher::TakeMessageLocked(v1::BatchRequest& request) {
  const size_t count =
      std::min(waiting_.size(), static_cast<size_t>(options_.max_operations_per_message));
  std::vector<Callback> callbacks;
  callbacks.reserve(count);
  for (size_t i = 0; i < count; ++i) {
    Waiting& next = waiting_.front();
    *request.add_operations() = std::move(next.operation);
    callbacks.push_back(std::move(next.done));
    waiting_.pop_front();
  }
  in_flight_.push_back(std::move(callbacks));
}

std::unique_ptr<Batcher::Stream> Batcher::OpenStream() {
  auto stream = std::make_unique<Stream>();
  stream->rpc = stub_->Batch(&stream->context);
  stream->reader = std::thread([this, opened = stream.get()] { RunReader(*opened); });
  return stream;
}

void Batcher::CloseStream(std::unique_ptr<Stream> stream) {
  stream->reader.join();
  absl::Status status = FromGrpcStatus(stream->rpc->Finish());
  if (status.ok()) status = absl::UnavailableError("the Batch stream ended without answering");
  std::deque<std::vector<Callback>> unanswered;
  std::deque<Waiting> unsent;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    unanswered.swap(in_flight_);
    unsent.swap(waiting_);
    stream_ended_ = false;
    reader_id_ = std::thread::id();
  }
  queue_space_.notify_all();
  for (std::vector<Callback>& message : unanswered) {
    for (Callback& done : message) done(status);
  }
  for (Waiting& operation : unsent) operation.done(status);
}

void Batcher::RunReader(Stream& stream) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    reader_id_ = std::this_thread::get_id();
  }
  v1::BatchResponse response;
  while (stream.rpc->Read(&response)) {
    std::vector<Callback> callbacks;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!in_flight_.empty()) {
        callbacks = std::move(in_flight_.front());
        in_flight_.pop_front();
      }
    }
    if (callbacks.empty()) {  // an answer to nothing: the stream cannot be trusted
      stream.context.TryCancel();
      continue;
    }
    writer_wake_.notify_one();
    CompleteMessage(callbacks, response);
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stream_ended_ = true;
  }
  writer_wake_.notify_one();
}

bool Batcher::OnBatcherThreadLocked() const {
  const std::thread::id self = std::this_thread::get_id();
  return self == writer_id_ || self == reader_id_;
}

}  // namespace iommu_broker::client
