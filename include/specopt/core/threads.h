// CPU thread pools: one call that gives LibTorch's intra-op pool and the BLAS
// library's pool a consistent number of threads.
//
// Why: Debian's LibTorch runs elementwise kernels on an OpenMP (libgomp) pool
// and calls OpenBLAS for GEMM and LAPACK. The pthreads build of OpenBLAS
// (libopenblas0-pthread) keeps a second pool. libgomp's workers busy-wait
// (GOMP_SPINCOUNT, 300k spins by default) after each parallel region, so on a
// machine with as many threads as cores they take the cores OpenBLAS's
// threads need: measured on the 2-core CI machine, a kjv-gpt training step
// with both pools at 2 threads ran at ~5.6-6.1k tokens/s against ~11k with one
// thread (docs/training.md, "Threads").
#pragma once

#include <string>

namespace specopt {

struct CpuThreads {
  int intra_op = 1;  // LibTorch's intra-op pool (at::get_num_threads after the call)
  int blas = 0;      // OpenBLAS's pool; 0 when the BLAS is not OpenBLAS (then LibTorch
                     // sets MKL's own count through at::set_num_threads)
  std::string blas_kind;  // "openblas-pthreads", "openblas-openmp", "openblas-serial" or "other"
  bool gomp_wait_set = false;  // OMP_WAIT_POLICY or GOMP_SPINCOUNT was in the environment
};

// Use `n` threads (n <= 0: the number of cores LibTorch sees). BLAS always
// gets n. LibTorch's pool gets n too, except with the pthreads OpenBLAS when
// neither OMP_WAIT_POLICY nor GOMP_SPINCOUNT is set: then it gets 1, since a
// spinning libgomp pool would halve the speed (see above); set
// OMP_WAIT_POLICY=passive to have both pools use n.
CpuThreads set_cpu_threads(int n);

// What the pools use now (no change).
CpuThreads cpu_threads();

}  // namespace specopt
