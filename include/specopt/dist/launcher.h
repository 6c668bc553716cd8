// The local launcher of `specopt launch` / `train --nproc`: starts the ranks
// of this machine as child processes and waits for them.
#pragma once

#include <torch/arg.h>

#include <cstdint>
#include <string>
#include <vector>

namespace specopt {
namespace dist {

struct LaunchOptions {
  TORCH_ARG(int64_t, nproc) = 2;            // ranks on this machine
  TORCH_ARG(int64_t, nnodes) = 1;           // machines
  TORCH_ARG(int64_t, node_rank) = 0;        // this machine's index
  TORCH_ARG(std::string, master_addr) = "127.0.0.1";
  TORCH_ARG(int64_t, master_port) = 0;      // 0: a free port (single machine only)
  TORCH_ARG(double, timeout_s) = 60.0;      // SPECOPT_DIST_TIMEOUT of the ranks
  TORCH_ARG(int64_t, threads_per_rank) = 0; // 0: cores / nproc (at least 1)
  // Seconds the remaining ranks get after SIGTERM before SIGKILL.
  TORCH_ARG(double, kill_grace_s) = 5.0;
  // Forward SIGINT / SIGTERM to the ranks while waiting (the ranks then run in
  // their own process group): the first lets every rank checkpoint and exit
  // kExitInterrupted, which launch_local returns; a second ends them and the
  // launcher at once. Set by the CLI; off in the library (the caller's handlers stay).
  TORCH_ARG(bool, handle_signals) = false;
};

// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0 and
// released): for single-machine rendezvous.
int64_t free_loopback_port();

// Starts nproc copies of this executable (/proc/self/exe) with `args` and
// the rank environment, waits for them, and returns 0 if all succeed. When
// one fails the others are terminated and its exit status is returned
// (128 + signal for a killed rank).
int launch_local(const std::vector<std::string>& args, const LaunchOptions& options);

// This process's arguments (from /proc/self/cmdline, without argv[0]) minus
// `option` and its value ("--opt V" or "--opt=V"): how `train --nproc N`
// restarts itself as N ranks.
std::vector<std::string> own_arguments_without(const std::string& option);

}  // namespace dist
}  // namespace specopt
