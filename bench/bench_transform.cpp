// Benchmark of Ψ_p(O) = U Σ^p Vᵀ (specopt::spectral_power): for each method ×
// p × shape, the median time (Gaussian input), the relative error against the
// float64 SVD on the dominant subspace (σ ≥ 1e-3 σ_max) and in full (exact Ψ_p
// with σ ≤ τ σ_max → 0, τ the float32 rounding floor of spectral.h) on four
// synthetic families (Gaussian; geometric spectra with condition numbers 1e3
// and 1e8; rank 4 + 1e-3 noise, gradient-like), the matrix-product FLOPs
// (SpectralInfo::matmul_flops) and the GEMM efficiency (FLOPs/time ÷ the
// measured torch::mm rate at that size). At p = 0 two anchors run beside the
// methods: Muon's 5-step quintic (`newton_schulz`) and Polar Express
// (`polar_express`: newton_schulz with its coefficient set, 8 steps).
// --real DIR adds the real-update suite: every *.pt file there (a
// torch::save'd list of matrices, as tests/test_spectral_real.cpp caches them
// in build/real_updates) is run through every method, reporting the worst
// dominant/full error, the summed FLOPs and the summed time.
// Prints tables and writes JSON. --device cuda runs the transform (and the
// GEMM rate) on the GPU; references stay float64 on the CPU.
//
//   build/bench_transform --quick --out runs/bench_transform.json
//   build/bench_transform --device cuda --out $OUT/bench_transform_cuda.json
#include "specopt/core/spectral.h"
#include "specopt/core/threads.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <torch/cuda.h>
#include <torch/serialize.h>
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

at::Tensor rank_plus_noise(Shape s) {
  const auto U = std::get<0>(at::linalg_qr(at::randn({s.rows, 4}, at::kDouble)));
  const auto V = std::get<0>(at::linalg_qr(at::randn({s.cols, 4}, at::kDouble)));
  const auto sigma = at::tensor({1.0, 0.5, 0.3, 0.2}, at::kDouble);
  const double noise = 1e-3 / std::sqrt(static_cast<double>(s.rows));
  return (at::matmul(U * sigma, V.t()) + at::randn({s.rows, s.cols}, at::kDouble) * noise)
      .to(at::kFloat);
}

// Float64 SVD of a (float32) matrix, kept to score Ψ_p for every p.
struct Reference {
  at::Tensor U, S, Vh, keep_dom, keep_full;
  explicit Reference(const at::Tensor& O) {
    std::tie(U, S, Vh) = at::linalg_svd(O.to(at::kDouble), false);
    const double smax = S.max().item<double>();
    const double tau = std::sqrt(static_cast<double>(std::min(O.size(0), O.size(1)))) * 1.1920928955078125e-07;
    keep_dom = S >= smax * 1e-3;
    keep_full = S > smax * tau;
  }
  // {dominant, full} relative errors of Y against Ψ_p(O).
  std::pair<double, double> errors(const at::Tensor& Y, double p) const {
    const at::Tensor Yd = Y.to(at::kDouble);
    const at::Tensor f = at::where(keep_full, S.pow(p), at::zeros_like(S));
    const at::Tensor R = at::matmul(U * f, Vh);
    const double full = ((Yd - R).norm() / R.norm()).item<double>();
    const at::Tensor Ud = U.index({at::indexing::Slice(), keep_dom});
    const at::Tensor Vd = Vh.index({keep_dom});
    const at::Tensor fd = S.index({keep_dom}).pow(p);
    const at::Tensor P = at::matmul(at::matmul(Ud.t(), Yd), Vd.t());
    const double dom = ((P - at::diag(fd)).norm() / fd.norm()).item<double>();
    return {dom, full};
  }
};

// A method of the library, or one of the two p = 0 anchors run through
// newton_schulz with fixed coefficient sets.
struct Variant {
  std::string name;
  specopt::SpectralOptions options;
  specopt::Method method;
};

std::vector<Variant> variants_for(const std::vector<specopt::Method>& methods, bool anchors) {
  std::vector<Variant> v;
  for (auto m : methods) v.push_back({specopt::method_name(m), specopt::SpectralOptions().method(m), m});
  if (anchors) {
    v.push_back({"polar_express",
                 specopt::SpectralOptions()
                     .method(specopt::Method::kNewtonSchulz)
                     .ns_coefficients(specopt::NsCoefficients::kPolarExpress)
                     .ns_steps(8),
                 specopt::Method::kNewtonSchulz});
  }
  return v;
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
  std::string real_dir;
  app.add_option("--real", real_dir,
                 "directory of captured real updates (*.pt, e.g. build/real_updates from test_spectral_real)");
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

  const std::vector<Variant> variants = variants_for(methods, /*anchors=*/true);
  auto supported = [](const Variant& v, double p) {
    return v.name == "polar_express" ? p == 0.0 : supports(v.method, p);
  };
  // paper's p = 0 includes the study's shape scale max(1, rows/cols)^½.
  auto target_scale = [](const Variant& v, double p, int64_t rows, int64_t cols) {
    return v.method == specopt::Method::kPaper && p == 0.0
               ? std::sqrt(std::max(1.0, double(rows) / double(cols)))
               : 1.0;
  };
  const char* kFamilies[] = {"gaussian", "cond1e3", "cond1e8", "rank4_noise"};
  fmt::print("{:>10} {:>14} {:>5} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>7} {:>6} {:>6}\n",
             "shape", "method", "p", "time[s]", "dom_gaus", "dom_1e3", "dom_1e8", "dom_rk4n",
             "full_max", "GFLOP", "GFLOP/s", "eff", "iters");
  for (const Shape& shape : shapes) {
    at::manual_seed(static_cast<int64_t>(seed) + shape.rows * 131 + shape.cols);
    const at::Tensor inputs[4] = {gaussian(shape), geometric(shape, 1e3), geometric(shape, 1e8),
                                  rank_plus_noise(shape)};
    const Reference refs[4] = {Reference(inputs[0]), Reference(inputs[1]), Reference(inputs[2]),
                               Reference(inputs[3])};
    at::Tensor on_device[4];
    for (int f = 0; f < 4; ++f) on_device[f] = inputs[f].to(g_device);
    const int64_t n = std::min(shape.rows, shape.cols);
    const double rate = gemm_rate(n, reps);
    for (double p : ps) {
      for (const Variant& var : variants) {
        nlohmann::json row = {{"method", var.name},
                              {"p", p},
                              {"rows", shape.rows},
                              {"cols", shape.cols},
                              {"supported", supported(var, p)}};
        if (!supported(var, p)) {
          if (var.name != "polar_express")
            fmt::print("{:>10} {:>14} {:>5} {:>10}\n", fmt::format("{}x{}", shape.rows, shape.cols),
                       var.name, p, "n/a");
          results.push_back(row);
          continue;
        }
        const double scale = target_scale(var, p, shape.rows, shape.cols);
        specopt::SpectralInfo info[4];  // counters of the last call per family
        double dom[4], full[4];
        std::vector<double> times;
        for (int f = 0; f < 4; ++f) {
          // The Gaussian input is also the timed one: a warm-up call (not in
          // --quick), then `reps` timed calls.
          const int calls = f == 0 ? (quick ? reps : reps + 1) : 1;
          at::Tensor Y;
          for (int c = 0; c < calls; ++c) {
            device_sync();
            const auto t0 = Clock::now();
            Y = specopt::spectral_power(on_device[f], p, var.options, &info[f]);
            const double t = seconds_since(t0);
            if (f == 0 && (quick || c > 0)) times.push_back(t);
          }
          std::tie(dom[f], full[f]) = refs[f].errors(Y.cpu().to(at::kDouble) / scale, p);
        }
        const specopt::SpectralInfo& info_g = info[0];
        const double t_med = median(times);
        const double gflops = info_g.matmul_flops / t_med / 1e9;
        const double full_max = *std::max_element(full, full + 4);
        nlohmann::json fam = nlohmann::json::object();
        for (int f = 0; f < 4; ++f)
          fam[kFamilies[f]] = {{"err_dominant", dom[f]},
                               {"err_full", full[f]},
                               {"matmul_flops", info[f].matmul_flops},
                               {"iterations", info[f].iterations}};
        row.update({{"resolved_method", specopt::method_name(info_g.method)},
                    {"time_s", t_med},
                    {"times_s", times},
                    {"families", fam},
                    {"err_full_max", full_max},
                    {"matmul_flops", info_g.matmul_flops},
                    {"gflops_per_s", gflops},
                    {"gemm_gflops_per_s", rate},
                    {"gemm_efficiency", gflops / rate},
                    {"iterations", info_g.iterations},
                    {"p_effective", info_g.p_effective}});
        results.push_back(row);
        fmt::print(
            "{:>10} {:>14} {:>5} {:>10.4f} {:>9.2e} {:>9.2e} {:>9.2e} {:>9.2e} {:>9.2e} {:>8.3f} {:>7.1f} "
            "{:>6.2f} {:>6}\n",
            fmt::format("{}x{}", shape.rows, shape.cols),
            var.method == specopt::Method::kAuto ? "auto(" + specopt::method_name(info_g.method) + ")"
                                                 : var.name,
            p, t_med, dom[0], dom[1], dom[2], dom[3], full_max, info_g.matmul_flops / 1e9, gflops,
            gflops / rate, info_g.iterations);
        std::fflush(stdout);
      }
    }
  }

  // The real-update suite: worst errors, summed FLOPs and time per method × p.
  nlohmann::json real_rows = nlohmann::json::array();
  if (!real_dir.empty()) {
    std::vector<at::Tensor> mats;
    std::vector<std::string> files;
    for (const auto& e : std::filesystem::directory_iterator(real_dir))
      if (e.path().extension() == ".pt") files.push_back(e.path().string());
    std::sort(files.begin(), files.end());
    for (const auto& f : files) {
      std::vector<at::Tensor> part;
      torch::load(part, f);
      for (auto& t : part)
        if (t.abs().max().item<double>() > 0) mats.push_back(t.to(at::kFloat));
    }
    std::vector<Reference> rrefs;
    for (const auto& m : mats) rrefs.emplace_back(m);
    fmt::print("\nreal-update suite: {} matrices from {} file(s) in {}\n", mats.size(), files.size(),
               real_dir);
    fmt::print("{:>14} {:>5} {:>10} {:>10} {:>10} {:>10} {:>10}\n", "method", "p", "dom_max",
               "dom_median", "full_max", "GFLOP", "time[s]");
    for (double p : ps) {
      for (const Variant& var : variants) {
        if (!supported(var, p)) continue;
        std::vector<double> doms;
        double full_max = 0, flops = 0, secs = 0;
        for (size_t i = 0; i < mats.size(); ++i) {
          specopt::SpectralInfo info;
          const at::Tensor M = mats[i].to(g_device);
          device_sync();
          const auto t0 = Clock::now();
          const at::Tensor Y = specopt::spectral_power(M, p, var.options, &info);
          secs += seconds_since(t0);
          flops += info.matmul_flops;
          const double scale = target_scale(var, p, mats[i].size(0), mats[i].size(1));
          const auto [d, f] = rrefs[i].errors(Y.cpu().to(at::kDouble) / scale, p);
          doms.push_back(d);
          full_max = std::max(full_max, f);
        }
        const double dom_max = *std::max_element(doms.begin(), doms.end());
        const double dom_med = median(doms);
        real_rows.push_back({{"method", var.name},
                             {"p", p},
                             {"matrices", mats.size()},
                             {"err_dominant_max", dom_max},
                             {"err_dominant_median", dom_med},
                             {"err_full_max", full_max},
                             {"matmul_flops", flops},
                             {"time_s", secs}});
        fmt::print("{:>14} {:>5} {:>10.2e} {:>10.2e} {:>10.2e} {:>10.3f} {:>10.3f}\n",
                   var.method == specopt::Method::kAuto ? "auto" : var.name, p, dom_max, dom_med,
                   full_max, flops / 1e9, secs);
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
                                {"results", results},
                                {"real_updates", real_rows}};
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
