#include "tests/server/rpc_helpers.h"

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace iommu_broker::testing {

v1::DomainSpec DomainSpec(const std::string& id, v1::Policy policy) {
  v1::DomainSpec spec;
  spec.set_id(id);
  spec.set_policy(policy);
  return spec;
}

v1::DeviceSpec DeviceSpec(const std::string& id, bool allow_bypass) {
  v1::DeviceSpec spec;
  spec.set_id(id);
  spec.set_allow_bypass(allow_bypass);
  return spec;
}

v1::MapRequest MapAnywhere(const std::string& device, uint64_t phys, uint64_t size) {
  v1::MapRequest request;
  request.set_device_id(device);
  request.set_phys(phys);
  request.set_size(size);
  request.mutable_permissions()->set_read(true);
  request.mutable_permissions()->set_write(true);
  return request;
}

v1::MapRequest MapAt(const std::string& device, uint64_t iova, uint64_t phys, uint64_t size) {
  v1::MapRequest request = MapAnywhere(device, phys, size);
  request.set_iova(iova);
  return request;
}

v1::MapRequest MapBypass(const std::string& device, uint64_t phys, uint64_t size,
                         v1::BypassMode mode) {
  v1::MapRequest request = MapAnywhere(device, phys, size);
  request.set_bypass(mode);
  return request;
}

v1::UnmapRequest UnmapOf(const std::string& device, uint64_t iova, uint64_t size) {
  v1::UnmapRequest request;
  request.set_device_id(device);
  request.set_iova(iova);
  request.set_size(size);
  return request;
}

v1::TranslateRequest TranslateOf(const std::string& device, uint64_t iova, uint64_t size,
                                 v1::Access access) {
  v1::TranslateRequest request;
  request.set_device_id(device);
  request.set_iova(iova);
  request.set_size(size);
  request.set_access(access);
  return request;
}

v1::FlushRequest FlushOf(const std::string& domain) {
  v1::FlushRequest request;
  request.set_domain_id(domain);
  return request;
}

v1::Operation MapOp(const v1::MapRequest& request) {
  v1::Operation operation;
  *operation.mutable_map() = request;
  return operation;
}

v1::Operation UnmapOp(const v1::UnmapRequest& request) {
  v1::Operation operation;
  *operation.mutable_unmap() = request;
  return operation;
}

v1::Operation TranslateOp(const v1::TranslateRequest& request) {
  v1::Operation operation;
  *operation.mutable_translate() = request;
  return operation;
}

v1::Operation FlushOp(const std::string& domain) {
  v1::Operation operation;
  *operation.mutable_flush() = FlushOf(domain);
  return operation;
}

v1::WatchEventsRequest WatchFaults(const std::string& domain, const std::string& device) {
  v1::WatchEventsRequest request;
  request.set_domain_id(domain);
  request.set_device_id(device);
  request.set_faults(true);
  return request;
}

BatchStream OpenBatch(Stub& stub) {
  BatchStream batch;
  batch.context = ContextWithDeadline();
  batch.stream = stub.Batch(batch.context.get());
  return batch;
}

std::optional<v1::BatchResponse> RoundTrip(BatchReaderWriter& stream,
                                           const v1::BatchRequest& request) {
  stream.Write(request);  // a failed write shows as a failed read
  v1::BatchResponse response;
  if (!stream.Read(&response)) return std::nullopt;
  return response;
}

ServedBatch OpenServedBatch(Stub& stub) {
  ServedBatch served;
  served.batch = OpenBatch(stub);
  served.served = RoundTrip(*served.batch.stream, v1::BatchRequest()).has_value();
  if (!served.served) served.refusal = served.batch.stream->Finish();
  return served;
}

ServedBatch OpenServedBatchEventually(Stub& stub) {
  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  ServedBatch served = OpenServedBatch(stub);
  while (!served.served && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(2));
    served = OpenServedBatch(stub);
  }
  return served;
}

EventStream Watch(Stub& stub, const v1::WatchEventsRequest& request) {
  EventStream events;
  events.context = ContextWithDeadline();
  events.stream = stub.WatchEvents(events.context.get(), request);
  events.stream->WaitForInitialMetadata();
  return events;
}

grpc::Status RefusedWatch(Stub& stub, const v1::WatchEventsRequest& request) {
  EventStream events = Watch(stub, request);
  v1::Event event;
  EXPECT_FALSE(events.stream->Read(&event)) << event.DebugString();
  return events.stream->Finish();
}

}  // namespace iommu_broker::testing
