// DeviceIotlb is a device back-end's translation cache, kept coherent with
// the broker (the vhost-iotlb model; a device TLB under PCIe ATS). A DMA
// translates locally; a miss asks the broker (Translate) and caches the
// page; the broker's invalidations, streamed over LinkDeviceIotlb, evict
// pages and are acknowledged once applied. Under paranoid the broker's
// Unmap replies only after that acknowledgement, so no translation begun
// after an Unmap replied returns what it removed. Under fast,
// invalidations arrive with the broker's batch flush, as its own IOTLB's do;
// the broker first notes each unmapped range, and until the flush a hit on
// it is served but marked and counted stale (TranslateResponse.stale,
// Stats().stale_hits), as the broker marks and counts its own.
//
//   absl::StatusOr<std::unique_ptr<DeviceIotlb>> iotlb =
//       DeviceIotlb::Link(channel, {.device_id = "0000:3b:00.0"});
//   absl::StatusOr<v1::TranslateResponse> dma = (*iotlb)->Translate(iova, 64, DmaAccess::kRead);
//   if (dma.ok() && !dma->has_fault()) ...use dma->segments()...
//
// If the broker cuts the link off (an acknowledgement overdue, too many
// invalidations unread) or the connection drops, the cache empties and
// every Translate fails UNAVAILABLE until Relink() succeeds: a cache that
// may have missed an invalidation must not translate.
//
// Thread-safety: thread-safe. A background thread reads the link.
#ifndef IOMMU_BROKER_CLIENT_CPP_DEVICE_IOTLB_H_
#define IOMMU_BROKER_CLIENT_CPP_DEVICE_IOTLB_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/cpp/broker_client.h"
#include "client/cpp/translation_cache.h"
#include "grpcpp/channel.h"
#include "grpcpp/client_context.h"
#include "iommu_broker/v1/iommu_broker.grpc.pb.h"

namespace iommu_broker::client {

struct DeviceIotlbOptions {
  std::string device_id;           // the device whose DMA this cache translates
  size_t max_pages = 65536;        // cached 4 KiB pages, about
  absl::Duration call_deadline = absl::Seconds(10);  // per Translate on a miss
};

class DeviceIotlb final {
 public:
  // Links a cache for options.device_id; fails with the broker's answer
  // (NOT_FOUND, ALREADY_EXISTS for a device that has one, UNAVAILABLE).
  static absl::StatusOr<std::unique_ptr<DeviceIotlb>> Link(std::shared_ptr<grpc::Channel> channel,
                                                           DeviceIotlbOptions options);
  // Closes the link.
  ~DeviceIotlb();
  DeviceIotlb(const DeviceIotlb&) = delete;
  DeviceIotlb& operator=(const DeviceIotlb&) = delete;

  // What the device's DMA to [iova, iova + size) reaches: segments, or a
  // fault (as the broker's Translate answers; iotlb_hit when every page came
  // from this cache, stale when one was unmapped and awaits its flush).
  // UNAVAILABLE while unlinked; other errors as the broker's.
  absl::StatusOr<v1::TranslateResponse> Translate(uint64_t iova, uint64_t size, DmaAccess access);

  // Links again after the link ended, starting empty. OK if linked already.
  absl::Status Relink();
  // OK while linked; otherwise why the link ended.
  absl::Status link_status() const;
  TranslationCacheStats Stats() const { return cache_.Stats(); }

 private:
  using LinkStream = grpc::ClientReaderWriter<v1::DeviceIotlbRequest, v1::DeviceIotlbInvalidations>;

  DeviceIotlb(std::shared_ptr<grpc::Channel> channel, DeviceIotlbOptions options);

  // Opens the stream and waits for the broker's confirmation; on success
  // starts the reader thread.
  absl::Status OpenLink() ABSL_EXCLUSIVE_LOCKS_REQUIRED(link_mutex_);
  // Ends the current link (if any) and joins its reader.
  void CloseLink() ABSL_EXCLUSIVE_LOCKS_REQUIRED(link_mutex_);
  // The reader thread: applies and acknowledges invalidations until the
  // stream ends, then empties the cache and records why.
  void ReadInvalidations(grpc::ClientContext* context, LinkStream* stream);
  // Applies one invalidation, or marks a range a fast unmap left pending.
  void Apply(const v1::DeviceIotlbInvalidation& notice);
  // The physical page of `iova_page` from the cache (iotlb_hit and stale
  // set as it found the page) or the broker; or the broker's fault response.
  absl::StatusOr<v1::TranslateResponse> TranslatePage(uint64_t iova_page, DmaAccess access);

  const std::shared_ptr<grpc::Channel> channel_;
  const std::unique_ptr<v1::IommuBroker::Stub> stub_;
  const DeviceIotlbOptions options_;
  const BrokerClient broker_;  // translates misses
  TranslationCache cache_;

  // Serializes Relink and the destructor.
  std::mutex link_mutex_;
  std::unique_ptr<grpc::ClientContext> context_ ABSL_GUARDED_BY(link_mutex_);
  std::unique_ptr<LinkStream> stream_ ABSL_GUARDED_BY(link_mutex_);
  std::thread reader_ ABSL_GUARDED_BY(link_mutex_);

  mutable std::mutex status_mutex_;
  absl::Status status_ ABSL_GUARDED_BY(status_mutex_);  // of the link
};

}  // namespace iommu_broker::client

#endif  // IOMMU_BROKER_CLIENT_CPP_DEVICE_IOTLB_H_
