// The trainer (trainer.h): building the model, data and optimizer from a
// config, one optimizer step, validation. Checkpoints: trainer_checkpoint.cpp;
// a whole run (train()): train.cpp.
#include "train/trainer_impl.h"

#include "train/progress.h"

#include "specopt/train/models.h"
#include "specopt/core/spectral_adamw.h"
#include "specopt/core/spectral_sgd.h"
#include "specopt/core/threads.h"
#include "specopt/core/update_rules.h"

#include <torch/nn/functional/loss.h>
#include <torch/utils.h>

#include <algorithm>
#include <cmath>
#include <tuple>

namespace specopt {

using detail::Clock;
using detail::kInf;
using detail::LossFn;
using detail::seconds_since;

double clip_gradients(const std::vector<at::Tensor>& params, double max_norm) {
  std::vector<at::Tensor> norms;
  for (const auto& p : params)
    if (p.grad().defined()) norms.push_back(p.grad().detach().norm(2));
  if (norms.empty()) return 0.0;
  // As torch: the norm of the per-parameter norms, in the gradients' dtype.
  const double total = at::stack(norms).norm(2).item<double>();
  if (max_norm > 0 && std::isfinite(total)) {
    const double coef = max_norm / (total + 1e-6);
    if (coef < 1.0) {
      for (const auto& p : params)
        if (p.grad().defined()) p.grad().detach().mul_(coef);
    }
  }
  return total;
}

namespace detail {
bool resumable_difference(const std::string& key) {
  return key == "run.threads" || key == "run.run_dir" || key == "train.log_every" ||
         key == "train.eval_every" || key == "train.checkpoint_every";
}
}  // namespace detail

namespace {

TokenDataset take_prefix(const TokenDataset& d, int64_t limit) {
  return limit > 0 && limit < d.size() ? d.slice(0, limit) : d;
}
ImageDataset take_prefix(const ImageDataset& d, int64_t limit) {
  return limit > 0 && limit < d.size() ? d.slice(0, limit) : d;
}

// The model of `model` and its loss (GPT::loss; cross-entropy of the logits
// for the image models); vocab_size is the data's (gpt).
// The model of the config, its loss and, for the image classifiers, its logits
// (the accuracy needs them; loss_fn is their cross-entropy). logits_fn is unset for the gpt.
struct BuiltModel {
  std::shared_ptr<torch::nn::Module> module;
  LossFn loss_fn;
  std::function<at::Tensor(const at::Tensor&)> logits_fn;
};

BuiltModel build_model(const ModelConfig& model, int64_t vocab_size) {
  std::shared_ptr<torch::nn::Module> module;
  LossFn loss_fn;
  std::function<at::Tensor(const at::Tensor&)> logits_fn;
  if (model.kind == "gpt") {
    GPTConfig g;
    g.vocab_size = vocab_size;
    g.block_size = model.block_size;
    g.n_layer = model.n_layer;
    g.n_head = model.n_head;
    g.n_embd = model.n_embd;
    g.qk_norm = model.qk_norm;
    g.dropout = model.dropout;
    GPT gpt(g);
    module = gpt.ptr();
    loss_fn = [gpt](const at::Tensor& x, const at::Tensor& y) mutable { return gpt->loss(x, y); };
  } else {
    std::function<at::Tensor(const at::Tensor&)> forward;
    if (model.kind == "mlp") {
      MLPConfig mc;
      mc.hidden = model.hidden;
      MLP mlp(mc);
      module = mlp.ptr();
      forward = [mlp](const at::Tensor& x) mutable { return mlp->forward(x); };
    } else {
      CNNConfig cc;
      cc.channels1 = model.channels[0];
      cc.channels2 = model.channels[1];
      cc.hidden = model.fc_hidden;
      CNN cnn(cc);
      module = cnn.ptr();
      forward = [cnn](const at::Tensor& x) mutable { return cnn->forward(x); };
    }
    logits_fn = forward;
    loss_fn = [forward](const at::Tensor& x, const at::Tensor& y) {
      return torch::nn::functional::cross_entropy(forward(x), y);
    };
  }
  return {module, loss_fn, logits_fn};
}

std::pair<TokenDataset, TokenDataset> load_token_splits(const DataConfig& data) {
  std::pair<TokenDataset, TokenDataset> tv;
  if (data.kind == "kjv") {
    tv = kjv_train_val(data.cache_dir.empty() ? default_cache_dir() : data.cache_dir);
  } else if (data.kind == "text") {
    tv = split_train_val(TokenDataset::from_text_file(data.path), data.val_fraction, '\n');
  } else {
    tv = bin_train_val(data.path, data.vocab_size);
  }
  return {take_prefix(tv.first, data.train_limit), take_prefix(tv.second, data.val_limit)};
}

}  // namespace

Trainer::Trainer(const TrainConfig& config, TrainHooks hooks) : impl_(std::make_unique<Impl>()) {
  auto& m = *impl_;
  config.validate();
  m.config = config;
  m.hooks = std::move(hooks);
  const auto& c = m.config;
  TORCH_CHECK(m.hooks.world_size >= 1 && m.hooks.rank >= 0 && m.hooks.rank < m.hooks.world_size,
              "TrainHooks: rank ", m.hooks.rank, " outside [0, world_size = ", m.hooks.world_size, ")");
  TORCH_CHECK(c.train.batch_size % (c.train.grad_accum * m.hooks.world_size) == 0,
              "config key 'train.batch_size' (", c.train.batch_size,
              ") must be divisible by train.grad_accum × world size (", c.train.grad_accum, " × ",
              m.hooks.world_size, ")");

  if (c.run.device != "cpu") {
    TORCH_CHECK(torch::cuda::is_available(), "config key 'run.device' = \"", c.run.device,
                "\" but CUDA is not available in this build/machine");
  }
  m.device = torch::Device(c.run.device);
  set_cpu_threads(static_cast<int>(c.run.threads));

  // Data (no global random numbers are drawn here).
  const uint64_t data_seed = static_cast<uint64_t>(c.run.seed);
  const int64_t global_batch = c.train.batch_size;
  int64_t vocab_size = 0;
  if (c.data.kind == "fashion_mnist") {
    auto tv = c.data.path.empty() ? fashion_mnist() : fashion_mnist(c.data.path);
    m.image_sampler = std::make_unique<ImageBatchSampler>(take_prefix(tv.first, c.data.train_limit),
                                                          global_batch, data_seed);
    m.image_val = take_prefix(tv.second, c.data.val_limit);
    m.items_per_example = 1;
    m.unit = "samples";
  } else {
    auto tv = load_token_splits(c.data);
    vocab_size = std::max(tv.first.vocab_size(), tv.second.vocab_size());
    if (c.data.vocab_size > 0) {
      TORCH_CHECK(c.data.vocab_size >= vocab_size, "config key 'data.vocab_size' = ", c.data.vocab_size,
                  " is smaller than the data's vocabulary (", vocab_size, ")");
      vocab_size = c.data.vocab_size;
    }
    m.token_sampler =
        std::make_unique<TokenBatchSampler>(tv.first, global_batch, c.model.block_size, data_seed);
    m.token_val = tv.second;
    m.items_per_example = c.model.block_size;
    m.unit = "tokens";
  }
  m.validation_batches();  // a validation set too small for one batch fails here, not at the first eval

  // Model: initialised from the global generator, seeded here.
  torch::manual_seed(static_cast<uint64_t>(c.run.seed));
  BuiltModel built = build_model(c.model, vocab_size);
  m.module = built.module;
  m.loss_fn = built.loss_fn;
  m.logits_fn = built.logits_fn;
  m.module->to(m.device);
  m.params = m.module->parameters();

  m.optimizer = make_optimizer(m.module->named_parameters(), c.optim);  // [optim] is an OptimizerSpec
  m.p_schedule = PSchedule::parse(c.optim.p_schedule);

  m.totals.best_val_loss = kInf;
  m.totals.last_val_loss = kInf;
  m.totals.last_train_loss = kInf;
  m.totals.initial_train_loss = kInf;
}

Trainer::~Trainer() = default;

int64_t Trainer::steps_done() const { return impl_->step; }
double Trainer::val_accuracy() const { return impl_->last_val_accuracy; }
const TrainConfig& Trainer::config() const { return impl_->config; }
torch::nn::Module& Trainer::model() { return *impl_->module; }
SpectralOptimizer& Trainer::optimizer() { return *impl_->optimizer; }
RunTotals& Trainer::totals() { return impl_->totals; }
const std::string& Trainer::item_unit() const { return impl_->unit; }

StepStats Trainer::step() {
  auto& m = *impl_;
  const auto& c = m.config;
  const auto t0 = Clock::now();
  StepStats s;
  s.step = m.step + 1;

  s.lr_matrix = scheduled_lr(m.step, c.optim.lr_matrix, c.train);
  s.lr_vector = scheduled_lr(m.step, c.optim.lr_vector, c.train);
  m.optimizer->set_lr(s.lr_matrix, s.lr_vector);
  if (m.p_schedule.active()) m.optimizer->set_p(m.p_schedule.at(m.step, c.train.steps));
  s.p = m.optimizer->p();

  // This rank's rows of the global batch, in grad_accum micro-batches. Each
  // micro-batch loss is divided by grad_accum so the accumulated gradient is
  // that of the mean loss over the rank's rows.
  m.module->train();
  m.optimizer->zero_grad();
  auto batch = m.next_train_batch();
  const int64_t B = c.train.batch_size, W = m.hooks.world_size, A = c.train.grad_accum;
  const int64_t rows = B / W, micro = rows / A;
  at::Tensor loss_sum = torch::zeros({}, torch::TensorOptions().dtype(torch::kFloat64).device(m.device));
  for (int64_t i = 0; i < A; ++i) {
    const int64_t begin = m.hooks.rank * rows + i * micro;
    const at::Tensor x = batch.first.narrow(0, begin, micro).to(m.device);
    const at::Tensor y = batch.second.narrow(0, begin, micro).to(m.device);
    const at::Tensor loss = m.loss_fn(x, y);
    (loss / static_cast<double>(A)).backward();
    loss_sum += loss.detach().to(torch::kFloat64);
  }
  at::Tensor mean_loss = (loss_sum / static_cast<double>(A)).cpu();
  m.all_reduce(mean_loss);
  s.loss = mean_loss.item<double>() / static_cast<double>(W);
  s.items = B * m.items_per_example;

  auto give_up = [&](std::string reason) {
    m.optimizer->zero_grad();
    s.diverged = true;
    s.diverged_reason = std::move(reason);
    s.step_s = seconds_since(t0);
    return s;
  };
  if (!std::isfinite(s.loss)) return give_up("non-finite training loss");

  std::vector<at::Tensor> with_grad;
  for (const auto& p : m.params)
    if (p.grad().defined()) with_grad.push_back(p);
  if (m.hooks.after_backward) m.hooks.after_backward(with_grad);
  s.grad_norm = clip_gradients(with_grad, c.train.grad_clip);
  if (!std::isfinite(s.grad_norm)) return give_up("non-finite gradient norm");

  m.sync();
  const auto t_opt = Clock::now();
  const double transform_before = transform_seconds();
  try {
    if (m.hooks.step_optimizer) {
      m.hooks.step_optimizer(*m.optimizer);
    } else {
      m.optimizer->step();
    }
  } catch (const c10::Error& e) {
    // The optimizer refuses non-finite gradients (before changing any state),
    // and the spectral transform refuses a non-finite update ("spectral_power:
    // input contains NaN or Inf", "... produced a non-finite result"): both
    // are divergence. Anything else is a real error.
    bool finite = true;
    for (const auto& p : with_grad)
      finite = finite && p.grad().defined() && p.grad().isfinite().all().item<bool>();
    if (!finite) return give_up("non-finite gradient");
    const std::string what = e.what_without_backtrace();
    if (what.find("NaN or Inf") != std::string::npos || what.find("non-finite") != std::string::npos)
      return give_up("non-finite update (" + what.substr(0, what.find('\n')) + ")");
    throw;
  }
  m.sync();
  s.optimizer_s = seconds_since(t_opt);
  s.transform_s = transform_seconds() - transform_before;
  m.optimizer->zero_grad();
  // A step that wrote NaN/Inf into a weight or the optimizer state (eps
  // underflow, overflow of huge finite values) ends the run here, before any
  // checkpoint could hold that state; the step is not counted.
  std::string bad = first_non_finite_state();
  if (W > 1) {
    // Optimizer state may be sharded: every rank must take the same decision.
    at::Tensor flag = torch::full({1}, bad.empty() ? 0.0 : 1.0, torch::kFloat64);
    m.all_reduce(flag);
    if (bad.empty() && flag.item<double>() > 0) bad = "state on another rank";
  }
  if (!bad.empty()) return give_up("non-finite " + bad + " after the optimizer step");
  ++m.step;
  s.step_s = seconds_since(t0);
  m.totals.items += s.items;
  m.totals.train_s += s.step_s;
  m.totals.optimizer_s += s.optimizer_s;
  m.totals.transform_s += s.transform_s;
  if (!std::isfinite(m.totals.initial_train_loss)) m.totals.initial_train_loss = s.loss;
  if (s.loss > kDivergenceLossFactor * m.totals.initial_train_loss) {
    s.diverged = true;
    s.diverged_reason = fmt::format("training loss {:.4g} > {:g} × the initial loss {:.4g}", s.loss,
                                    kDivergenceLossFactor, m.totals.initial_train_loss);
  }
  return s;
}

std::string Trainer::first_non_finite_state() const {
  const auto& m = *impl_;
  // Every weight, then every optimizer state tensor. Per tensor one
  // aminmax (NaN propagates through min and max, +Inf shows in the max, -Inf
  // in the min; no accumulation, so no overflow of large finite values), then
  // one isfinite over all the extremes: one device sync per step, and names
  // are only built for the message.
  struct StateTensor {
    at::Tensor t;
    size_t optimizer;
    const char* field;
  };
  std::vector<StateTensor> state;
  for (size_t k = 0; k < m.optimizer->optimizers().size(); ++k) {
    for (const auto& kv : m.optimizer->optimizers()[k]->state()) {
      const auto* st = kv.second.get();
      if (const auto* a = dynamic_cast<const SpectralAdamWParamState*>(st)) {
        state.push_back({a->exp_avg(), k, "exp_avg"});
        state.push_back({a->exp_avg_sq(), k, "exp_avg_sq"});
      } else if (const auto* g = dynamic_cast<const SpectralSGDParamState*>(st)) {
        state.push_back({g->momentum_buffer(), k, "momentum_buffer"});
      }
    }
  }
  const size_t n_params = m.params.size();
  auto tensor = [&](size_t i) -> const at::Tensor& { return i < n_params ? m.params[i] : state[i - n_params].t; };
  std::vector<at::Tensor> extremes;
  std::vector<size_t> index;  // extremes[j] belongs to tensor(index[j])
  for (size_t i = 0; i < n_params + state.size(); ++i) {
    const at::Tensor& t = tensor(i);
    if (!t.defined() || t.numel() == 0) continue;
    auto mm = at::aminmax(t.detach());
    extremes.push_back(at::stack({std::get<0>(mm), std::get<1>(mm)}).to(torch::kFloat32));
    index.push_back(i);
  }
  if (extremes.empty()) return "";
  const at::Tensor finite = at::isfinite(at::stack(extremes)).all(1).cpu();
  if (finite.all().item<bool>()) return "";
  const bool* f = finite.data_ptr<bool>();
  for (size_t j = 0; j < index.size(); ++j) {
    if (f[j]) continue;
    const size_t i = index[j];
    if (i < n_params) {
      for (const auto& kv : m.module->named_parameters())
        if (kv.value().is_same(m.params[i])) return "weight '" + kv.key() + "'";
      return "weight " + std::to_string(i);
    }
    const auto& s = state[i - n_params];
    return c10::str("optimizer state '", s.field, "' of optimizer ", s.optimizer, " (shape ", s.t.sizes(), ")");
  }
  return "";
}

double Trainer::evaluate() {
  auto& m = *impl_;
  const auto& c = m.config;
  torch::NoGradGuard no_grad;
  m.module->eval();
  const int64_t micro = c.train.batch_size / c.train.grad_accum;
  int64_t n = m.validation_batches();
  if (c.train.eval_batches > 0) n = std::min(n, c.train.eval_batches);
  // Batches are dealt round-robin to the ranks; (loss sum, example count, correct
  // predictions) is summed.
  at::Tensor sums = torch::zeros({3}, torch::kFloat64);
  for (int64_t i = m.hooks.rank; i < n; i += m.hooks.world_size) {
    auto batch = m.token_sampler ? m.token_val.sequential_batch(i, micro, c.model.block_size)
                                 : m.image_val.batch(i, micro);
    const int64_t count = batch.first.size(0);
    const at::Tensor x = batch.first.to(m.device), y = batch.second.to(m.device);
    double loss = 0.0;
    if (m.logits_fn) {  // the same loss as loss_fn, from the logits the accuracy also needs
      const at::Tensor logits = m.logits_fn(x);
      loss = torch::nn::functional::cross_entropy(logits, y).item<double>();
      sums[2] += logits.argmax(1).eq(y).sum().item<double>();
    } else {
      loss = m.loss_fn(x, y).item<double>();
    }
    sums[0] += loss * static_cast<double>(count);
    sums[1] += static_cast<double>(count);
  }
  m.all_reduce(sums);
  m.module->train();
  if (m.logits_fn) m.last_val_accuracy = sums[2].item<double>() / sums[1].item<double>();
  return sums[0].item<double>() / sums[1].item<double>();
}

}  // namespace specopt
