// Step time of the eight variants (make_optimizer, the study's grouping with
// the packed QKV split into 3 row blocks) against torch::optim::AdamW, on the
// parameter shapes of GPT-2 small and of a small study model.
//
//   bench_optimizers [--sets=small,gpt2] [--method=auto|eigh|svd|newton|...]
//                    [google benchmark flags, e.g. --benchmark_out=F --benchmark_out_format=json]
//
// --sets: parameter sets to register (default "small": under a minute on 2
// cores; "gpt2" times one step per variant after a warm-up step, ~15 minutes
// on a busy 2-core machine, see docs/optimizers.md).
// One iteration = one optimizer step over all parameters with fixed gradients.
#include "specopt/core/make_optimizer.h"
#include "specopt/core/spectral.h"
#include "specopt/core/variants.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <benchmark/benchmark.h>
#include <torch/optim/adamw.h>

#include <cstring>
#include <memory>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace {

struct ModelShape {
  std::string name;
  int64_t vocab, block, layers, d;
  int64_t iterations;  // 0 = let Google Benchmark choose
};

// nanoGPT parameter names and shapes (lm_head tied to wte).
std::vector<std::pair<std::string, std::vector<int64_t>>> gpt_shapes(const ModelShape& m) {
  std::vector<std::pair<std::string, std::vector<int64_t>>> s = {
      {"transformer.wte.weight", {m.vocab, m.d}}, {"transformer.wpe.weight", {m.block, m.d}}};
  for (int64_t l = 0; l < m.layers; ++l) {
    const std::string h = "transformer.h." + std::to_string(l) + ".";
    s.push_back({h + "ln_1.weight", {m.d}});
    s.push_back({h + "ln_1.bias", {m.d}});
    s.push_back({h + "attn.c_attn.weight", {3 * m.d, m.d}});
    s.push_back({h + "attn.c_attn.bias", {3 * m.d}});
    s.push_back({h + "attn.c_proj.weight", {m.d, m.d}});
    s.push_back({h + "attn.c_proj.bias", {m.d}});
    s.push_back({h + "ln_2.weight", {m.d}});
    s.push_back({h + "ln_2.bias", {m.d}});
    s.push_back({h + "mlp.c_fc.weight", {4 * m.d, m.d}});
    s.push_back({h + "mlp.c_fc.bias", {4 * m.d}});
    s.push_back({h + "mlp.c_proj.weight", {m.d, 4 * m.d}});
    s.push_back({h + "mlp.c_proj.bias", {m.d}});
  }
  s.push_back({"transformer.ln_f.weight", {m.d}});
  s.push_back({"transformer.ln_f.bias", {m.d}});
  return s;
}

// Parameters with gradients already set (fixed for every step).
std::vector<std::pair<std::string, at::Tensor>> make_parameters(const ModelShape& m) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(0);
  std::vector<std::pair<std::string, at::Tensor>> params;
  for (const auto& [name, shape] : gpt_shapes(m)) {
    auto w = (at::randn(shape, gen) * 0.02).requires_grad_(true);
    w.mutable_grad() = at::randn(shape, gen) * 1e-3;
    params.emplace_back(name, w);
  }
  return params;
}

void set_counters(benchmark::State& state, const std::vector<std::pair<std::string, at::Tensor>>& params) {
  int64_t numel = 0, matrices = 0;
  for (const auto& [name, w] : params) {
    numel += w.numel();
    matrices += w.dim() >= 2;
  }
  state.counters["parameters"] = static_cast<double>(numel);
  state.counters["matrices"] = static_cast<double>(matrices);
  state.counters["threads"] = at::get_num_threads();
}

void bench_variant(benchmark::State& state, ModelShape model, std::string variant, specopt::Method method) {
  auto params = make_parameters(model);
  specopt::OptimizerSpec spec;
  spec.variant = variant;
  spec.method = method;
  spec.split_rows_patterns = {"attn.c_attn"};  // the study's split_qkv_updates
  spec.split_rows_blocks = 3;
  auto opt = specopt::make_optimizer(params, spec);
  opt->step();  // creates the state
  for (auto _ : state) opt->step();
  set_counters(state, params);
  state.SetLabel(specopt::method_name(method));
}

void bench_torch_adamw(benchmark::State& state, ModelShape model) {
  auto params = make_parameters(model);
  std::vector<at::Tensor> tensors;
  for (auto& [name, w] : params) tensors.push_back(w);
  torch::optim::AdamW opt(tensors, torch::optim::AdamWOptions(1e-3).betas({0.9, 0.95}).weight_decay(0));
  opt.step();
  for (auto _ : state) opt.step();
  set_counters(state, params);
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, sep);)
    if (!item.empty()) out.push_back(item);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> sets = {"small"};
  specopt::Method method = specopt::Method::kAuto;
  std::vector<char*> rest = {argv[0]};
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--sets=", 7) == 0) {
      sets = split(argv[i] + 7, ',');
    } else if (std::strncmp(argv[i], "--method=", 9) == 0) {
      method = specopt::parse_method(argv[i] + 9);
    } else {
      rest.push_back(argv[i]);
    }
  }
  const std::vector<ModelShape> models = {
      {"small", 256, 256, 4, 128, 0},      // the small study model
      {"gpt2", 50257, 1024, 12, 768, 1},  // GPT-2 small (124M): one timed step (after a warm-up step)
  };
  for (const auto& set : sets) {
    const ModelShape* model = nullptr;
    for (const auto& m : models)
      if (m.name == set) model = &m;
    if (!model) {
      std::fprintf(stderr, "unknown parameter set '%s' (valid: small, gpt2)\n", set.c_str());
      return 2;
    }
    auto* b = benchmark::RegisterBenchmark(("step/" + set + "/torch_AdamW").c_str(), bench_torch_adamw, *model);
    std::vector<benchmark::internal::Benchmark*> all = {b};
    for (const auto& v : specopt::named_variants())
      all.push_back(benchmark::RegisterBenchmark(("step/" + set + "/" + v.name).c_str(), bench_variant, *model,
                                                 v.name, method));
    for (auto* x : all) {
      x->Unit(benchmark::kMillisecond)->UseRealTime();
      if (model->iterations > 0) x->Iterations(model->iterations);
    }
  }
  int n = static_cast<int>(rest.size());
  benchmark::Initialize(&n, rest.data());
  if (benchmark::ReportUnrecognizedArguments(n, rest.data())) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
