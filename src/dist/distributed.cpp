// Data-parallel training on torch c10d: rendezvous, bucketed gradient
// all-reduce, sharded optimizer step, full-state checkpoints, launcher.
#include "specopt/dist/distributed.h"
#include "specopt/core/compat.h"
#include "specopt/core/update_rules.h"

#include "train/stop_signals.h"

// The c10d Gloo header includes Gloo's own headers (Debian: libgloo-dev; pip
// LibTorch ships them) and is compiled only under USE_C10D_GLOO, which
// LibTorch's CMake config normally exports. Gloo itself is inside
// libtorch_cpu. Without the headers, the "gloo" backend reports that it is
// missing instead of breaking the build.
#if __has_include(<gloo/config.h>)
#define SPECOPT_HAVE_GLOO 1
#ifndef USE_C10D_GLOO
#define USE_C10D_GLOO
#endif
#else
#define SPECOPT_HAVE_GLOO 0
#endif

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#if SPECOPT_HAVE_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#ifdef USE_C10D_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif
#include <torch/version.h>

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/serialize/archive.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <numeric>
#include <sstream>
#include <thread>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

namespace specopt {
namespace dist {
namespace {

using Seconds = std::chrono::duration<double>;

std::chrono::milliseconds to_ms(double seconds) {
  return std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000.0));
}

bool is_loopback(const std::string& addr) {
  return addr == "localhost" || addr.rfind("127.", 0) == 0 || addr == "::1";
}

int64_t parse_env_int(const char* name, const char* value) {
  char* end = nullptr;
  errno = 0;
  long long v = std::strtoll(value, &end, 10);
  TORCH_CHECK(errno == 0 && end != value && *end == '\0',
              "environment variable ", name, "='", value, "' is not an integer");
  return v;
}

}  // namespace

// ---------------------------------------------------------------- options

DistOptions options_from_env(DistOptions base) {
  if (const char* v = std::getenv("RANK")) base.rank(parse_env_int("RANK", v));
  if (const char* v = std::getenv("WORLD_SIZE")) base.world_size(parse_env_int("WORLD_SIZE", v));
  if (const char* v = std::getenv("MASTER_ADDR")) base.master_addr(v);
  if (const char* v = std::getenv("MASTER_PORT")) base.master_port(parse_env_int("MASTER_PORT", v));
  if (const char* v = std::getenv("SPECOPT_DIST_TIMEOUT")) {
    char* end = nullptr;
    double t = std::strtod(v, &end);
    TORCH_CHECK(end != v && *end == '\0' && t > 0,
                "environment variable SPECOPT_DIST_TIMEOUT='", v, "' is not a positive number of seconds");
    base.timeout_s(t);
  }
  return base;
}

bool launched_as_rank() {
  const char* v = std::getenv("WORLD_SIZE");
  return v != nullptr && parse_env_int("WORLD_SIZE", v) > 1;
}

// ---------------------------------------------------------------- communicator

struct Communicator::Impl {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<compat::CollectiveBackend> backend;
  std::string backend_name;

  void wait(const c10::intrusive_ptr<c10d::Work>& work, const char* what) {
    try {
      work->wait();
    } catch (const std::exception& e) {
      TORCH_CHECK(false, "distributed ", what, " failed (a peer rank died, hung past the timeout, or "
                  "the network broke): ", e.what());
    }
  }
};

Communicator::Communicator(const DistOptions& options)
    : options_(options), impl_(std::make_unique<Impl>()) {
  const auto& o = options_;
  TORCH_CHECK(o.world_size() >= 1, "world_size must be >= 1, got ", o.world_size());
  TORCH_CHECK(o.rank() >= 0 && o.rank() < o.world_size(), "rank ", o.rank(),
              " is outside [0, world_size=", o.world_size(), ")");
  TORCH_CHECK(o.master_port() > 0 && o.master_port() < 65536, "master_port ", o.master_port(),
              " is not a TCP port");
  TORCH_CHECK(o.timeout_s() > 0, "distributed timeout must be positive, got ", o.timeout_s(), " s");

  c10d::TCPStoreOptions store_options;
  store_options.port = static_cast<std::uint16_t>(o.master_port());
  store_options.isServer = o.rank() == 0;
  store_options.numWorkers = static_cast<std::size_t>(o.world_size());
  store_options.waitWorkers = true;  // rank 0 returns once all ranks connected
  store_options.timeout = to_ms(o.timeout_s());
  compat::portable_store_backend(store_options);
  try {
    auto tcp = c10::make_intrusive<c10d::TCPStore>(o.master_addr(), store_options);
    impl_->store = c10::make_intrusive<c10d::PrefixStore>("specopt", tcp);
  } catch (const std::exception& e) {
    TORCH_CHECK(false, "rank ", o.rank(), " of ", o.world_size(),
                ": rendezvous through the TCPStore at ", o.master_addr(), ":", o.master_port(),
                " failed within ", o.timeout_s(), " s (a rank that never arrived, or a port in use): ",
                e.what());
  }

  std::string backend = o.backend();
  const bool cuda = o.device().rfind("cuda", 0) == 0;
  if (backend == "auto") backend = cuda ? "nccl" : "gloo";
  if (backend == "gloo") {
#if SPECOPT_HAVE_GLOO
    auto gloo_options = c10d::ProcessGroupGloo::Options::create(to_ms(o.timeout_s()));
    if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME")) {
      gloo_options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
    } else if (is_loopback(o.master_addr())) {
      gloo_options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
    } else {
      gloo_options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
    gloo_options->threads = 2;
    try {
      impl_->backend = c10::make_intrusive<c10d::ProcessGroupGloo>(
          impl_->store, static_cast<int>(o.rank()), static_cast<int>(o.world_size()), gloo_options);
    } catch (const std::exception& e) {
      TORCH_CHECK(false, "rank ", o.rank(), ": creating the Gloo process group failed within ",
                  o.timeout_s(), " s: ", e.what());
    }
#else
    TORCH_CHECK(false, "backend 'gloo' requested but specopt was built without the Gloo headers "
                "(install libgloo-dev and rebuild)");
#endif
  } else if (backend == "nccl") {
#ifdef USE_C10D_NCCL
    auto nccl_options = c10d::ProcessGroupNCCL::Options::create();
    nccl_options->timeout = to_ms(o.timeout_s());
    impl_->backend = c10::make_intrusive<c10d::ProcessGroupNCCL>(
        impl_->store, static_cast<int>(o.rank()), static_cast<int>(o.world_size()), nccl_options);
#else
    TORCH_CHECK(false, "backend 'nccl' requested (device '", o.device(),
                "') but LibTorch was built without NCCL (USE_C10D_NCCL)");
#endif
  } else {
    TORCH_CHECK(false, "unknown distributed backend '", o.backend(), "' (use gloo, nccl or auto)");
  }
  impl_->backend_name = backend;
}

Communicator::~Communicator() = default;

std::string Communicator::backend_name() const { return impl_->backend_name; }

void Communicator::all_reduce_mean(const std::vector<at::Tensor>& tensors, int64_t bucket_bytes) {
  if (tensors.empty()) return;
  // Buckets: consecutive tensors of one dtype up to bucket_bytes.
  std::vector<std::vector<size_t>> buckets;
  int64_t bytes = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& t = tensors[i];
    int64_t b = t.numel() * static_cast<int64_t>(t.element_size());
    bool fresh = buckets.empty() || bytes + b > bucket_bytes ||
                 tensors[buckets.back().front()].scalar_type() != t.scalar_type();
    if (fresh) {
      buckets.emplace_back();
      bytes = 0;
    }
    buckets.back().push_back(i);
    bytes += b;
  }
  std::vector<at::Tensor> flats;
  std::vector<c10::intrusive_ptr<c10d::Work>> works;
  for (const auto& bucket : buckets) {
    std::vector<at::Tensor> views;
    for (size_t i : bucket) views.push_back(tensors[i].reshape({-1}));
    std::vector<at::Tensor> flat{at::cat(views)};
    c10d::AllreduceOptions opts;
    opts.reduceOp = c10d::ReduceOp::SUM;
    works.push_back(impl_->backend->allreduce(flat, opts));
    flats.push_back(flat[0]);
  }
  const double inv = 1.0 / static_cast<double>(world_size());
  for (size_t k = 0; k < buckets.size(); ++k) {
    impl_->wait(works[k], "gradient all-reduce");
    flats[k].mul_(inv);
    int64_t offset = 0;
    for (size_t i : buckets[k]) {
      auto& t = const_cast<at::Tensor&>(tensors[i]);
      t.copy_(flats[k].narrow(0, offset, t.numel()).view_as(t));
      offset += t.numel();
    }
  }
}

void Communicator::all_reduce_sum(const at::Tensor& tensor) {
  std::vector<at::Tensor> t{tensor};
  c10d::AllreduceOptions opts;
  opts.reduceOp = c10d::ReduceOp::SUM;
  impl_->wait(impl_->backend->allreduce(t, opts), "metric all-reduce");
}

void Communicator::broadcast(const std::vector<at::Tensor>& tensors, int64_t root) {
  if (tensors.empty()) return;
  std::map<at::ScalarType, std::vector<size_t>> by_dtype;
  for (size_t i = 0; i < tensors.size(); ++i) by_dtype[tensors[i].scalar_type()].push_back(i);
  for (const auto& entry : by_dtype) {
    std::vector<at::Tensor> views;
    for (size_t i : entry.second) views.push_back(tensors[i].detach().reshape({-1}));
    std::vector<at::Tensor> flat{at::cat(views)};
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    impl_->wait(impl_->backend->broadcast(flat, opts), "parameter broadcast");
    if (rank() == root) continue;  // the root's tensors are the source
    int64_t offset = 0;
    for (size_t i : entry.second) {
      at::Tensor t = tensors[i].detach();
      t.copy_(flat[0].narrow(0, offset, t.numel()).view_as(t));
      offset += t.numel();
    }
  }
}

void Communicator::barrier() {
  impl_->wait(impl_->backend->barrier(), "barrier");
}

std::vector<std::string> Communicator::gather_bytes(const std::string& mine, int64_t root) {
  const int64_t n = world_size();
  // Sizes by all-reduce of one-hot vectors, then each rank's bytes by a
  // broadcast from it (sizes differ per rank, which gather does not allow).
  std::vector<at::Tensor> sizes{at::zeros({n}, at::kLong)};
  sizes[0][rank()] = static_cast<int64_t>(mine.size());
  c10d::AllreduceOptions sum;
  sum.reduceOp = c10d::ReduceOp::SUM;
  impl_->wait(impl_->backend->allreduce(sizes, sum), "size exchange");
  std::vector<std::string> out;
  for (int64_t r = 0; r < n; ++r) {
    int64_t size = sizes[0][r].item<int64_t>();
    std::vector<at::Tensor> buf{at::empty({std::max<int64_t>(size, 1)}, at::kByte)};
    if (r == rank()) std::memcpy(buf[0].data_ptr(), mine.data(), mine.size());
    c10d::BroadcastOptions opts;
    opts.rootRank = r;
    impl_->wait(impl_->backend->broadcast(buf, opts), "state gather");
    if (rank() == root) out.emplace_back(static_cast<const char*>(buf[0].data_ptr()), size);
  }
  return out;
}

// ---------------------------------------------------------------- planning

double spectral_cost(at::IntArrayRef shape) {
  if (shape.size() < 2) {
    double n = 1.0;
    for (auto d : shape) n *= static_cast<double>(d);
    return n;
  }
  double rows = static_cast<double>(shape[0]);
  double cols = 1.0;
  for (size_t i = 1; i < shape.size(); ++i) cols *= static_cast<double>(shape[i]);
  double s = std::min(rows, cols), L = std::max(rows, cols);
  return s * s * L;
}

std::vector<size_t> ShardPlan::owned_by(int64_t rank) const {
  std::vector<size_t> out;
  for (size_t i = 0; i < owner.size(); ++i)
    if (owner[i] == rank) out.push_back(i);
  return out;
}

ShardPlan plan_shards(const std::vector<std::vector<int64_t>>& shapes, int64_t world_size) {
  TORCH_CHECK(world_size >= 1, "plan_shards: world_size must be >= 1, got ", world_size);
  ShardPlan plan;
  plan.world_size = world_size;
  plan.owner.assign(shapes.size(), 0);
  plan.load.assign(static_cast<size_t>(world_size), 0.0);
  std::vector<double> cost(shapes.size());
  for (size_t i = 0; i < shapes.size(); ++i) cost[i] = spectral_cost(shapes[i]);
  std::vector<size_t> order(shapes.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return cost[a] > cost[b]; });
  for (size_t i : order) {
    // min_element returns the first minimum: ties go to the lower rank.
    auto r = std::min_element(plan.load.begin(), plan.load.end()) - plan.load.begin();
    plan.owner[i] = r;
    plan.load[static_cast<size_t>(r)] += cost[i];
  }
  return plan;
}

// ---------------------------------------------------------------- training

GradientSynchronizer::GradientSynchronizer(std::shared_ptr<Communicator> comm, double bucket_mb)
    : comm_(std::move(comm)), bucket_bytes_(static_cast<int64_t>(bucket_mb * 1024.0 * 1024.0)) {
  TORCH_CHECK(comm_, "GradientSynchronizer needs a communicator");
  TORCH_CHECK(bucket_mb > 0, "gradient bucket size must be positive, got ", bucket_mb, " MB");
}

void GradientSynchronizer::synchronize(const std::vector<at::Tensor>& params) {
  if (comm_->world_size() == 1) return;
  std::vector<at::Tensor> grads;
  grads.reserve(params.size());
  for (const auto& p : params) {
    if (!p.grad().defined()) p.mutable_grad() = at::zeros_like(p);
    grads.push_back(p.grad());
  }
  comm_->all_reduce_mean(grads, bucket_bytes_);
}

ShardedStep::ShardedStep(std::shared_ptr<Communicator> comm,
                         std::vector<std::pair<std::string, at::Tensor>> named_parameters)
    : comm_(std::move(comm)), params_(std::move(named_parameters)) {
  TORCH_CHECK(comm_, "ShardedStep needs a communicator");
  std::vector<std::vector<int64_t>> shapes;
  for (const auto& np : params_) shapes.push_back(np.second.sizes().vec());
  plan_ = plan_shards(shapes, comm_->world_size());
}

void ShardedStep::step(const std::function<void()>& local_step) {
  using Clock = std::chrono::steady_clock;
  // Gradients are identical on all ranks, so checking all of them here makes
  // every rank fail together on a NaN/Inf, before any state changes.
  std::vector<at::Tensor> grads;
  std::vector<std::string> names;
  for (const auto& np : params_) {
    grads.push_back(np.second.grad());
    names.push_back(np.first);
  }
  check_finite_grads(grads, names);
  // Foreign gradients are set aside for the local step and put back after it
  // (also when it throws), so callers see the gradients they passed in.
  std::vector<at::Tensor> set_aside(params_.size());
  for (size_t i = 0; i < params_.size(); ++i)
    if (!owns(i)) {
      set_aside[i] = params_[i].second.grad();
      params_[i].second.mutable_grad().reset();
    }
  auto restore = [&] {
    for (size_t i = 0; i < params_.size(); ++i)
      if (set_aside[i].defined()) params_[i].second.mutable_grad() = set_aside[i];
  };
  auto t0 = Clock::now();
  try {
    local_step();
  } catch (...) {
    restore();
    throw;
  }
  restore();
  auto t1 = Clock::now();
  if (comm_->world_size() > 1) {
    at::NoGradGuard no_grad;
    for (int64_t r = 0; r < comm_->world_size(); ++r) {
      std::vector<at::Tensor> share;
      for (size_t i : plan_.owned_by(r)) share.push_back(params_[i].second);
      comm_->broadcast(share, r);
    }
  }
  auto t2 = Clock::now();
  last_local_s_ = Seconds(t1 - t0).count();
  last_broadcast_s_ = Seconds(t2 - t1).count();
}

namespace {
std::string save_to_bytes(torch::optim::Optimizer& opt) {
  torch::serialize::OutputArchive archive;
  opt.save(archive);
  std::ostringstream os;
  archive.save_to(os);
  return os.str();
}
}  // namespace

void ShardedStep::gather_full_state(const std::vector<torch::optim::Optimizer*>& optimizers) {
  if (comm_->world_size() == 1) return;
  for (auto* opt : optimizers) {
    TORCH_CHECK(opt != nullptr, "gather_full_state: null optimizer");
    auto blobs = comm_->gather_bytes(save_to_bytes(*opt), 0);
    if (!comm_->is_main()) continue;
    // Rank 0: keep its own state aside, load each other rank's archive (which
    // holds only that rank's parameters) and take the entries it owns.
    std::map<size_t, std::unique_ptr<torch::optim::OptimizerParamState>> collected;
    auto take = [&](int64_t from) {
      for (size_t i = 0; i < params_.size(); ++i) {
        if (plan_.owner[i] != from) continue;
        auto it = opt->state().find(compat::state_key(params_[i].second));
        if (it != opt->state().end() && it->second) collected[i] = std::move(it->second);
      }
    };
    take(0);
    for (int64_t r = 1; r < comm_->world_size(); ++r) {
      torch::serialize::InputArchive archive;
      std::istringstream is(blobs[static_cast<size_t>(r)]);
      archive.load_from(is);
      opt->load(archive);
      take(r);
    }
    opt->state().clear();
    for (auto& entry : collected) opt->state()[compat::state_key(params_[entry.first].second)] = std::move(entry.second);
  }
}

void ShardedStep::drop_unowned_state(const std::vector<torch::optim::Optimizer*>& optimizers) const {
  for (auto* opt : optimizers) {
    for (size_t i = 0; i < params_.size(); ++i)
      if (!owns(i)) opt->state().erase(compat::state_key(params_[i].second));
  }
}

std::vector<std::pair<std::string, at::Tensor>> named_parameters_of(SpectralOptimizer& optimizer) {
  // make_optimizer lists names optimizer by optimizer, group by group.
  std::vector<std::pair<std::string, at::Tensor>> out;
  const auto& names = optimizer.parameter_names();
  for (auto* opt : optimizer.optimizers())
    for (const auto& group : opt->param_groups())
      for (const auto& p : group.params()) {
        TORCH_CHECK(out.size() < names.size(), "named_parameters_of: more parameters than names");
        out.emplace_back(names[out.size()], p);
      }
  TORCH_CHECK(out.size() == names.size(), "named_parameters_of: ", names.size(), " names but ", out.size(),
              " parameters");
  return out;
}

TrainHooks make_train_hooks(std::shared_ptr<Communicator> comm, const TrainHookOptions& options) {
  TORCH_CHECK(comm, "make_train_hooks needs a communicator");
  TrainHooks hooks;
  hooks.rank = comm->rank();
  hooks.world_size = comm->world_size();
  auto sync = std::make_shared<GradientSynchronizer>(comm, options.bucket_mb());
  hooks.after_backward = [sync](const std::vector<at::Tensor>& params) { sync->synchronize(params); };
  hooks.all_reduce_sum = [comm](at::Tensor& values) { comm->all_reduce_sum(values); };
  if (!options.shard_optimizer()) return hooks;

  struct Shared {
    std::unique_ptr<ShardedStep> sharded;
    const SpectralOptimizer* built_for = nullptr;
  };
  auto shared = std::make_shared<Shared>();
  auto sharded_for = [comm, shared](SpectralOptimizer& opt) -> ShardedStep& {
    if (!shared->sharded || shared->built_for != &opt) {
      shared->sharded = std::make_unique<ShardedStep>(comm, named_parameters_of(opt));
      shared->built_for = &opt;
    }
    return *shared->sharded;
  };
  hooks.step_optimizer = [sharded_for](SpectralOptimizer& opt) {
    sharded_for(opt).step([&opt] { opt.step(); });
  };
  hooks.before_save = [sharded_for](SpectralOptimizer& opt) {
    sharded_for(opt).gather_full_state(opt.optimizers());
  };
  auto trim = [sharded_for](SpectralOptimizer& opt) { sharded_for(opt).drop_unowned_state(opt.optimizers()); };
  hooks.after_save = trim;
  hooks.after_load = trim;
  return hooks;
}

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
int exit_code_of(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

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

int launch_local(const std::vector<std::string>& args, const LaunchOptions& o) {
  TORCH_CHECK(o.nproc() >= 1, "--nproc must be >= 1, got ", o.nproc());
  TORCH_CHECK(o.nnodes() >= 1, "--nnodes must be >= 1, got ", o.nnodes());
  TORCH_CHECK(o.node_rank() >= 0 && o.node_rank() < o.nnodes(), "--node-rank ", o.node_rank(),
              " is outside [0, nnodes=", o.nnodes(), ")");
  TORCH_CHECK(!args.empty(), "launcher: no command to run in the ranks");
  TORCH_CHECK(o.master_port() > 0 || o.nnodes() == 1,
              "--master-port must be given when running on several machines");
  const int64_t port = o.master_port() > 0 ? o.master_port() : free_loopback_port();
  const int64_t world = o.nproc() * o.nnodes();
  int64_t threads = o.threads_per_rank();
  if (threads <= 0) {
    threads = std::max<int64_t>(1, static_cast<int64_t>(std::thread::hardware_concurrency()) / o.nproc());
  }

  TORCH_CHECK(o.nproc() <= kMaxLocalRanks, "--nproc must be <= ", kMaxLocalRanks, ", got ", o.nproc());
  for (auto& p : g_rank_pids) p = 0;
  g_launch_stop = 0;
  const detail::ScopedStopHandler stop_handler(o.handle_signals(), on_launch_signal);

  std::vector<pid_t> pids;
  for (int64_t local = 0; local < o.nproc(); ++local) {
    const int64_t rank = o.node_rank() * o.nproc() + local;
    pid_t pid = ::fork();
    TORCH_CHECK(pid >= 0, "launcher: fork failed: ", std::strerror(errno));
    if (pid == 0) {
      // Child: die with the launcher, get the rank environment, exec.
      ::prctl(PR_SET_PDEATHSIG, SIGTERM);
      if (o.handle_signals()) ::setpgid(0, 0);  // signals come through the launcher only
      ::setenv("RANK", std::to_string(rank).c_str(), 1);
      ::setenv("LOCAL_RANK", std::to_string(local).c_str(), 1);
      ::setenv("WORLD_SIZE", std::to_string(world).c_str(), 1);
      ::setenv("MASTER_ADDR", o.master_addr().c_str(), 1);
      ::setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
      ::setenv("SPECOPT_DIST_TIMEOUT", std::to_string(o.timeout_s()).c_str(), 1);
      ::setenv("OMP_NUM_THREADS", std::to_string(threads).c_str(), 1);
      std::vector<char*> argv;
      std::string self = "/proc/self/exe";
      argv.push_back(const_cast<char*>(self.c_str()));
      for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      ::execv(self.c_str(), argv.data());
      std::fprintf(stderr, "specopt launch: exec failed: %s\n", std::strerror(errno));
      std::_Exit(127);
    }
    pids.push_back(pid);
    g_rank_pids[local] = pid;
  }
  // A signal that arrived while forking did not reach the later ranks.
  if (const int sig = g_launch_stop.load(); sig != 0)
    for (pid_t p : pids) ::kill(p, sig);

  // Wait; the first rank that fails takes the others down with it.
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
    int code = exit_code_of(status);
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

}  // namespace dist
}  // namespace specopt

namespace specopt {
namespace dist {

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
