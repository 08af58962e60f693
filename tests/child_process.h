// ChildProcess runs a binary as a child process for end-to-end tests: stdin
// from /dev/null, stdout and stderr captured in files, the default signal
// mask (whatever the test's threads block). A test waits for it to exit, for
// text in its output, or signals it.
//
//   TempDir dir("brokerd_test");
//   ChildProcess daemon(dir.path(), "brokerd", {IOMMU_BROKERD_PATH, "--listen=..."});
//   ASSERT_TRUE(daemon.started()) << "posix_spawn: " << daemon.spawn_error();
//   ASSERT_TRUE(daemon.WaitForStderr("event=serving")) << daemon.Stderr();
//   ASSERT_TRUE(daemon.Signal(SIGTERM));
//   const std::optional<int> status = daemon.WaitForExit();
//   EXPECT_EQ(ExitCodeOf(status), 0) << DescribeWaitStatus(status) << "\n" << daemon.Stderr();
//
// A process still running when its ChildProcess is destroyed is SIGKILLed
// and reaped. The waits are bounded only to keep a hung binary from hanging
// the test: no test should depend on how long anything takes.
//
// Thread-safety: not thread-safe; one thread uses a ChildProcess.
#ifndef IOMMU_BROKER_TESTS_CHILD_PROCESS_H_
#define IOMMU_BROKER_TESTS_CHILD_PROCESS_H_

#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace iommu_broker::testing {

// Generous: under AddressSanitizer on a busy 2-core machine start-up can
// take seconds. Only a hung process ever reaches it.
inline constexpr absl::Duration kChildProcessTimeout = absl::Seconds(60);

// This process's environment, as NAME=VALUE entries.
std::vector<std::string> CurrentEnvironment();

class ChildProcess final {
 public:
  // Starts argv[0] (a path, not searched for) with `argv` and `environment`
  // (NAME=VALUE entries); stdout goes to DIR/NAME.out, stderr to
  // DIR/NAME.err. See started() for whether it did.
  ChildProcess(absl::string_view dir, absl::string_view name, std::vector<std::string> argv,
               std::vector<std::string> environment = CurrentEnvironment());
  ~ChildProcess();
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  bool started() const { return pid_ > 0; }
  // posix_spawn's error number when started() is false.
  int spawn_error() const { return spawn_error_; }

  // Everything written so far.
  std::string Stdout() const;
  std::string Stderr() const;

  // Sends `signal_number`; false if the process was not started or has been
  // waited for.
  bool Signal(int signal_number);

  // The wait status (see waitpid(2)) once the process has ended, or nullopt
  // if it is still running after `timeout`.
  std::optional<int> WaitForExit(absl::Duration timeout = kChildProcessTimeout);

  // True once stdout (stderr) contains `text`; false at the timeout or if
  // the process ends without writing it.
  bool WaitForStdout(absl::string_view text, absl::Duration timeout = kChildProcessTimeout);
  bool WaitForStderr(absl::string_view text, absl::Duration timeout = kChildProcessTimeout);

 private:
  bool WaitForText(const std::string& path, absl::string_view text, absl::Duration timeout);

  std::string stdout_path_;
  std::string stderr_path_;
  pid_t pid_ = -1;
  int spawn_error_ = 0;
  std::optional<int> wait_status_;
};

// The exit code of a process that exited by itself; -1 if a signal killed
// it or it has not ended (nullopt).
int ExitCodeOf(std::optional<int> wait_status);

// "exited with status 2", "killed by signal 9" or "still running", for a
// failed expectation's message.
std::string DescribeWaitStatus(std::optional<int> wait_status);

}  // namespace iommu_broker::testing

#endif  // IOMMU_BROKER_TESTS_CHILD_PROCESS_H_
