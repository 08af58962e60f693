// BatchReactor serves one Batch stream: it reads a BatchRequest, runs its
// operations in order (each with its own status), writes the BatchResponse,
// and reads the next. Request and response live on arenas the stream keeps
// (server/arena_message.h), so a message's operations cost no malloc each.
// A message above the operation limit ends the stream with
// RESOURCE_EXHAUSTED; once the broker drains, the next message ends it with
// UNAVAILABLE without running it. An operation on a device or domain the
// caller may not use fails alone, PERMISSION_DENIED.
//
// Created by BrokerService::Batch; gRPC owns it until OnDone, which deletes
// it and returns its stream slot.
//
// Thread-safety: gRPC runs at most one of its reactions at a time.
#ifndef IOMMU_BROKER_SERVER_BATCH_REACTOR_H_
#define IOMMU_BROKER_SERVER_BATCH_REACTOR_H_

#include <atomic>
#include <cstddef>

#include "core/iommu/iommu.h"
#include "grpcpp/support/server_callback.h"
#include "iommu_broker/v1/iommu_broker.pb.h"
#include "server/access_control.h"
#include "server/arena_message.h"
#include "server/operation_metrics.h"
#include "server/stream_limit.h"

namespace iommu_broker {

class BatchReactor final : public grpc::ServerBidiReactor<v1::BatchRequest, v1::BatchResponse> {
 public:
  // The block each of the request's and the response's arenas owns: a
  // 256-operation message takes about 40 KiB of either kind (42 KiB and
  // 39 KiB measured); larger ones spill into blocks the next message frees.
  static constexpr size_t kArenaBlockBytes = 64 * 1024;

  // `slot` was acquired from `streams` for this stream; `draining` and the
  // rest outlive it.
  BatchReactor(Iommu& iommu, OperationMetrics& metrics, size_t max_operations, StreamLimit& streams,
               const std::atomic<bool>& draining, Caller caller);

  void OnReadDone(bool ok) override;
  void OnWriteDone(bool ok) override;
  void OnDone() override;

 private:
  Iommu& iommu_;
  OperationMetrics& metrics_;
  const size_t max_operations_;
  StreamLimit& streams_;
  const std::atomic<bool>& draining_;
  const Caller caller_;  // each operation is checked against it
  // Renewed after each write (the request) and before each answer is built
  // (the response): a read and a write never overlap, so neither is in use.
  ArenaMessage<v1::BatchRequest> request_;
  ArenaMessage<v1::BatchResponse> response_;
};

}  // namespace iommu_broker

#endif  // IOMMU_BROKER_SERVER_BATCH_REACTOR_H_
