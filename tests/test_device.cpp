// The CUDA-tensor subset (scripts/gpu-check.sh): the transform, both optimizers
// and a short training run on a device, each checked against the same
// computation on the CPU and, for the transform, the float64 SVD.
//
// The device is SPECOPT_TEST_DEVICE (default "cuda"). Without a CUDA device
// every test here is skipped with that reason; gpu-check.sh's CPU dry run sets
// SPECOPT_TEST_DEVICE=cpu so the same code runs against the CPU path.
#include "specopt/train/config.h"
#include "specopt/core/make_optimizer.h"
#include "specopt/core/spectral.h"
#include "specopt/core/spectral_adamw.h"
#include "specopt/core/spectral_sgd.h"
#include "specopt/train/trainer.h"

#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/nn/module.h>
#include <torch/types.h>

#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;

std::string device_name() {
  const char* d = std::getenv("SPECOPT_TEST_DEVICE");
  return d && *d ? d : "cuda";
}

// The device under test; skips the calling test (with the reason) when it is a
// CUDA device and none is present.
#define SPECOPT_DEVICE_OR_SKIP(dev)                                                                   \
  const at::Device dev(device_name());                                                             \
  if (dev.is_cuda() && !torch::cuda::is_available())                                               \
  GTEST_SKIP() << "no CUDA device (torch::cuda::is_available() is false); scripts/gpu-check.sh "   \
                  "runs this on a GPU, SPECOPT_TEST_DEVICE=cpu runs it on the CPU"

// ‖Y − Ψ_p(O)‖_F / ‖Ψ_p(O)‖_F with Ψ_p from the float64 SVD (singular values
// below 1e-12·σ_max stay zero, spectral.h's convention).
double error_vs_svd(const at::Tensor& Y, const at::Tensor& O, double p) {
  const auto [U, S, Vh] = at::linalg_svd(O.to(at::kCPU, at::kDouble), /*full_matrices=*/false);
  const auto f = at::where(S > 1e-12 * S.max(), S.pow(p), at::zeros_like(S));
  const auto R = at::matmul(U * f, Vh);
  return ((Y.to(at::kCPU, at::kDouble) - R).norm() / R.norm()).item<double>();
}

TEST(Device, TransformMatchesTheSvdAsWellAsOnTheCpu) {
  SPECOPT_DEVICE_OR_SKIP(dev);
  torch::manual_seed(0);
  const auto O = at::randn({96, 64});
  struct Case {
    specopt::Method method;
    double p;
  };
  for (const Case c : {Case{specopt::Method::kNewton, 0.0}, Case{specopt::Method::kNewton, 0.5},
                       Case{specopt::Method::kNewton, 0.25}, Case{specopt::Method::kNewtonSchulz, 0.0},
                       Case{specopt::Method::kEigh, 0.5}, Case{specopt::Method::kSvd, 0.25},
                       Case{specopt::Method::kAuto, 0.0}}) {
    const auto options = specopt::SpectralOptions().method(c.method);
    const std::string what = specopt::method_name(c.method) + " p=" + std::to_string(c.p);
    specopt::SpectralInfo info;
    const auto Y = specopt::spectral_power(O.to(dev), c.p, options, &info);
    EXPECT_EQ(Y.device(), dev) << what;
    EXPECT_EQ(Y.scalar_type(), at::kFloat) << what;
    EXPECT_EQ(Y.sizes(), O.sizes()) << what;
    const double on_device = error_vs_svd(Y, O, c.p);
    const double on_cpu = error_vs_svd(specopt::spectral_power(O, c.p, options), O, c.p);
    // Newton–Schulz's fixed quintic stops near, not at, the polar factor.
    const double bound = c.method == specopt::Method::kNewtonSchulz ? 0.35 : 1e-2;
    EXPECT_LT(on_cpu, bound) << what;
    EXPECT_LE(on_device, 2 * on_cpu + 1e-5) << what << ": device " << on_device << ", cpu " << on_cpu;
  }
}

// Three steps of `Opt` on two parameters (a matrix and a vector) with fixed
// gradients; returns the parameters, on the CPU.
template <typename Opt, typename Options>
std::vector<at::Tensor> three_steps(const at::Device& dev, const Options& options) {
  torch::manual_seed(1);
  std::vector<at::Tensor> params = {at::randn({48, 32}).to(dev).requires_grad_(),
                                    at::randn({32}).to(dev).requires_grad_()};
  std::vector<at::Tensor> grads;
  for (int s = 0; s < 3; ++s)
    for (const auto& w : params) grads.push_back(at::randn(w.sizes()).to(dev));
  Opt opt(params, options);
  for (int s = 0; s < 3; ++s) {
    for (size_t i = 0; i < params.size(); ++i) params[i].mutable_grad() = grads[s * params.size() + i];
    opt.step();
  }
  std::vector<at::Tensor> out;
  for (const auto& w : params) {
    EXPECT_EQ(w.device(), dev);
    out.push_back(w.detach().cpu());
  }
  return out;
}

void expect_close(const std::vector<at::Tensor>& a, const std::vector<at::Tensor>& b, const std::string& what) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    const double diff = (a[i] - b[i]).abs().max().item<double>();
    EXPECT_LT(diff, 1e-4) << what << ", parameter " << i;
  }
}

TEST(Device, SpectralAdamWAndSGDStepAsOnTheCpu) {
  SPECOPT_DEVICE_OR_SKIP(dev);
  const at::Device cpu(at::kCPU);
  for (double p : {0.0, 0.5}) {
    const auto adam = specopt::SpectralAdamWOptions(1e-2).p(p).method(specopt::Method::kNewton);
    expect_close(three_steps<specopt::SpectralAdamW>(dev, adam), three_steps<specopt::SpectralAdamW>(cpu, adam),
                 "SpectralAdamW p=" + std::to_string(p));
    const auto sgd = specopt::SpectralSGDOptions(5e-2).p(p).method(specopt::Method::kNewton);
    expect_close(three_steps<specopt::SpectralSGD>(dev, sgd), three_steps<specopt::SpectralSGD>(cpu, sgd),
                 "SpectralSGD p=" + std::to_string(p));
  }
}

TEST(Device, ShortTrainingLowersTheLossAndStaysOnTheDevice) {
  SPECOPT_DEVICE_OR_SKIP(dev);
  const fs::path dir = fs::temp_directory_path() / ("specopt_device_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  {
    std::ofstream out(dir / "corpus.txt");
    for (int i = 0; i < 400; ++i) out << "In the beginning was the word " << i % 37 << ".\n";
  }
  specopt::TrainConfig c;
  for (const std::string& o : std::vector<std::string>{
           "model.kind=gpt", "model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=32",
        "data.kind=text", "data.path=" + (dir / "corpus.txt").string(), "data.val_limit=0",
        "train.batch_size=16", "train.steps=30", "train.warmup_steps=3", "train.eval_every=10",
        "train.eval_batches=4", "train.log_every=1", "optim.variant=AdamZ", "optim.lr_matrix=1e-2",
        "optim.lr_vector=3e-3", "run.threads=1", "run.device=" + dev.str()})
    specopt::apply_override(c, o);
  c.validate();
  specopt::Trainer t(c);
  for (const auto& item : t.model().named_parameters()) EXPECT_EQ(item.value().device(), dev) << item.key();
  const double before = t.evaluate();
  for (int i = 0; i < 30; ++i) ASSERT_FALSE(t.step().diverged) << "step " << i;
  const double after = t.evaluate();
  EXPECT_NEAR(before, std::log(256.0), 0.3);
  EXPECT_LT(after, before - 1.0) << "before " << before << " after " << after;
  fs::remove_all(dir);
}

}  // namespace
