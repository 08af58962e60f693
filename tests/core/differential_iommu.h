// DifferentialIommu is the oracle of the differential test and of the
// iommu_ops fuzzer: it runs each operation on a real Iommu and on the
// reference model (reference_model.h), and checks that every result and
// error code agrees, and after every operation that the domain statistics,
// DMA-API debug counters, fault logs and leak reports do too.
//
// What the model cannot predict it checks by property: an allocated IOVA is
// taken as returned and checked (aligned to its size class, inside the
// aperture and the DMA mask, clear of reserved regions and of every IOVA in
// use, including size-class rounding and ranges waiting on the flush queue);
// RESOURCE_EXHAUSTED from the allocator is accepted only when the model holds
// no free aligned block the buddy arena would have found; a fast-policy
// translation of a page unmapped but not yet flushed may fault or be served
// stale, but only with the old mapping's PA and only for a device that could
// have cached it.
//
//   DifferentialIommu oracle(/*max_devices=*/3, /*max_domains=*/2, &coverage);
//   oracle.CreateDomain(config);
//   oracle.EndStep();
//   ...
//   if (oracle.failed()) std::cerr << oracle.Report();
//
// Only the first difference is kept (later operations still run, on both):
// Report() names its step, what differed, the operations so far and the
// model. If the engine cannot be created, failed() is true from the start
// and no operation may be called.
//
// Thread-safety: not thread-safe.
#ifndef IOMMU_BROKER_TESTS_CORE_DIFFERENTIAL_IOMMU_H_
#define IOMMU_BROKER_TESTS_CORE_DIFFERENTIAL_IOMMU_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/iommu/iommu.h"
#include "tests/core/reference_model.h"

namespace iommu_broker::reference {

// IOMMU units of the engine the oracle creates (domain "c" of the
// differential sequence sits on the second).
inline constexpr uint32_t kUnits = 2;

class DifferentialIommu final {
 public:
  // How often each interesting case came up, to show that sequences reach
  // them.
  using Coverage = std::map<std::string, uint64_t>;

  // An engine of kPhysMem bytes and kUnits units with no maintenance thread
  // (nothing runs behind the model's back), and an empty model. `coverage`
  // may be null.
  DifferentialIommu(size_t max_devices, size_t max_domains, Coverage* coverage);
  DifferentialIommu(const DifferentialIommu&) = delete;
  DifferentialIommu& operator=(const DifferentialIommu&) = delete;

  bool failed() const { return !failure_.empty(); }
  const ReferenceModel& model() const { return model_; }
  // Where and how the first difference showed, the operations up to it and
  // the model after it.
  std::string Report() const;

  // Ends an operation: compares the whole state, then starts the next step.
  void EndStep();
  // At the end: the IOMMU-wide fault subscription delivered every fault, in
  // order, none dropped.
  void CheckFaultSubscription();

  // Each runs on both and compares.
  void CreateDomain(const DomainConfig& config);
  void DestroyDomain(const std::string& id, bool force);
  void AddDevice(const DeviceConfig& config);
  void RemoveDevice(const std::string& id);
  void Attach(const std::string& device_id, const std::string& domain_id);
  void Detach(const std::string& device_id);
  void SetPolicy(const std::string& domain_id, Policy policy);
  void Flush(const std::string& domain_id);
  void SetAllowBypass(const std::string& device_id, bool allow);
  // Maintenance at the end of time (every flush-queue entry has waited past
  // its timeout) or at its beginning (none has): no clock involved.
  void Maintain(bool everything_expired);
  void Map(const std::string& device_id, const MapRequest& request);
  void Unmap(const std::string& device_id, uint64_t iova, uint64_t size);
  void Translate(const std::string& device_id, uint64_t iova, uint64_t size, Access access);

 private:
  void Fail(std::string what);
  void Cover(const char* what);
  void Log(std::string line);
  void Result(absl::string_view text);

  void ExpectError(const absl::Status& got, absl::StatusCode code, absl::string_view needle);
  void CheckMapped(const absl::StatusOr<MapResult>& got, ModelDomain& domain, ModelDevice& device,
                   const MapRequest& request, const std::string& refusal_needle);
  void ExpectFault(const TranslateResult& got, ModelDomain* domain, ModelDevice& device,
                   uint64_t iova, Access access, FaultReason reason);
  // The newest fault in `domain_id`'s log (the IOMMU's when empty) is
  // `want`, numbered `sequence` (broker-wide).
  void CheckLastFault(const std::string& domain_id, uint64_t sequence, const Fault& want);
  // A device leaves its domain: its leaks are counted; its IOTLB entries
  // are dropped when `invalidate`.
  LiveMappings DetachModel(ModelDevice& device, bool invalidate);
  void InvalidateRequester(ModelDomain& domain, uint32_t requester);
  void Enqueue(ModelDomain& domain, ModelMapping mapping);
  void FlushModel(ModelDomain& domain);
  void CheckState();

  Coverage* const coverage_;
  std::unique_ptr<Iommu> iommu_;
  std::shared_ptr<FaultSubscription> faults_;
  ReferenceModel model_;
  int step_ = 0;
  int failed_step_ = 0;
  std::vector<std::string> log_;
  std::string failure_;
};

}  // namespace iommu_broker::reference

#endif  // IOMMU_BROKER_TESTS_CORE_DIFFERENTIAL_IOMMU_H_
