// The trainer (trainer.h): building the model and data (through the task
// factory, task.h) and the optimizer from a config, one optimizer step,
// validation. Checkpoints: trainer_checkpoint.cpp; a whole run (train()): train.cpp.
#include "train/trainer_impl.h"

#include "train/progress.h"

#include "specopt/core/spectral_adamw.h"
#include "specopt/core/spectral_sgd.h"
#include "specopt/core/threads.h"
#include "specopt/core/update_rules.h"

#include <torch/utils.h>

#include <algorithm>
#include <cmath>
#include <tuple>

namespace specopt {

using detail::Clock;
using detail::kInf;
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

  // Data (no global random numbers are drawn here), then the model,
  // initialised from the global generator, seeded here.
  m.data = detail::load_task_data(c);
  m.validation_batches();  // a validation set too small for one batch fails here, not at the first eval
  torch::manual_seed(static_cast<uint64_t>(c.run.seed));
  m.model = detail::build_task_model(c.model, m.data.vocab_size);
  m.model.module->to(m.device);
  m.params = m.model.module->parameters();

  m.optimizer = make_optimizer(m.model.module->named_parameters(), c.optim);  // [optim] is an OptimizerSpec
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
torch::nn::Module& Trainer::model() { return *impl_->model.module; }
CompositeOptimizer& Trainer::optimizer() { return *impl_->optimizer; }
RunTotals& Trainer::totals() { return impl_->totals; }
const std::string& Trainer::item_unit() const { return impl_->data.unit; }

void Trainer::Impl::set_schedules(StepStats& s) {
  const auto& c = config;
  s.lr_matrix = scheduled_lr(step, c.optim.lr_matrix, c.train);
  s.lr_vector = scheduled_lr(step, c.optim.lr_vector, c.train);
  optimizer->set_lr(s.lr_matrix, s.lr_vector);
  if (p_schedule.active()) optimizer->set_p(p_schedule.at(step, c.train.steps));
  s.p = optimizer->p();
}

void Trainer::Impl::forward_backward(StepStats& s) {
  // This rank's rows of the global batch, in grad_accum micro-batches. Each
  // micro-batch loss is divided by grad_accum so the accumulated gradient is
  // that of the mean loss over the rank's rows.
  model.module->train();
  optimizer->zero_grad();
  auto batch = data.sampler->next();
  const int64_t B = config.train.batch_size, W = hooks.world_size, A = config.train.grad_accum;
  const int64_t rows = B / W, micro = rows / A;
  at::Tensor loss_sum = torch::zeros({}, torch::TensorOptions().dtype(torch::kFloat64).device(device));
  for (int64_t i = 0; i < A; ++i) {
    const int64_t begin = hooks.rank * rows + i * micro;
    const at::Tensor x = batch.first.narrow(0, begin, micro).to(device);
    const at::Tensor y = batch.second.narrow(0, begin, micro).to(device);
    const at::Tensor loss = model.loss_fn(x, y);
    (loss / static_cast<double>(A)).backward();
    loss_sum += loss.detach().to(torch::kFloat64);
  }
  at::Tensor mean_loss = (loss_sum / static_cast<double>(A)).cpu();
  all_reduce(mean_loss);
  s.loss = mean_loss.item<double>() / static_cast<double>(W);
  s.items = B * data.items_per_example;
}

std::vector<at::Tensor> Trainer::Impl::reduce_and_clip(StepStats& s) {
  std::vector<at::Tensor> with_grad;
  for (const auto& p : params)
    if (p.grad().defined()) with_grad.push_back(p);
  if (hooks.after_backward) hooks.after_backward(with_grad);
  s.grad_norm = clip_gradients(with_grad, config.train.grad_clip);
  return with_grad;
}

std::string Trainer::Impl::optimizer_step(const std::vector<at::Tensor>& with_grad, StepStats& s) {
  sync();
  const auto t_opt = Clock::now();
  const double transform_before = transform_seconds();
  try {
    if (hooks.step_optimizer) {
      hooks.step_optimizer(*optimizer);
    } else {
      optimizer->step();
    }
  } catch (const c10::Error& e) {
    // The optimizer refuses non-finite gradients (before changing any state),
    // and the spectral transform refuses a non-finite update ("spectral_power:
    // input contains NaN or Inf", "... produced a non-finite result"): both
    // are divergence. Anything else is a real error.
    bool finite = true;
    for (const auto& p : with_grad)
      finite = finite && p.grad().defined() && p.grad().isfinite().all().item<bool>();
    if (!finite) return "non-finite gradient";
    const std::string what = e.what_without_backtrace();
    if (what.find("NaN or Inf") != std::string::npos || what.find("non-finite") != std::string::npos)
      return "non-finite update (" + what.substr(0, what.find('\n')) + ")";
    throw;
  }
  sync();
  s.optimizer_s = seconds_since(t_opt);
  s.transform_s = transform_seconds() - transform_before;
  return "";
}

void Trainer::Impl::count_step(StepStats& s) {
  ++step;
  totals.items += s.items;
  totals.train_s += s.step_s;
  totals.optimizer_s += s.optimizer_s;
  totals.transform_s += s.transform_s;
  if (!std::isfinite(totals.initial_train_loss)) totals.initial_train_loss = s.loss;
  if (s.loss > kDivergenceLossFactor * totals.initial_train_loss) {
    s.diverged = true;
    s.diverged_reason = fmt::format("training loss {:.4g} > {:g} × the initial loss {:.4g}", s.loss,
                                    kDivergenceLossFactor, totals.initial_train_loss);
  }
}

StepStats Trainer::step() {
  auto& m = *impl_;
  const auto t0 = Clock::now();
  StepStats s;
  s.step = m.step + 1;
  auto give_up = [&](std::string reason) {
    m.optimizer->zero_grad();
    s.diverged = true;
    s.diverged_reason = std::move(reason);
    s.step_s = seconds_since(t0);
    return s;
  };
  m.set_schedules(s);
  m.forward_backward(s);
  if (!std::isfinite(s.loss)) return give_up("non-finite training loss");
  const std::vector<at::Tensor> with_grad = m.reduce_and_clip(s);
  if (!std::isfinite(s.grad_norm)) return give_up("non-finite gradient norm");
  if (std::string reason = m.optimizer_step(with_grad, s); !reason.empty()) return give_up(std::move(reason));
  m.optimizer->zero_grad();
  // A step that wrote NaN/Inf into a weight or the optimizer state (eps
  // underflow, overflow of huge finite values) ends the run here, before any
  // checkpoint could hold that state; the step is not counted.
  std::string bad = first_non_finite_state();
  if (m.hooks.world_size > 1) {
    // Optimizer state may be sharded: every rank must take the same decision.
    at::Tensor flag = torch::full({1}, bad.empty() ? 0.0 : 1.0, torch::kFloat64);
    m.all_reduce(flag);
    if (bad.empty() && flag.item<double>() > 0) bad = "state on another rank";
  }
  if (!bad.empty()) return give_up("non-finite " + bad + " after the optimizer step");
  s.step_s = seconds_since(t0);
  m.count_step(s);
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
      for (const auto& kv : m.model.module->named_parameters())
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
  m.model.module->eval();
  const int64_t micro = c.train.batch_size / c.train.grad_accum;
  int64_t n = m.validation_batches();
  if (c.train.eval_batches > 0) n = std::min(n, c.train.eval_batches);
  // Batches are dealt round-robin to the ranks; (loss sum, example count, correct
  // predictions) is summed.
  at::Tensor sums = torch::zeros({3}, torch::kFloat64);
  for (int64_t i = m.hooks.rank; i < n; i += m.hooks.world_size) {
    auto batch = m.data.val_batch(i, micro);
    const int64_t count = batch.first.size(0);
    const detail::BatchEval e = m.model.eval_fn(batch.first.to(m.device), batch.second.to(m.device));
    sums[0] += e.loss * static_cast<double>(count);
    sums[1] += static_cast<double>(count);
    sums[2] += e.correct;
  }
  m.all_reduce(sums);
  m.model.module->train();
  if (m.model.classifies) m.last_val_accuracy = sums[2].item<double>() / sums[1].item<double>();
  return sums[0].item<double>() / sums[1].item<double>();
}

}  // namespace specopt
