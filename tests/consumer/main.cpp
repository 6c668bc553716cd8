// Two steps of SpectralAdamW (AdamS: p = 1/2) on a small linear least-squares problem,
// through the installed specopt package; exits 0 only if the loss went down.
#include <specopt/core/spectral_adamw.h>

#include <torch/nn/modules/linear.h>
#include <torch/nn/functional/loss.h>

#include <iostream>

int main() {
  torch::manual_seed(0);
  torch::nn::Linear model(torch::nn::LinearOptions(8, 4));
  const at::Tensor x = torch::randn({64, 8});
  const at::Tensor y = torch::matmul(x, torch::randn({8, 4}));
  specopt::SpectralAdamW opt(model->parameters(), specopt::SpectralAdamWOptions(3e-2).p(0.5));
  auto loss_now = [&] { return torch::nn::functional::mse_loss(model(x), y); };
  const double before = loss_now().item<double>();
  for (int step = 0; step < 2; ++step) {
    opt.zero_grad();
    loss_now().backward();
    opt.step();
  }
  const double after = loss_now().item<double>();
  std::cout << "consumer: SpectralAdamW (p = 0.5), 2 steps: loss " << before << " -> " << after << "\n";
  return after < before ? 0 : 1;
}
