// CPU thread pools (threads.h). OpenBLAS is reached through dlsym so the
// library builds and runs against any BLAS LibTorch was built with (MKL in
// pip wheels): the calls are skipped when the symbols are absent.
#include "specopt/core/threads.h"

#include <ATen/Parallel.h>

#include <dlfcn.h>

#include <algorithm>
#include <cstdlib>
#include <thread>

namespace specopt {

namespace {

struct OpenBlas {
  void (*set_num_threads)(int) = nullptr;
  int (*get_num_threads)() = nullptr;
  int (*get_parallel)() = nullptr;  // 0 serial, 1 pthreads, 2 OpenMP
};

template <typename F>
F lookup(void* handle, const char* name) {
  return reinterpret_cast<F>(dlsym(handle, name));
}

const OpenBlas& openblas() {
  static const OpenBlas api = [] {
    OpenBlas a;
    // RTLD_DEFAULT covers executables; a Python extension module is loaded
    // with RTLD_LOCAL, so also ask the already-loaded OpenBLAS libraries.
    void* handles[] = {RTLD_DEFAULT, dlopen("libopenblas.so.0", RTLD_LAZY | RTLD_NOLOAD),
                       dlopen("libblas.so.3", RTLD_LAZY | RTLD_NOLOAD)};
    for (void* h : handles) {
      if (!h || a.set_num_threads) continue;
      a.set_num_threads = lookup<void (*)(int)>(h, "openblas_set_num_threads");
      a.get_num_threads = lookup<int (*)()>(h, "openblas_get_num_threads");
      a.get_parallel = lookup<int (*)()>(h, "openblas_get_parallel");
    }
    return a;
  }();
  return api;
}

std::string blas_kind_of(const OpenBlas& b) {
  if (!b.set_num_threads) return "other";
  const int parallel = b.get_parallel ? b.get_parallel() : 1;
  return parallel == 2 ? "openblas-openmp" : parallel == 0 ? "openblas-serial" : "openblas-pthreads";
}

bool gomp_wait_set() {
  return std::getenv("OMP_WAIT_POLICY") != nullptr || std::getenv("GOMP_SPINCOUNT") != nullptr;
}

}  // namespace

CpuThreads cpu_threads() {
  const auto& b = openblas();
  CpuThreads t;
  t.intra_op = at::get_num_threads();
  t.blas = b.get_num_threads ? b.get_num_threads() : 0;
  t.blas_kind = blas_kind_of(b);
  t.gomp_wait_set = gomp_wait_set();
  return t;
}

CpuThreads set_cpu_threads(int n) {
  if (n <= 0) {
    // LibTorch's default: OMP_NUM_THREADS when set, else every core.
    const char* env = std::getenv("OMP_NUM_THREADS");
    n = env ? std::atoi(env) : 0;
    if (n <= 0) n = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  }
  const auto& b = openblas();
  const std::string kind = blas_kind_of(b);
  const bool two_pools = kind == "openblas-pthreads" && !gomp_wait_set();
  at::set_num_threads(two_pools ? 1 : n);
  if (b.set_num_threads) b.set_num_threads(n);
  return cpu_threads();
}

}  // namespace specopt
