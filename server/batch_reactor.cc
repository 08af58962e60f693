#include "server/batch_reactor.h"

#include <memory>

#include "absl/strings/str_cat.h"
#include "server/data_path.h"
#include "server/status.h"

namespace iommu_broker {

BatchReactor::BatchReactor(Iommu& iommu, OperationMetrics& metrics, size_t max_operations,
                           StreamLimit& streams, const std::atomic<bool>& draining, Caller caller)
    : iommu_(iommu),
      metrics_(metrics),
      max_operations_(max_operations),
      streams_(streams),
      draining_(draining),
      caller_(std::move(caller)),
      request_(kArenaBlockBytes),
      response_(kArenaBlockBytes) {
  StartRead(request_.get());
}

void BatchReactor::OnReadDone(bool ok) {
  if (!ok) {  // the client closed its side: every batch was answered
    Finish(grpc::Status::OK);
    return;
  }
  if (draining_.load(std::memory_order_acquire)) {
    Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                        "the broker is shutting down; this batch was not run"));
    return;
  }
  const size_t operations = static_cast<size_t>(request_->operations_size());
  if (operations > max_operations_) {
    Finish(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                        absl::StrCat("batch of ", operations, " operations exceeds the limit of ",
                                     max_operations_, "; nothing in it was run")));
    return;
  }
  v1::BatchResponse& response = response_.Renew();
  DataPath data_path(iommu_, metrics_);
  for (const v1::Operation& operation : request_->operations()) {
    v1::OperationResult* result = response.add_results();
    if (absl::Status permitted = caller_.PermitOperation(iommu_, operation); !permitted.ok()) {
      ToOperationStatus(permitted, result->mutable_status());
      continue;
    }
    data_path.Run(operation, result);
  }
  // Paranoid unmaps with device-side IOTLBs linked: the results go out
  // once the caches dropped what the unmaps removed.
  if (std::shared_ptr<Completion> acks = data_path.TakeDeviceTlbAcks()) {
    acks->OnDone([this, &response] { StartWrite(&response); });
    return;
  }
  StartWrite(&response);
}

void BatchReactor::OnWriteDone(bool ok) {
  if (!ok) {  // cancelled or disconnected; the operations already ran
    Finish(grpc::Status(grpc::StatusCode::CANCELLED, "the stream was cancelled"));
    return;
  }
  StartRead(&request_.Renew());
}

void BatchReactor::OnDone() {
  streams_.Release();
  delete this;
}

}  // namespace iommu_broker
