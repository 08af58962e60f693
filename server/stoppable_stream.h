// StoppableStream is a server stream the broker ends itself when it drains
// for shutdown (WatchEvents, LinkDeviceIotlb): BrokerService keeps the live
// ones and calls Stop() on each.
//
// Thread-safety: Stop() must be callable from any thread.
#ifndef IOMMU_BROKER_SERVER_STOPPABLE_STREAM_H_
#define IOMMU_BROKER_SERVER_STOPPABLE_STREAM_H_

namespace iommu_broker {

class StoppableStream {
 public:
  // Ends the stream with OK once what is in flight is done.
  virtual void Stop() = 0;

 protected:
  ~StoppableStream() = default;
};

}  // namespace iommu_broker

#endif  // IOMMU_BROKER_SERVER_STOPPABLE_STREAM_H_
