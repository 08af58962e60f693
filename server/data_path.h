// DataPath runs the API's data-path operations (map, unmap, translate,
// flush) on the engine, for both the unary RPCs and the Batch stream. It
// resolves device ids once per DataPath: a Batch stream uses one per
// message, so a device's lookup (a lock in the engine) is paid once per
// message rather than once per operation.
//
//   DataPath data_path(iommu, operation_metrics);
//   absl::Status status = data_path.Map(request, &response);
//
// Every operation is counted in the OperationMetrics; the first map or
// unmap of a DataPath and every 16th after it are timed (a unary call's
// always, a Batch message's sampled).
//
// Thread-safety: not thread-safe (the device cache); the Iommu is.
#ifndef IOMMU_BROKER_SERVER_DATA_PATH_H_
#define IOMMU_BROKER_SERVER_DATA_PATH_H_

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/iommu/completion.h"
#include "core/iommu/iommu.h"
#include "iommu_broker/v1/iommu_broker.pb.h"
#include "server/operation_metrics.h"

namespace iommu_broker {

class DataPath final {
 public:
  DataPath(Iommu& iommu, OperationMetrics& metrics) : iommu_(iommu), metrics_(metrics) {}
  DataPath(const DataPath&) = delete;
  DataPath& operator=(const DataPath&) = delete;

  absl::Status Map(const v1::MapRequest& request, v1::MapResponse* response);
  absl::Status Unmap(const v1::UnmapRequest& request, v1::UnmapResponse* response);
  absl::Status Translate(const v1::TranslateRequest& request, v1::TranslateResponse* response);
  absl::Status Flush(const v1::FlushRequest& request);
  // One Batch operation into `result` (its status, and its response if OK).
  void Run(const v1::Operation& operation, v1::OperationResult* result);

  // What the paranoid unmaps run so far still wait for: device-side IOTLBs'
  // acknowledgements. Their replies must not go out before it fires. Null
  // if nothing waits; the DataPath forgets them.
  std::shared_ptr<Completion> TakeDeviceTlbAcks();

 private:
  using Clock = std::chrono::steady_clock;
  static constexpr uint64_t kTimeEvery = 16;

  absl::StatusOr<Device*> FindDevice(const std::string& device_id);
  // Counts an operation refused before it reached a domain.
  absl::Status Refused(DataOperation operation, absl::Status status);
  // When this operation is to be timed, its start.
  std::optional<Clock::time_point> MaybeStartTimer();
  // Counts an operation that ran on `device`'s domain (if any), and its
  // latency if it was timed and succeeded.
  void Record(DataOperation operation, const Device& device, const absl::Status& status,
              bool fault, std::optional<Clock::time_point> started);

  Iommu& iommu_;
  OperationMetrics& metrics_;
  uint64_t timed_candidates_ = 0;  // maps and unmaps so far
  absl::flat_hash_map<std::string, std::shared_ptr<Device>> devices_;
  std::vector<std::shared_ptr<Completion>> device_tlb_acks_;
};

}  // namespace iommu_broker

#endif  // IOMMU_BROKER_SERVER_DATA_PATH_H_
