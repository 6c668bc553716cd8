// Child processes (child_process.h).
#include "specopt/train/child_process.h"

#include <c10/util/Exception.h>

#include <fcntl.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <sstream>

extern char** environ;

namespace specopt {

namespace fs = std::filesystem;

namespace {

// The file execvp would run: `name` itself when it has a '/', else the first
// executable PATH entry (resolved before fork: the child may only make
// async-signal-safe calls).
std::string resolve_executable(const std::string& name) {
  if (name.find('/') != std::string::npos) return name;
  const char* path = std::getenv("PATH");
  std::stringstream dirs(path ? path : "/usr/local/bin:/usr/bin:/bin");
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    const std::string candidate = (dir.empty() ? std::string(".") : dir) + "/" + name;
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return name;  // execve fails with ENOENT, reported by start_child
}

// The parent's environment with `options`' variables replaced.
std::vector<std::string> child_environment(const ChildOptions& options) {
  std::vector<std::pair<std::string, std::string>> set = options.env;
  if (options.threads > 0) {
    set.emplace_back("OMP_NUM_THREADS", std::to_string(options.threads));
    set.emplace_back("OPENBLAS_NUM_THREADS", std::to_string(options.threads));
  }
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string var(*e);
    bool replaced = false;
    for (const auto& kv : set) replaced = replaced || var.rfind(kv.first + "=", 0) == 0;
    if (!replaced) env.push_back(var);
  }
  for (const auto& kv : set) env.push_back(kv.first + "=" + kv.second);
  return env;
}

std::vector<char*> pointers(std::vector<std::string>& strings) {
  std::vector<char*> out;
  for (auto& s : strings) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

}  // namespace

pid_t start_child(const ChildOptions& options, const std::string& what) {
  std::vector<std::string> argv_s{options.executable};
  argv_s.insert(argv_s.end(), options.args.begin(), options.args.end());
  std::vector<std::string> env_s = child_environment(options);
  std::vector<char*> argv = pointers(argv_s), envp = pointers(env_s);
  const std::string path = resolve_executable(options.executable);
  // A CLOEXEC pipe reports an exec failure to the parent.
  int pipe_fds[2];
  TORCH_CHECK(::pipe2(pipe_fds, O_CLOEXEC) == 0, "cannot start '", options.executable, "' for ", what,
              ": pipe: ", std::strerror(errno));
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid == 0) {
    // Child: async-signal-safe calls only. PR_SET_PDEATHSIG fires when the
    // forking thread ends; the caller's thread waits for this child, so it
    // outlives it.
    int err = 0;
    if (::prctl(PR_SET_PDEATHSIG, SIGTERM) != 0 || ::getppid() != parent) ::_exit(127);
    if (options.own_process_group) ::setpgid(0, 0);
    if (!options.log_path.empty()) {
      const int fd = ::open(options.log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (fd < 0 || ::dup2(fd, 1) < 0 || ::dup2(1, 2) < 0) err = errno;
      if (fd > 2) ::close(fd);
    }
    // The parent's handlers are reset by execve; its blocked set is not.
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    if (err == 0) {
      ::execve(path.c_str(), argv.data(), envp.data());
      err = errno;
    }
    const ssize_t ignored = ::write(pipe_fds[1], &err, sizeof(err));
    (void)ignored;
    ::_exit(127);
  }
  const int fork_err = errno;
  ::close(pipe_fds[1]);
  if (pid < 0) {
    ::close(pipe_fds[0]);
    TORCH_CHECK(false, "cannot start '", options.executable, "' for ", what, ": fork: ",
                std::strerror(fork_err));
  }
  int exec_err = 0;
  ssize_t n;
  while ((n = ::read(pipe_fds[0], &exec_err, sizeof(exec_err))) < 0 && errno == EINTR) {
  }
  ::close(pipe_fds[0]);
  if (n > 0) {
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    TORCH_CHECK(false, "cannot start '", options.executable, "' for ", what, ": ", std::strerror(exec_err));
  }
  return pid;
}

int exit_status_code(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 255;
}

int wait_child(pid_t pid, const std::string& what) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    TORCH_CHECK(errno == EINTR, "waitpid failed for ", what, ": ", std::strerror(errno));
  }
  return exit_status_code(status);
}

std::string self_executable() {
  std::error_code ec;
  const fs::path p = fs::read_symlink("/proc/self/exe", ec);
  TORCH_CHECK(!ec, "cannot resolve /proc/self/exe: ", ec.message());
  return p.string();
}

}  // namespace specopt
