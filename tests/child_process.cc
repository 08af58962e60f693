#include "tests/child_process.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

extern char** environ;

namespace iommu_broker::testing {
namespace {

// How often the waits look again: they poll files and waitpid.
constexpr absl::Duration kPollInterval = absl::Milliseconds(10);

std::string ReadFile(const std::string& path) {
  std::ifstream file(path);
  std::stringstream content;
  content << file.rdbuf();
  return content.str();
}

// A null-terminated array pointing into `strings`, as exec wants.
std::vector<char*> Pointers(std::vector<std::string>& strings) {
  std::vector<char*> pointers;
  for (std::string& s : strings) pointers.push_back(s.data());
  pointers.push_back(nullptr);
  return pointers;
}

}  // namespace

std::vector<std::string> CurrentEnvironment() {
  std::vector<std::string> environment;
  for (char** entry = environ; *entry != nullptr; ++entry) environment.emplace_back(*entry);
  return environment;
}

ChildProcess::ChildProcess(absl::string_view dir, absl::string_view name,
                           std::vector<std::string> argv, std::vector<std::string> environment)
    : stdout_path_(absl::StrCat(dir, "/", name, ".out")),
      stderr_path_(absl::StrCat(dir, "/", name, ".err")) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, stdout_path_.c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, stderr_path_.c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0644);
  // gtest's and gRPC's threads may block signals; the child must not
  // inherit that, or a test's SIGTERM would never reach it.
  posix_spawnattr_t attributes;
  posix_spawnattr_init(&attributes);
  sigset_t none;
  sigemptyset(&none);
  posix_spawnattr_setsigmask(&attributes, &none);
  posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETSIGMASK);
  spawn_error_ = posix_spawn(&pid_, argv[0].c_str(), &actions, &attributes, Pointers(argv).data(),
                             Pointers(environment).data());
  posix_spawnattr_destroy(&attributes);
  posix_spawn_file_actions_destroy(&actions);
  if (spawn_error_ != 0) pid_ = -1;
}

ChildProcess::~ChildProcess() {
  if (pid_ > 0 && !wait_status_.has_value()) {
    kill(pid_, SIGKILL);
    int ignored = 0;
    waitpid(pid_, &ignored, 0);
  }
}

std::string ChildProcess::Stdout() const { return ReadFile(stdout_path_); }

std::string ChildProcess::Stderr() const { return ReadFile(stderr_path_); }

bool ChildProcess::Signal(int signal_number) {
  // Once waited for, the pid may belong to another process.
  if (pid_ <= 0 || wait_status_.has_value()) return false;
  return kill(pid_, signal_number) == 0;
}

std::optional<int> ChildProcess::WaitForExit(absl::Duration timeout) {
  const absl::Time give_up = absl::Now() + timeout;
  while (pid_ > 0 && !wait_status_.has_value()) {
    int status = 0;
    const pid_t reaped = waitpid(pid_, &status, WNOHANG);
    if (reaped == pid_) {
      wait_status_ = status;
    } else if (reaped < 0 || absl::Now() >= give_up) {
      break;
    } else {
      absl::SleepFor(kPollInterval);
    }
  }
  return wait_status_;
}

bool ChildProcess::WaitForStdout(absl::string_view text, absl::Duration timeout) {
  return WaitForText(stdout_path_, text, timeout);
}

bool ChildProcess::WaitForStderr(absl::string_view text, absl::Duration timeout) {
  return WaitForText(stderr_path_, text, timeout);
}

bool ChildProcess::WaitForText(const std::string& path, absl::string_view text,
                               absl::Duration timeout) {
  const absl::Time give_up = absl::Now() + timeout;
  while (absl::Now() <= give_up) {
    if (absl::StrContains(ReadFile(path), text)) return true;
    // Ended: what it wrote is all there will be.
    if (WaitForExit(absl::ZeroDuration()).has_value()) {
      return absl::StrContains(ReadFile(path), text);
    }
    absl::SleepFor(kPollInterval);
  }
  return false;
}

int ExitCodeOf(std::optional<int> wait_status) {
  return wait_status.has_value() && WIFEXITED(*wait_status) ? WEXITSTATUS(*wait_status) : -1;
}

std::string DescribeWaitStatus(std::optional<int> wait_status) {
  if (!wait_status.has_value()) return "still running";
  const int status = *wait_status;
  if (WIFEXITED(status)) return absl::StrCat("exited with status ", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return absl::StrCat("killed by signal ", WTERMSIG(status));
  return absl::StrCat("wait status ", status);
}

}  // namespace iommu_broker::testing
