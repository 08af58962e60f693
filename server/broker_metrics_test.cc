// The broker's /metrics, scraped over HTTP from a broker running in-process:
// what the data path, the engine and the RPC interceptor count, with and
// without the domain label.
#include "server/broker_metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <memory>
#include <string>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "iommu_broker/v1/config.pb.h"
#include "tests/server/test_broker.h"

namespace iommu_broker {
namespace {

using ::iommu_broker::testing::ExpectOk;
using ::iommu_broker::testing::TestBroker;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kDevice[] = "0000:3b:00.0";

// GET /metrics from 127.0.0.1:`port`; the body, or "" on any failure.
std::string Scrape(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return "";
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string response;
  if (connect(fd, reinterpret_cast<const sockaddr*>(&address), sizeof(address)) == 0) {
    const std::string request = "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    if (write(fd, request.data(), request.size()) == static_cast<ssize_t>(request.size())) {
      char buffer[4096];
      for (ssize_t n; (n = read(fd, buffer, sizeof(buffer))) > 0;) response.append(buffer, n);
    }
  }
  close(fd);
  const size_t body = response.find("\r\n\r\n");
  return body == std::string::npos ? "" : response.substr(body + 4);
}

class BrokerMetricsTest : public ::testing::Test {
 protected:
  void Start(bool domain_label) {
    v1::BrokerConfig config;
    config.set_metrics_domain_label(domain_label);
    broker_ = TestBroker::StartWithMetrics(config);
    ASSERT_NE(broker_, nullptr);
    ASSERT_GT(broker_->server().metrics_port(), 0);
    v1::DomainSpec domain;
    domain.set_id("vm1");
    domain.set_policy(v1::POLICY_PARANOID);
    broker_->CreateDomainWithDevice(domain, kDevice);
  }

  using Stub = v1::IommuBroker::Stub;

  v1::MapRequest MapOf(const std::string& device, uint64_t phys) {
    v1::MapRequest map;
    map.set_device_id(device);
    map.set_phys(phys);
    map.set_size(0x1000);
    map.mutable_permissions()->set_read(true);
    return map;
  }
  v1::TranslateRequest TranslateOf(uint64_t iova) {
    v1::TranslateRequest translate;
    translate.set_device_id(kDevice);
    translate.set_iova(iova);
    translate.set_size(8);
    translate.set_access(v1::ACCESS_READ);
    return translate;
  }
  // A map, a translation, an unmap, a faulting translation, and a map for
  // an unknown device.
  void RunScenario() {
    v1::MapResponse mapped;
    ExpectOk(broker_->Call(&Stub::Map, MapOf(kDevice, 0x9000), &mapped));
    ExpectOk(broker_->Call(&Stub::Translate, TranslateOf(mapped.iova())));
    v1::UnmapRequest unmap;
    unmap.set_device_id(kDevice);
    unmap.set_iova(mapped.iova());
    unmap.set_size(0x1000);
    ExpectOk(broker_->Call(&Stub::Unmap, unmap));
    ExpectOk(broker_->Call(&Stub::Translate, TranslateOf(mapped.iova())));  // faults: not mapped
    EXPECT_EQ(broker_->Call(&Stub::Map, MapOf("0000:99:00.0", 0x9000)).error_code(),
              grpc::StatusCode::NOT_FOUND);
  }

  std::string Metrics() { return Scrape(broker_->server().metrics_port()); }

  std::unique_ptr<TestBroker> broker_;
};

TEST_F(BrokerMetricsTest, CountsOperationsFlushesFaultsAndRpcs) {
  Start(/*domain_label=*/false);
  RunScenario();
  const std::string metrics = Metrics();
  EXPECT_THAT(metrics, HasSubstr(
      R"(iommu_broker_operations_total{operation="map",policy="paranoid",result="ok"} 1)"));
  EXPECT_THAT(metrics, HasSubstr(
      R"(iommu_broker_operations_total{operation="translate",policy="paranoid",result="ok"} 1)"));
  EXPECT_THAT(metrics, HasSubstr(
      R"(iommu_broker_operations_total{operation="translate",policy="paranoid",result="fault"} 1)"));
  EXPECT_THAT(metrics, HasSubstr(
      R"(iommu_broker_operations_total{operation="map",policy="none",result="not_found"} 1)"));
  // A unary call's map and unmap are always timed.
  EXPECT_THAT(metrics, HasSubstr(
      R"(iommu_broker_operation_latency_seconds_count{operation="unmap",policy="paranoid"} 1)"));
  EXPECT_THAT(metrics, HasSubstr(
      R"(iommu_broker_flush_latency_seconds_count{policy="paranoid",kind="sync_unmap"} 1)"));
  EXPECT_THAT(metrics, HasSubstr(
      R"(iommu_broker_flush_latency_seconds_bucket{policy="paranoid",kind="sync_unmap",le="+Inf"} 1)"));
  EXPECT_THAT(metrics, HasSubstr(R"(iommu_broker_faults_total{reason="not_mapped"} 1)"));
  EXPECT_THAT(metrics, HasSubstr(R"(iommu_broker_dma_api_violations_total{kind="dma_after_unmap"} 1)"));
  EXPECT_THAT(metrics, HasSubstr(R"(iommu_broker_iotlb_lookups_total{policy="paranoid",result="miss"} 2)"));
  EXPECT_THAT(metrics, HasSubstr(R"(iommu_broker_stale_translations_total{policy="paranoid"} 0)"));
  EXPECT_THAT(metrics, HasSubstr(R"(iommu_broker_domains{policy="paranoid"} 1)"));
  EXPECT_THAT(metrics, HasSubstr(R"(iommu_broker_devices{state="attached"} 1)"));
  EXPECT_THAT(metrics, HasSubstr(R"(iommu_broker_rpcs_total{method="Map",code="OK"} 1)"));
  EXPECT_THAT(metrics, HasSubstr(R"(iommu_broker_rpcs_total{method="Map",code="NOT_FOUND"} 1)"));
  EXPECT_THAT(metrics, HasSubstr(R"(iommu_broker_rpc_latency_seconds_count{method="Translate"} 2)"));
  EXPECT_THAT(metrics, HasSubstr(R"(iommu_broker_build_info{version=")"));
  EXPECT_THAT(metrics, Not(HasSubstr("domain=")));
}

TEST_F(BrokerMetricsTest, TheDomainLabelSplitsDomainScopedSeries) {
  Start(/*domain_label=*/true);
  ExpectOk(broker_->Call(&Stub::Map, MapOf(kDevice, 0x9000)));
  const std::string metrics = Metrics();
  EXPECT_THAT(metrics, HasSubstr(R"(iommu_broker_live_mappings{domain="vm1",policy="paranoid"} 1)"));
  EXPECT_THAT(metrics, HasSubstr(
      R"(iommu_broker_iova_bytes{domain="vm1",policy="paranoid",state="allocated"} 4096)"));
  // Operations are counted by policy only.
  EXPECT_THAT(metrics, HasSubstr(
      R"(iommu_broker_operations_total{operation="map",policy="paranoid",result="ok"} 1)"));
}

TEST_F(BrokerMetricsTest, CountersKeepADestroyedDomainsCounts) {
  Start(/*domain_label=*/false);
  RunScenario();
  v1::DestroyDomainRequest destroy;
  destroy.set_domain_id("vm1");
  destroy.set_force(true);
  ExpectOk(broker_->Call(&Stub::DestroyDomain, destroy));
  const std::string metrics = Metrics();
  EXPECT_THAT(metrics, HasSubstr(R"(iommu_broker_domains{policy="paranoid"} 0)"));
  EXPECT_THAT(metrics, HasSubstr(R"(iommu_broker_iotlb_lookups_total{policy="paranoid",result="miss"} 2)"));
  EXPECT_THAT(metrics, HasSubstr(R"(iommu_broker_dma_api_violations_total{kind="dma_after_unmap"} 1)"));
}

TEST_F(BrokerMetricsTest, OpenStreamsAreCountedUntilTheyEnd) {
  Start(/*domain_label=*/false);
  {
    grpc::ClientContext context;
    std::unique_ptr<grpc::ClientReaderWriter<v1::BatchRequest, v1::BatchResponse>> stream =
        broker_->stub().Batch(&context);
    v1::BatchRequest request;
    *request.add_operations()->mutable_map() = MapOf(kDevice, 0x9000);
    v1::BatchResponse response;
    ASSERT_TRUE(stream->Write(request) && stream->Read(&response));  // the stream is open
    EXPECT_THAT(Metrics(), HasSubstr(R"(iommu_broker_streams_in_flight{method="Batch"} 1)"));
    stream->WritesDone();
    ASSERT_TRUE(stream->Finish().ok());
  }
  EXPECT_THAT(Metrics(), HasSubstr(R"(iommu_broker_rpcs_total{method="Batch",code="OK"} 1)"));
  // The server lets go of a call shortly after its status went out. (Bounded
  // only so a bug cannot hang.)
  const std::string closed = R"(iommu_broker_streams_in_flight{method="Batch"} 0)";
  const absl::Time give_up = absl::Now() + absl::Seconds(30);
  while (Metrics().find(closed) == std::string::npos && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_THAT(Metrics(), HasSubstr(closed));
}

}  // namespace
}  // namespace iommu_broker
