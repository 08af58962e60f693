// Refusal is a stream reactor that ends its call at once with an error: how
// a streaming handler of gRPC's callback API answers a request it refuses
// (it must return a reactor either way).
//
//   return new Refusal<grpc::ServerWriteReactor<v1::Event>>(status);
//
// gRPC owns it until OnDone, which deletes it.
//
// Thread-safety: gRPC runs its reactions one at a time.
#ifndef IOMMU_BROKER_SERVER_REFUSAL_H_
#define IOMMU_BROKER_SERVER_REFUSAL_H_

#include "grpcpp/support/server_callback.h"
#include "grpcpp/support/status.h"

namespace iommu_broker {

template <typename Reactor>
class Refusal final : public Reactor {
 public:
  explicit Refusal(const grpc::Status& status) { this->Finish(status); }
  void OnDone() override { delete this; }
};

}  // namespace iommu_broker

#endif  // IOMMU_BROKER_SERVER_REFUSAL_H_
