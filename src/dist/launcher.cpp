// The local launcher (launcher.h).
#include "specopt/dist/launcher.h"
#include "specopt/train/child_process.h"
#include "specopt/train/trainer.h"  // kExitInterrupted

#include "train/stop_signals.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

namespace specopt {
namespace dist {

// ---------------------------------------------------------------- launcher

int64_t free_loopback_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  TORCH_CHECK(fd >= 0, "launcher: socket() failed: ", std::strerror(errno));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
            ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0;
  ::close(fd);
  TORCH_CHECK(ok, "launcher: could not find a free port on 127.0.0.1");
  return ntohs(addr.sin_port);
}

namespace {
// SIGINT / SIGTERM while the launcher waits: forwarded to every local rank
// (each finishes its step, the ranks agree on stopping, checkpoint and exit
// kExitInterrupted); a second signal is forwarded too (the ranks exit at once)
// and then ends the launcher by that signal. The ranks run in their own
// process group, so a terminal's Ctrl-C reaches them once, through here.
constexpr int64_t kMaxLocalRanks = 256;
std::atomic<pid_t> g_rank_pids[kMaxLocalRanks];
std::atomic<int> g_launch_stop{0};

extern "C" void on_launch_signal(int sig) {
  const bool second = g_launch_stop.exchange(sig) != 0;
  for (auto& pid : g_rank_pids) {
    const pid_t p = pid.load();
    if (p > 0) ::kill(p, sig);
  }
  if (second) {
    ::signal(sig, SIG_DFL);
    ::raise(sig);
  }
}
}  // namespace

namespace {

// The options of a launch; errors name the bad option.
void check_launch_options(const std::vector<std::string>& args, const LaunchOptions& o) {
  TORCH_CHECK(o.nproc() >= 1, "--nproc must be >= 1, got ", o.nproc());
  TORCH_CHECK(o.nproc() <= kMaxLocalRanks, "--nproc must be <= ", kMaxLocalRanks, ", got ", o.nproc());
  TORCH_CHECK(o.nnodes() >= 1, "--nnodes must be >= 1, got ", o.nnodes());
  TORCH_CHECK(o.node_rank() >= 0 && o.node_rank() < o.nnodes(), "--node-rank ", o.node_rank(),
              " is outside [0, nnodes=", o.nnodes(), ")");
  TORCH_CHECK(!args.empty(), "launcher: no command to run in the ranks");
  TORCH_CHECK(o.master_port() > 0 || o.nnodes() == 1,
              "--master-port must be given when running on several machines");
}

// Starts this node's ranks (pids in local-rank order). When one cannot be
// started, those already started are stopped: they would wait for it at the
// rendezvous.
std::vector<pid_t> start_ranks(const std::vector<std::string>& args, const LaunchOptions& o) {
  const int64_t port = o.master_port() > 0 ? o.master_port() : free_loopback_port();
  const int64_t world = o.nproc() * o.nnodes();
  int64_t threads = o.threads_per_rank();
  if (threads <= 0) {
    threads = std::max<int64_t>(1, static_cast<int64_t>(std::thread::hardware_concurrency()) / o.nproc());
  }
  const std::string self = self_executable();
  std::vector<pid_t> pids;
  for (int64_t local = 0; local < o.nproc(); ++local) {
    const int64_t rank = o.node_rank() * o.nproc() + local;
    // Each rank dies with the launcher (child_process.h) and, when the
    // launcher forwards signals, runs in its own process group.
    ChildOptions child;
    child.executable = self;
    child.args = args;
    child.threads = threads;
    child.own_process_group = o.handle_signals();
    child.env = {{"RANK", std::to_string(rank)},
                 {"LOCAL_RANK", std::to_string(local)},
                 {"WORLD_SIZE", std::to_string(world)},
                 {"MASTER_ADDR", o.master_addr()},
                 {"MASTER_PORT", std::to_string(port)},
                 {"SPECOPT_DIST_TIMEOUT", std::to_string(o.timeout_s())}};
    pid_t pid = -1;
    try {
      pid = start_child(child, "rank " + std::to_string(rank));
    } catch (...) {
      for (pid_t p : pids) ::kill(p, SIGTERM);
      for (pid_t p : pids) wait_child(p, "a rank");
      throw;
    }
    pids.push_back(pid);
    g_rank_pids[local] = pid;
  }
  return pids;
}

// Waits for the ranks; the first that fails takes the others down with it
// (SIGTERM, then SIGKILL after kill_grace_s). Returns the launch's exit status.
int wait_ranks(std::vector<pid_t> pids, const LaunchOptions& o) {
  int result = 0;
  size_t running = pids.size();
  bool terminating = false;
  auto deadline = std::chrono::steady_clock::time_point::max();
  while (running > 0) {
    int status = 0;
    pid_t pid = ::waitpid(-1, &status, terminating ? WNOHANG : 0);
    if (pid == 0) {  // terminating: nothing exited yet
      if (std::chrono::steady_clock::now() > deadline) {
        for (pid_t p : pids)
          if (p > 0) ::kill(p, SIGKILL);
        deadline = std::chrono::steady_clock::time_point::max();
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      continue;
    }
    if (pid < 0) {
      if (errno == EINTR) continue;
      break;
    }
    auto it = std::find(pids.begin(), pids.end(), pid);
    if (it == pids.end()) continue;
    const int64_t local = it - pids.begin();
    *it = -1;
    g_rank_pids[local] = 0;
    --running;
    int code = exit_status_code(status);
    // After a forwarded signal every rank checkpoints and exits
    // kExitInterrupted: wait for the others instead of stopping them.
    const bool interrupted = g_launch_stop.load() != 0 && code == kExitInterrupted;
    if (interrupted && result == 0) result = code;
    if (code != 0 && !terminating && !interrupted) {
      std::fprintf(stderr, "specopt launch: rank %lld exited with status %d; stopping the other ranks\n",
                   static_cast<long long>(o.node_rank() * o.nproc() + local), code);
      result = code;
      terminating = true;
      for (pid_t p : pids)
        if (p > 0) ::kill(p, SIGTERM);
      deadline = std::chrono::steady_clock::now() +
                 std::chrono::milliseconds(static_cast<int64_t>(o.kill_grace_s() * 1000));
    }
  }
  return result;
}

}  // namespace

int launch_local(const std::vector<std::string>& args, const LaunchOptions& o) {
  check_launch_options(args, o);
  for (auto& p : g_rank_pids) p = 0;
  g_launch_stop = 0;
  const detail::ScopedStopHandler stop_handler(o.handle_signals(), on_launch_signal);
  std::vector<pid_t> pids = start_ranks(args, o);
  // A signal that arrived while forking did not reach the later ranks.
  if (const int sig = g_launch_stop.load(); sig != 0)
    for (pid_t p : pids) ::kill(p, sig);
  return wait_ranks(std::move(pids), o);
}

std::vector<std::string> own_arguments_without(const std::string& option) {
  std::ifstream in("/proc/self/cmdline", std::ios::binary);
  TORCH_CHECK(in.good(), "cannot read /proc/self/cmdline");
  std::vector<std::string> args;
  std::string arg;
  while (std::getline(in, arg, '\0')) args.push_back(arg);
  std::vector<std::string> out;
  for (size_t i = 1; i < args.size(); ++i) {
    if (args[i] == option) {
      ++i;  // and its value
    } else if (args[i].rfind(option + "=", 0) != 0) {
      out.push_back(args[i]);
    }
  }
  return out;
}

}  // namespace dist
}  // namespace specopt
