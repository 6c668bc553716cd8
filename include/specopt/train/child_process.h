// Child processes of the study runner and the local launcher: one way to
// start them (fork + execve, so that PR_SET_PDEATHSIG ties each child to the
// thread that started it: a parent killed by SIGKILL leaves no child running)
// and to wait for them, and one resolver of this executable.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace specopt {

struct ChildOptions {
  std::string executable;          // a path, or a name looked up in PATH (as execvp)
  std::vector<std::string> args;   // without argv[0] (which is `executable`)
  // Set in the child's environment (replacing the inherited value).
  std::vector<std::pair<std::string, std::string>> env;
  // > 0: OMP_NUM_THREADS and OPENBLAS_NUM_THREADS of the child, so that
  // parallel children do not oversubscribe the cores.
  int64_t threads = 0;
  // The child leads its own process group: a terminal's Ctrl-C reaches the
  // parent only, which forwards it once.
  bool own_process_group = false;
  std::string log_path;  // non-empty: stdout and stderr appended to this file
};

// Starts the child; returns its PID once it has exec'd. A failure to start it
// (fork, or exec: a missing executable) is a c10::Error naming the executable
// and `what` (e.g. "run Adam_lr0.001_s0").
pid_t start_child(const ChildOptions& options, const std::string& what);

// The exit status of a waited-for child as a shell reports it: the exit code,
// or 128 + the signal that killed it.
int exit_status_code(int wait_status);

// Waits for `pid` (retrying on EINTR) and returns exit_status_code.
int wait_child(pid_t pid, const std::string& what);

// The absolute path of this executable (/proc/self/exe).
std::string self_executable();

}  // namespace specopt
