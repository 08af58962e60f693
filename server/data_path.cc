#include "server/data_path.h"

#include <utility>

#include "server/convert.h"
#include "server/status.h"

namespace iommu_broker {

absl::StatusOr<Device*> DataPath::FindDevice(const std::string& device_id) {
  auto it = devices_.find(device_id);
  if (it != devices_.end()) return it->second.get();
  absl::StatusOr<std::shared_ptr<Device>> device = iommu_.FindDevice(device_id);
  if (!device.ok()) return device.status();
  Device* found = device->get();
  devices_.emplace(device_id, *std::move(device));
  return found;
}

absl::Status DataPath::Refused(DataOperation operation, absl::Status status) {
  metrics_.Count(operation, std::nullopt, status, /*fault=*/false);
  return status;
}

std::optional<DataPath::Clock::time_point> DataPath::MaybeStartTimer() {
  if (timed_candidates_++ % kTimeEvery != 0) return std::nullopt;
  return Clock::now();
}

void DataPath::Record(DataOperation operation, const Device& device, const absl::Status& status,
                      bool fault, std::optional<Clock::time_point> started) {
  const uint64_t nanos =
      started.has_value()
          ? static_cast<uint64_t>(
                std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - *started)
                    .count())
          : 0;
  const std::optional<Policy> policy = iommu_.PolicyOf(device);
  metrics_.Count(operation, policy, status, fault);
  if (started.has_value() && status.ok() && policy.has_value()) {
    metrics_.RecordLatency(operation, *policy, nanos);
  }
}

absl::Status DataPath::Map(const v1::MapRequest& request, v1::MapResponse* response) {
  absl::StatusOr<MapRequest> map = MapRequestFromProto(request);
  if (!map.ok()) return Refused(DataOperation::kMap, map.status());
  absl::StatusOr<Device*> device = FindDevice(request.device_id());
  if (!device.ok()) return Refused(DataOperation::kMap, device.status());
  const std::optional<Clock::time_point> started = MaybeStartTimer();
  absl::StatusOr<MapResult> result = iommu_.Map(**device, *map);
  Record(DataOperation::kMap, **device, result.status(), /*fault=*/false, started);
  if (!result.ok()) return result.status();
  MapResultToProto(*result, response);
  return absl::OkStatus();
}

absl::Status DataPath::Unmap(const v1::UnmapRequest& request, v1::UnmapResponse* response) {
  absl::StatusOr<Device*> device = FindDevice(request.device_id());
  if (!device.ok()) return Refused(DataOperation::kUnmap, device.status());
  const std::optional<Clock::time_point> started = MaybeStartTimer();
  absl::StatusOr<UnmapResult> result = iommu_.Unmap(**device, request.iova(), request.size());
  Record(DataOperation::kUnmap, **device, result.status(), /*fault=*/false, started);
  if (!result.ok()) return result.status();
  if (result->device_tlb_acks != nullptr) device_tlb_acks_.push_back(result->device_tlb_acks);
  UnmapResultToProto(*result, response);
  return absl::OkStatus();
}

absl::Status DataPath::Translate(const v1::TranslateRequest& request,
                                 v1::TranslateResponse* response) {
  absl::StatusOr<Access> access = AccessFromProto(request.access());
  if (!access.ok()) return Refused(DataOperation::kTranslate, access.status());
  absl::StatusOr<Device*> device = FindDevice(request.device_id());
  if (!device.ok()) return Refused(DataOperation::kTranslate, device.status());
  absl::StatusOr<TranslateResult> result =
      iommu_.Translate(**device, request.iova(), request.size(), *access);
  Record(DataOperation::kTranslate, **device, result.status(),
         result.ok() && result->fault.has_value(),
         /*started=*/std::nullopt);
  if (!result.ok()) return result.status();
  TranslateResultToProto(*result, response);
  return absl::OkStatus();
}

absl::Status DataPath::Flush(const v1::FlushRequest& request) {
  absl::StatusOr<Policy> policy = iommu_.DomainPolicy(request.domain_id());
  if (!policy.ok()) return Refused(DataOperation::kFlush, policy.status());
  absl::Status status = iommu_.Flush(request.domain_id());
  metrics_.Count(DataOperation::kFlush, *policy, status, /*fault=*/false);
  return status;
}

std::shared_ptr<Completion> DataPath::TakeDeviceTlbAcks() {
  std::vector<std::shared_ptr<Completion>> acks;
  acks.swap(device_tlb_acks_);
  return Completion::AllOf(std::move(acks));
}

void DataPath::Run(const v1::Operation& operation, v1::OperationResult* result) {
  absl::Status status;
  switch (operation.op_case()) {
    case v1::Operation::kMap:
      status = Map(operation.map(), result->mutable_map());
      break;
    case v1::Operation::kUnmap:
      status = Unmap(operation.unmap(), result->mutable_unmap());
      break;
    case v1::Operation::kTranslate:
      status = Translate(operation.translate(), result->mutable_translate());
      break;
    case v1::Operation::kFlush:
      status = Flush(operation.flush());
      if (status.ok()) result->mutable_flush();
      break;
    case v1::Operation::OP_NOT_SET:
      // Counted nowhere: it is no operation.
      status = absl::InvalidArgumentError("operation has none of map, unmap, translate, flush");
      break;
  }
  if (!status.ok()) result->clear_result();
  ToOperationStatus(status, result->mutable_status());
}

}  // namespace iommu_broker
