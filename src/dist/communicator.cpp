// The c10d communicator (communicator.h): options from the environment,
// rendezvous, bucketed all-reduce, broadcast, gather.
#include "specopt/dist/communicator.h"
#include "specopt/core/compat.h"

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

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <map>
#include <numeric>
#include <sstream>
#include <thread>

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

namespace {

// The TCPStore rendezvous of all ranks (rank 0 serves it and returns once
// every rank connected), under the prefix "specopt".
c10::intrusive_ptr<c10d::Store> rendezvous(const DistOptions& o) {
  c10d::TCPStoreOptions store_options;
  store_options.port = static_cast<std::uint16_t>(o.master_port());
  store_options.isServer = o.rank() == 0;
  store_options.numWorkers = static_cast<std::size_t>(o.world_size());
  store_options.waitWorkers = true;  // rank 0 returns once all ranks connected
  store_options.timeout = to_ms(o.timeout_s());
  compat::portable_store_backend(store_options);
  try {
    auto tcp = c10::make_intrusive<c10d::TCPStore>(o.master_addr(), store_options);
    return c10::make_intrusive<c10d::PrefixStore>("specopt", tcp);
  } catch (const std::exception& e) {
    TORCH_CHECK(false, "rank ", o.rank(), " of ", o.world_size(),
                ": rendezvous through the TCPStore at ", o.master_addr(), ":", o.master_port(),
                " failed within ", o.timeout_s(), " s (a rank that never arrived, or a port in use): ",
                e.what());
  }
}

// The Gloo process group over `store`, on the interface GLOO_SOCKET_IFNAME
// names, else 127.0.0.1 for a loopback master, else the host's default.
c10::intrusive_ptr<compat::CollectiveBackend> gloo_backend(const c10::intrusive_ptr<c10d::Store>& store,
                                                           const DistOptions& o) {
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
    return c10::make_intrusive<c10d::ProcessGroupGloo>(store, static_cast<int>(o.rank()),
                                                       static_cast<int>(o.world_size()), gloo_options);
  } catch (const std::exception& e) {
    TORCH_CHECK(false, "rank ", o.rank(), ": creating the Gloo process group failed within ",
                o.timeout_s(), " s: ", e.what());
  }
#else
  (void)store;
  (void)o;
  TORCH_CHECK(false, "backend 'gloo' requested but specopt was built without the Gloo headers "
              "(install libgloo-dev and rebuild)");
#endif
}

c10::intrusive_ptr<compat::CollectiveBackend> nccl_backend(const c10::intrusive_ptr<c10d::Store>& store,
                                                           const DistOptions& o) {
#ifdef USE_C10D_NCCL
  auto nccl_options = c10d::ProcessGroupNCCL::Options::create();
  nccl_options->timeout = to_ms(o.timeout_s());
  return c10::make_intrusive<c10d::ProcessGroupNCCL>(store, static_cast<int>(o.rank()),
                                                     static_cast<int>(o.world_size()), nccl_options);
#else
  (void)store;
  TORCH_CHECK(false, "backend 'nccl' requested (device '", o.device(),
              "') but LibTorch was built without NCCL (USE_C10D_NCCL)");
#endif
}

}  // namespace

Communicator::Communicator(const DistOptions& options)
    : options_(options), impl_(std::make_unique<Impl>()) {
  const auto& o = options_;
  TORCH_CHECK(o.world_size() >= 1, "world_size must be >= 1, got ", o.world_size());
  TORCH_CHECK(o.rank() >= 0 && o.rank() < o.world_size(), "rank ", o.rank(),
              " is outside [0, world_size=", o.world_size(), ")");
  TORCH_CHECK(o.master_port() > 0 && o.master_port() < 65536, "master_port ", o.master_port(),
              " is not a TCP port");
  TORCH_CHECK(o.timeout_s() > 0, "distributed timeout must be positive, got ", o.timeout_s(), " s");

  impl_->store = rendezvous(o);
  std::string backend = o.backend();
  const bool cuda = o.device().rfind("cuda", 0) == 0;
  if (backend == "auto") backend = cuda ? "nccl" : "gloo";
  if (backend == "gloo") {
    impl_->backend = gloo_backend(impl_->store, o);
  } else if (backend == "nccl") {
    impl_->backend = nccl_backend(impl_->store, o);
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

}  // namespace dist
}  // namespace specopt
