#include "client/cpp/device_iotlb.h"

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "client/cpp/connection.h"

namespace iommu_broker::client {
namespace {

constexpr uint64_t kPage = TranslationCache::kPageSize;

v1::Access ToProto(DmaAccess access) {
  return access == DmaAccess::kRead ? v1::ACCESS_READ : v1::ACCESS_WRITE;
}

// Appends `length` bytes at `phys`, merging with the previous segment when
// they are adjacent in memory (as the broker does).
void AppendSegment(uint64_t phys, uint64_t length, v1::TranslateResponse& response) {
  const int count = response.segments_size();
  if (count > 0) {
    v1::PhysSegment* previous = response.mutable_segments(count - 1);
    if (previous->phys() + previous->size() == phys) {
      previous->set_size(previous->size() + length);
      return;
    }
  }
  v1::PhysSegment* segment = response.add_segments();
  segment->set_phys(phys);
  segment->set_size(length);
}

// How misses are asked: on the cache's channel, with its deadline.
ConnectionOptions MissOptions(const DeviceIotlbOptions& options) {
  ConnectionOptions connection;
  connection.deadline = options.call_deadline;
  return connection;
}

}  // namespace

absl::StatusOr<std::unique_ptr<DeviceIotlb>> DeviceIotlb::Link(
    std::shared_ptr<grpc::Channel> channel, DeviceIotlbOptions options) {
  if (options.device_id.empty()) return absl::InvalidArgumentError("device_id is empty");
  std::unique_ptr<DeviceIotlb> iotlb(new DeviceIotlb(std::move(channel), std::move(options)));
  if (absl::Status status = iotlb->Relink(); !status.ok()) return status;
  return iotlb;
}

DeviceIotlb::DeviceIotlb(std::shared_ptr<grpc::Channel> channel, DeviceIotlbOptions options)
    : channel_(std::move(channel)),
      stub_(v1::IommuBroker::NewStub(channel_)),
      options_(std::move(options)),
      broker_(channel_, MissOptions(options_)),
      cache_(options_.max_pages),
      status_(absl::UnavailableError("not linked yet")) {}

DeviceIotlb::~DeviceIotlb() {
  std::lock_guard<std::mutex> lock(link_mutex_);
  CloseLink();
}

absl::Status DeviceIotlb::Relink() {
  std::lock_guard<std::mutex> lock(link_mutex_);
  if (link_status().ok()) return absl::OkStatus();
  CloseLink();
  return OpenLink();
}

absl::Status DeviceIotlb::link_status() const {
  std::lock_guard<std::mutex> lock(status_mutex_);
  return status_;
}

absl::Status DeviceIotlb::OpenLink() {
  auto context = std::make_unique<grpc::ClientContext>();
  std::unique_ptr<LinkStream> stream = stub_->LinkDeviceIotlb(context.get());
  v1::DeviceIotlbRequest link;
  link.mutable_link()->set_device_id(options_.device_id);
  v1::DeviceIotlbInvalidations confirmation;
  if (!stream->Write(link) || !stream->Read(&confirmation)) {
    stream->WritesDone();
    return FromGrpcStatus(stream->Finish());
  }
  // Linked: nothing cached predates the link, and every invalidation from
  // now on arrives.
  cache_.InvalidateAll();
  {
    std::lock_guard<std::mutex> lock(status_mutex_);
    status_ = absl::OkStatus();
  }
  context_ = std::move(context);
  stream_ = std::move(stream);
  reader_ = std::thread(&DeviceIotlb::ReadInvalidations, this, context_.get(), stream_.get());
  return absl::OkStatus();
}

void DeviceIotlb::CloseLink() {
  if (context_ != nullptr) context_->TryCancel();
  if (reader_.joinable()) reader_.join();
  stream_.reset();
  context_.reset();
}

void DeviceIotlb::ReadInvalidations(grpc::ClientContext* context, LinkStream* stream) {
  v1::DeviceIotlbInvalidations message;
  bool acknowledging = true;
  while (acknowledging && stream->Read(&message)) {
    if (message.invalidations_size() == 0) continue;
    for (const v1::DeviceIotlbInvalidation& invalidation : message.invalidations()) {
      Apply(invalidation);
    }
    v1::DeviceIotlbRequest ack;
    ack.set_acknowledged_sequence(message.invalidations(message.invalidations_size() - 1).sequence());
    acknowledging = stream->Write(ack);
  }
  if (!acknowledging) context->TryCancel();
  const grpc::Status ended = stream->Finish();
  // Unlinked: what is cached may miss an invalidation from now on.
  {
    std::lock_guard<std::mutex> lock(status_mutex_);
    status_ = absl::UnavailableError(absl::StrCat(
        "device IOTLB of ", options_.device_id, " is unlinked (",
        ended.ok() ? "the broker closed the link" : ended.error_message(), "); relink it"));
  }
  cache_.InvalidateAll();
}

void DeviceIotlb::Apply(const v1::DeviceIotlbInvalidation& notice) {
  const v1::Invalidation& invalidation = notice.invalidation();
  if (notice.flush_pending()) {
    cache_.MarkUnmapped(invalidation.iova(), invalidation.size());
  } else if (invalidation.scope() == v1::Invalidation::SCOPE_RANGE) {
    cache_.InvalidateRange(invalidation.iova(), invalidation.size());
  } else {
    cache_.InvalidateAll();  // this device's entries, or its whole domain's
  }
}

absl::StatusOr<v1::TranslateResponse> DeviceIotlb::Translate(uint64_t iova, uint64_t size,
                                                             DmaAccess access) {
  if (size == 0) return absl::InvalidArgumentError("size is 0");
  if (iova + (size - 1) < iova) {
    return absl::OutOfRangeError(absl::StrCat("iova 0x", absl::Hex(iova), " + size ", size,
                                              " overflows 64 bits"));
  }
  if (absl::Status status = link_status(); !status.ok()) return status;
  v1::TranslateResponse response;
  v1::MappingKind kind = v1::MAPPING_KIND_TRANSLATED;  // the first page's
  bool all_hits = true;
  bool stale = false;
  const uint64_t last = iova + (size - 1);
  for (uint64_t cursor = iova; cursor <= last;) {
    const uint64_t page = cursor & ~(kPage - 1);
    absl::StatusOr<v1::TranslateResponse> translated = TranslatePage(page, access);
    if (!translated.ok() || translated->has_fault()) return translated;
    if (cursor == iova && !translated->iotlb_hit()) kind = translated->kind();
    all_hits = all_hits && translated->iotlb_hit();
    stale = stale || translated->stale();
    const uint64_t piece_last = std::min(last, page + (kPage - 1));
    AppendSegment(translated->segments(0).phys() + (cursor - page), piece_last - cursor + 1,
                  response);
    if (piece_last == last) break;
    cursor = piece_last + 1;
  }
  response.set_kind(kind);
  response.set_iotlb_hit(all_hits);
  response.set_stale(stale);
  return response;
}

absl::StatusOr<v1::TranslateResponse> DeviceIotlb::TranslatePage(uint64_t iova_page,
                                                                 DmaAccess access) {
  if (std::optional<TranslationCache::CachedPage> cached = cache_.Lookup(iova_page, access)) {
    v1::TranslateResponse page;
    AppendSegment(cached->phys_page, kPage, page);
    page.set_iotlb_hit(true);
    page.set_stale(cached->stale);
    return page;
  }
  const uint64_t token = cache_.FillToken();
  v1::TranslateRequest request;
  request.set_device_id(options_.device_id);
  request.set_iova(iova_page);
  request.set_size(kPage);
  request.set_access(ToProto(access));
  absl::StatusOr<v1::TranslateResponse> page = broker_.Translate(request);
  if (!page.ok()) return page;
  // Only page-table translations are invalidated by range: identity and
  // bypass pages are asked for each time, and a stale answer (fast) is not
  // worth keeping.
  if (!page->has_fault() && !page->stale() && page->segments_size() == 1 &&
      page->kind() == v1::MAPPING_KIND_TRANSLATED) {
    cache_.Insert(token, iova_page, page->segments(0).phys(), access);
  }
  page->set_iotlb_hit(false);  // the broker's IOTLB is not this cache
  return page;
}

}  // namespace iommu_broker::client
