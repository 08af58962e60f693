// TestBroker runs a BrokerServer in-process on an ephemeral port for
// integration tests, with a channel and an IommuBroker stub connected to it.
//
//   std::unique_ptr<TestBroker> broker = TestBroker::Start(config);
//   ASSERT_NE(broker, nullptr);
//   std::unique_ptr<grpc::ClientContext> context = ContextWithDeadline();
//   grpc::Status status = broker->stub().GetDomain(context.get(), request, &domain);
//
// The destructor shuts the broker down (without grace).
//
// Thread-safety: stub() and channel() may be used from any thread (gRPC's
// are thread-safe); server().Shutdown may run on any thread.
#ifndef IOMMU_BROKER_TESTS_SERVER_TEST_BROKER_H_
#define IOMMU_BROKER_TESTS_SERVER_TEST_BROKER_H_

#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "grpcpp/channel.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"
#include "gtest/gtest.h"
#include "iommu_broker/v1/config.pb.h"
#include "iommu_broker/v1/iommu_broker.grpc.pb.h"
#include "server/broker_server.h"
#include "server/log.h"

namespace iommu_broker::testing {

// Every client call carries this deadline, so a server bug fails a test
// instead of hanging it. It bounds waiting only; no test asserts on time.
inline constexpr std::chrono::seconds kCallTimeout{10};

inline std::chrono::system_clock::time_point CallDeadline() {
  return std::chrono::system_clock::now() + kCallTimeout;
}

inline std::unique_ptr<grpc::ClientContext> ContextWithDeadline() {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(CallDeadline());
  return context;
}

// A test failure naming the code and message unless `status` is OK.
inline void ExpectOk(const grpc::Status& status) {
  EXPECT_TRUE(status.ok()) << status.error_code() << ": " << status.error_message();
}

class TestBroker final {
 public:
  // Starts a broker from `config` on 127.0.0.1:0 with metrics disabled (the
  // config's addresses are replaced). Returns null, with a test failure, if
  // the broker refuses to start.
  static std::unique_ptr<TestBroker> Start(v1::BrokerConfig config = {}) {
    config.set_metrics_listen_address("none");
    return Launch(std::move(config));
  }
  // The same with /metrics served on an ephemeral loopback port
  // (server().metrics_port()).
  static std::unique_ptr<TestBroker> StartWithMetrics(v1::BrokerConfig config = {}) {
    config.set_metrics_listen_address("127.0.0.1:0");
    return Launch(std::move(config));
  }

  ~TestBroker() {
    stub_.reset();
    channel_.reset();
    if (server_ != nullptr) server_->Shutdown(absl::ZeroDuration());
  }
  TestBroker(const TestBroker&) = delete;
  TestBroker& operator=(const TestBroker&) = delete;

  BrokerServer& server() { return *server_; }
  v1::IommuBroker::Stub& stub() { return *stub_; }

  // Calls a unary method of stub() with the test deadline; the response is
  // dropped when `response` is null.
  template <typename Request, typename Response>
  grpc::Status Call(grpc::Status (v1::IommuBroker::Stub::*method)(grpc::ClientContext*,
                                                                   const Request&, Response*),
                    const Request& request, Response* response = nullptr) {
    Response ignored;
    std::unique_ptr<grpc::ClientContext> context = ContextWithDeadline();
    return (stub().*method)(context.get(), request, response ? response : &ignored);
  }

  // Creates `domain` and registers `device_id` attached to it; a test
  // failure for each call the broker refuses.
  void CreateDomainWithDevice(const v1::DomainSpec& domain, const std::string& device_id) {
    v1::CreateDomainRequest create;
    *create.mutable_domain() = domain;
    v1::RegisterDeviceRequest device;
    device.mutable_device()->set_id(device_id);
    v1::AttachDeviceRequest attach;
    attach.set_device_id(device_id);
    attach.set_domain_id(domain.id());
    for (const grpc::Status& status : {Call(&v1::IommuBroker::Stub::CreateDomain, create),
                                       Call(&v1::IommuBroker::Stub::RegisterDevice, device),
                                       Call(&v1::IommuBroker::Stub::AttachDevice, attach)}) {
      ExpectOk(status);
    }
  }
  const std::shared_ptr<grpc::Channel>& channel() const { return channel_; }
  std::string target() const { return absl::StrCat("127.0.0.1:", server_->port()); }

  // A channel with a TCP connection of its own (gRPC otherwise shares
  // connections between channels with equal arguments), so that a test can
  // drop it or give it its own health checking without touching others.
  std::shared_ptr<grpc::Channel> NewChannel(grpc::ChannelArguments args = {}) const {
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    return grpc::CreateCustomChannel(target(), grpc::InsecureChannelCredentials(), args);
  }

 private:
  TestBroker() = default;

  static std::unique_ptr<TestBroker> Launch(v1::BrokerConfig config) {
    config.set_listen_address("127.0.0.1:0");
    std::unique_ptr<TestBroker> broker(new TestBroker());
    absl::StatusOr<std::unique_ptr<BrokerServer>> server = BrokerServer::Start(config, broker->log_);
    if (!server.ok()) {
      ADD_FAILURE() << "the broker did not start: " << server.status();
      return nullptr;
    }
    broker->server_ = *std::move(server);
    broker->channel_ = broker->NewChannel();
    broker->stub_ = v1::IommuBroker::NewStub(broker->channel_);
    return broker;
  }

  // Only errors: the admin audit lines of hundreds of calls would bury a
  // failure's output. Declared first, so it outlives the server.
  Logger log_{stderr, LogLevel::kError};
  std::unique_ptr<BrokerServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::IommuBroker::Stub> stub_;
};

}  // namespace iommu_broker::testing

#endif  // IOMMU_BROKER_TESTS_SERVER_TEST_BROKER_H_
