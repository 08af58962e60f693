// iommuctl's exit codes, for scripts and the container HEALTHCHECK:
//   0 the command did what it was asked (a translation fault included: it
//     is a result) and `health` found the broker SERVING;
//   1 the broker said no: an error reply, or `health` not SERVING;
//   2 the broker could not be reached;
//   3 the command line is wrong (usage errors, bad sizes or names, TLS files);
//   130 `bench` was stopped by SIGINT or SIGTERM: it printed the partial
//     report and removed its domain and devices (128 + SIGINT, as a shell
//     reports a command that Ctrl-C ended).
//
// Thread-safety: stateless functions.
#ifndef IOMMU_BROKER_CLIENT_IOMMUCTL_EXIT_CODE_H_
#define IOMMU_BROKER_CLIENT_IOMMUCTL_EXIT_CODE_H_

#include "absl/status/status.h"

namespace iommu_broker::iommuctl {

enum class ExitCode : int {
  kOk = 0,
  kRefused = 1,
  kUnreachable = 2,
  kInvalidArguments = 3,
  kInterrupted = 130,
};

// For a call that failed with `status`. UNAVAILABLE means no broker to ask
// (nothing listening, or one shutting down); DEADLINE_EXCEEDED means so too
// unless the channel had `connected`, when a broker took too long to answer.
ExitCode ExitCodeForCallError(const absl::Status& status, bool connected);

}  // namespace iommu_broker::iommuctl

#endif  // IOMMU_BROKER_CLIENT_IOMMUCTL_EXIT_CODE_H_
