// Benchmark of Ψ_p(O) = U Σ^p Vᵀ (specopt::spectral_power): for each method ×
// p × shape, the median time, the relative Frobenius error against the float64
// SVD on two matrix families (Gaussian; geometric spectrum with condition
// number 1e3), the matrix-product FLOPs (SpectralInfo::matmul_flops) and the
// GEMM efficiency (FLOPs/time ÷ the measured torch::mm rate at that size).
// Prints a table and writes JSON. --device cuda runs the transform (and the
// GEMM rate) on the GPU; references stay float64 on the CPU.
//
//   build/bench_transform --quick --out runs/bench_transform.json
//   build/bench_transform --device cuda --out $OUT/bench_transform_cuda.json
#include "specopt/spectral.h"
#include "specopt/threads.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <torch/cuda.h>
#include <torch/version.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

// Where the transform runs; GPU kernels are asynchronous, so every timed
// interval ends with a synchronize on that device.
at::Device g_device(at::kCPU);

void device_sync() {
  if (g_device.is_cuda()) torch::cuda::synchronize(g_device.has_index() ? g_device.index() : -1);
}

double seconds_since(Clock::time_point t0) {
  device_sync();
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

struct Shape {
  int64_t rows, cols;
};

Shape parse_shape(const std::string& s) {
  const auto x = s.find('x');
  if (x == std::string::npos) {
    const int64_t n = std::stoll(s);
    return {n, n};
  }
  return {std::stoll(s.substr(0, x)), std::stoll(s.substr(x + 1))};
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

// float32 test matrices (the benchmark's input dtype).
at::Tensor gaussian(Shape s) { return at::randn({s.rows, s.cols}); }

at::Tensor geometric(Shape s, double cond) {
  const int64_t k = std::min(s.rows, s.cols);
  const auto U = std::get<0>(at::linalg_qr(at::randn({s.rows, k}, at::kDouble)));
  const auto V = std::get<0>(at::linalg_qr(at::randn({s.cols, k}, at::kDouble)));
  const auto sigma = at::logspace(0, -std::log10(cond), k, 10.0, at::kDouble);
  return at::matmul(U * sigma, V.t()).to(at::kFloat);
}

// Float64 SVD of a matrix, kept to build Ψ_p references for every p.
struct Reference {
  at::Tensor U, S, Vh;
  explicit Reference(const at::Tensor& O) {
    std::tie(U, S, Vh) = at::linalg_svd(O.to(at::kDouble), false);
  }
  at::Tensor power(double p) const {
    const auto keep = S > S.max() * 1e-10;
    const auto f = at::where(keep, S.pow(p), at::zeros_like(S));
    return at::matmul(U * f, Vh);
  }
};

double rel_err(const at::Tensor& Y, const at::Tensor& R) {
  return ((Y.to(at::kDouble) - R).norm() / R.norm()).item<double>();
}

// GFLOP/s of torch::mm for an n×n by n×n float32 product (median of reps).
double gemm_rate(int64_t n, int reps) {
  const auto a = at::randn({n, n}, at::device(g_device)), b = at::randn({n, n}, at::device(g_device));
  at::mm(a, b);
  device_sync();
  std::vector<double> t;
  for (int i = 0; i < std::max(3, reps); ++i) {
    const auto t0 = Clock::now();
    at::mm(a, b);
    t.push_back(seconds_since(t0));
  }
  return 2.0 * n * n * n / median(t) / 1e9;
}

bool supports(specopt::Method m, double p) {
  if (m == specopt::Method::kNewtonSchulz) return p == 0.0;
  if (m == specopt::Method::kPaper) return p == 0.0 || p == 0.25 || p == 0.5;
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Benchmark of the spectral transform Ψ_p (time, error vs float64 SVD, FLOPs)"};
  bool quick = false;
  std::string out_path, methods_arg, shapes_arg, p_arg;
  int reps = 0;
  uint64_t seed = 0;
  app.add_flag("--quick", quick, "fewer shapes and repetitions (≤ 2 min on 2 cores)");
  app.add_option("--out", out_path, "write the results as JSON to this file");
  app.add_option("--methods", methods_arg,
                 "comma-separated methods (default: paper,newton,newton_schulz,eigh,auto,svd; "
                 "quick: paper,newton,newton_schulz,auto)");
  app.add_option("--shapes", shapes_arg,
                 "comma-separated ROWSxCOLS (default: 128x128,128x512,768x768,768x3072,"
                 "3072x768,2304x768,1024x1024; quick: 128x128,768x768)");
  app.add_option("--p", p_arg, "comma-separated exponents (default: 0,0.25,0.5)");
  app.add_option("--reps", reps, "timed repetitions per case (default: 5; quick: 1)");
  app.add_option("--seed", seed, "random seed for the test matrices");
  int threads = 0;
  app.add_option("--threads", threads,
                 "CPU threads through specopt::set_cpu_threads (default 0: OMP_NUM_THREADS or all cores)");
  std::string device = "cpu";
  app.add_option("--device", device, "where the transform runs: cpu, cuda or cuda:N (default cpu)");
  CLI11_PARSE(app, argc, argv);
  g_device = at::Device(device);
  if (g_device.is_cuda() && !torch::cuda::is_available()) {
    std::cerr << "bench_transform: --device " << device << " but no CUDA device is available\n";
    return 1;
  }
  const specopt::CpuThreads pools = specopt::set_cpu_threads(threads);

  std::vector<specopt::Method> methods;
  for (const auto& m : split(methods_arg.empty()
                                 ? std::string(quick ? "paper,newton,newton_schulz,auto"
                                                     : "paper,newton,newton_schulz,eigh,auto,svd")
                                 : methods_arg)) {
    methods.push_back(specopt::parse_method(m));
  }
  std::vector<Shape> shapes;
  for (const auto& s :
       split(shapes_arg.empty()
                 ? std::string(quick ? "128x128,768x768"
                                     : "128x128,128x512,768x768,768x3072,3072x768,2304x768,1024x1024")
                 : shapes_arg)) {
    shapes.push_back(parse_shape(s));
  }
  std::vector<double> ps;
  for (const auto& s : split(p_arg.empty() ? std::string("0,0.25,0.5") : p_arg)) ps.push_back(std::stod(s));
  if (reps <= 0) reps = quick ? 1 : 5;

  std::string command;
  for (int i = 0; i < argc; ++i) command += (i ? " " : "") + std::string(argv[i]);
  nlohmann::json results = nlohmann::json::array();
  const auto t_start = Clock::now();

  fmt::print("{:>10} {:>14} {:>5} {:>10} {:>10} {:>10} {:>9} {:>7} {:>6} {:>6}\n", "shape", "method",
             "p", "time[s]", "err_gauss", "err_geo", "GFLOP", "GFLOP/s", "eff", "iters");
  for (const Shape& shape : shapes) {
    at::manual_seed(static_cast<int64_t>(seed) + shape.rows * 131 + shape.cols);
    const at::Tensor inputs[2] = {gaussian(shape), geometric(shape, 1e3)};
    const Reference refs[2] = {Reference(inputs[0]), Reference(inputs[1])};
    const at::Tensor on_device[2] = {inputs[0].to(g_device), inputs[1].to(g_device)};
    const int64_t n = std::min(shape.rows, shape.cols);
    const double rate = gemm_rate(n, reps);
    for (double p : ps) {
      const at::Tensor expect[2] = {refs[0].power(p), refs[1].power(p)};
      for (specopt::Method method : methods) {
        nlohmann::json row = {{"method", specopt::method_name(method)},
                              {"p", p},
                              {"rows", shape.rows},
                              {"cols", shape.cols},
                              {"supported", supports(method, p)}};
        if (!supports(method, p)) {
          fmt::print("{:>10} {:>14} {:>5} {:>10}\n", fmt::format("{}x{}", shape.rows, shape.cols),
                     specopt::method_name(method), p, "n/a");
          results.push_back(row);
          continue;
        }
        const auto options = specopt::SpectralOptions().method(method);
        // paper's p = 0 includes the study's shape scale max(1, rows/cols)^½.
        const double target_scale =
            method == specopt::Method::kPaper && p == 0.0
                ? std::sqrt(std::max(1.0, double(shape.rows) / double(shape.cols)))
                : 1.0;
        specopt::SpectralInfo info[2];  // counters of the last call per family
        double err[2];
        std::vector<double> times;
        for (int f = 0; f < 2; ++f) {
          // The Gaussian input is also the timed one: a warm-up call (not in
          // --quick), then `reps` timed calls.
          const int calls = f == 0 ? (quick ? reps : reps + 1) : 1;
          at::Tensor Y;
          for (int c = 0; c < calls; ++c) {
            device_sync();
            const auto t0 = Clock::now();
            Y = specopt::spectral_power(on_device[f], p, options, &info[f]);
            const double t = seconds_since(t0);
            if (f == 0 && (quick || c > 0)) times.push_back(t);
          }
          err[f] = rel_err(Y.cpu(), expect[f] * target_scale);
        }
        const specopt::SpectralInfo& info_g = info[0];
        const double flops_geo = info[1].matmul_flops;
        const double t_med = median(times);
        const double gflops = info_g.matmul_flops / t_med / 1e9;
        row.update({{"resolved_method", specopt::method_name(info_g.method)},
                    {"time_s", t_med},
                    {"times_s", times},
                    {"err_gaussian", err[0]},
                    {"err_geometric_cond1e3", err[1]},
                    {"matmul_flops", info_g.matmul_flops},
                    {"matmul_flops_geometric", flops_geo},
                    {"gflops_per_s", gflops},
                    {"gemm_gflops_per_s", rate},
                    {"gemm_efficiency", gflops / rate},
                    {"iterations", info_g.iterations},
                    {"iterations_geometric", info[1].iterations},
                    {"p_effective", info_g.p_effective}});
        results.push_back(row);
        fmt::print("{:>10} {:>14} {:>5} {:>10.4f} {:>10.2e} {:>10.2e} {:>9.2f} {:>7.1f} {:>6.2f} {:>6}\n",
                   fmt::format("{}x{}", shape.rows, shape.cols),
                   method == specopt::Method::kAuto
                       ? "auto(" + specopt::method_name(info_g.method) + ")"
                       : specopt::method_name(method),
                   p, t_med, err[0], err[1], info_g.matmul_flops / 1e9, gflops, gflops / rate,
                   info_g.iterations);
        std::fflush(stdout);
      }
    }
  }
  const double total = seconds_since(t_start);
  fmt::print("total {:.1f} s, {} intra-op / {} BLAS threads ({})\n", total, pools.intra_op, pools.blas,
             pools.blas_kind);
  if (!out_path.empty()) {
    const nlohmann::json doc = {{"benchmark", "bench_transform"},
                                {"command", command},
                                {"quick", quick},
                                {"torch_version", TORCH_VERSION},
                                {"threads", at::get_num_threads()},
                                {"blas_threads", pools.blas},
                                {"blas_kind", pools.blas_kind},
                                {"input_dtype", "float32"},
                                {"device", g_device.str()},
                                {"total_seconds", total},
                                {"results", results}};
    const auto parent = std::filesystem::path(out_path).parent_path();
    if (!parent.empty()) std::filesystem::create_directories(parent);
    std::ofstream out(out_path);
    if (!out) {
      std::cerr << "bench_transform: cannot write " << out_path << "\n";
      return 1;
    }
    out << doc.dump(2) << "\n";
    fmt::print("wrote {}\n", out_path);
  }
  return 0;
}
