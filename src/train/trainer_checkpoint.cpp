// Trainer::save_checkpoint and Trainer::load_checkpoint (trainer.h): what a
// trainer checkpoint holds (docs/training.md); the file format is checkpoint.h's.
#include "train/trainer_impl.h"

#include "specopt/train/checkpoint.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>

#include <mutex>
#include <type_traits>

namespace specopt {

using detail::kInf;
using detail::resumable_difference;

namespace {
at::Tensor cpu_generator_state() {
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  return gen.get_state();
}
void set_generator_state(at::Generator gen, const at::Tensor& state) {
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(state.cpu());
}

// The entries of a loaded checkpoint; a missing one is an error naming the file.
struct Entries {
  torch::serialize::InputArchive& in;
  const std::string& path;

  c10::IValue value(const std::string& key) const {
    c10::IValue v;
    TORCH_CHECK(in.try_read(key, v), "checkpoint '", path, "' lacks the entry '", key, "'");
    return v;
  }
  void archive(const std::string& key, torch::serialize::InputArchive& out) const {
    TORCH_CHECK(in.try_read(key, out), "checkpoint '", path, "' lacks '", key, "'");
  }
  void buffer(const std::string& key, at::Tensor& out) const {
    TORCH_CHECK(in.try_read(key, out, /*is_buffer=*/true), "checkpoint '", path, "' lacks '", key, "'");
  }
};

// Calls v("totals_NAME", field) for every field of RunTotals, in the order of trainer.h.
template <class Totals, class Visitor>
void visit_totals(Totals& t, Visitor&& v) {
  v("totals_best_val_loss", t.best_val_loss);
  v("totals_last_val_loss", t.last_val_loss);
  v("totals_last_train_loss", t.last_train_loss);
  v("totals_initial_train_loss", t.initial_train_loss);
  v("totals_items", t.items);
  v("totals_train_s", t.train_s);
  v("totals_optimizer_s", t.optimizer_s);
  v("totals_transform_s", t.transform_s);
  v("totals_wall_s", t.wall_s);
}

RunTotals read_totals(const Entries& entries) {
  RunTotals totals;
  visit_totals(totals, [&](const std::string& key, auto& field) {
    if constexpr (std::is_same_v<std::decay_t<decltype(field)>, int64_t>) {
      field = entries.value(key).toInt();
    } else if (key == "totals_initial_train_loss") {
      // Absent from checkpoints written before the loss-factor divergence rule.
      c10::IValue v;
      field = entries.in.try_read(key, v) ? v.toDouble() : kInf;
    } else {
      field = entries.value(key).toDouble();
    }
  });
  return totals;
}

// The sampler state as entries "data_NAME" (data.h: SamplerState).
void write_sampler_state(torch::serialize::OutputArchive& archive, const BatchSampler& sampler) {
  for (const auto& [name, value] : sampler.named_state()) archive.write("data_" + name, c10::IValue(value));
}
// The state of `sampler`'s kind (its names, this checkpoint's values).
SamplerState read_sampler_state(const Entries& entries, const BatchSampler& sampler) {
  SamplerState state = sampler.named_state();
  for (auto& entry : state) entry.second = entries.value("data_" + entry.first).toInt();
  return state;
}

// The checkpoint's config must equal `config` but for the resumable keys.
void check_same_config(const Entries& entries, const TrainConfig& config) {
  const std::string& path = entries.path;
  const TrainConfig saved = config_from_toml_string(entries.value("config").toStringRef(), path + " (config)");
  std::string diff;
  for (const auto& key : config_differences(saved, config))
    if (!resumable_difference(key)) diff += (diff.empty() ? "" : ", ") + key;
  TORCH_CHECK(diff.empty(), "checkpoint '", path, "' was written with another config; these keys differ: ",
              diff, " (only run.threads, run.run_dir, train.log_every, train.eval_every and "
              "train.checkpoint_every may change on resume)");
}
}  // namespace

void Trainer::save_checkpoint(const std::string& path) const {
  const auto& m = *impl_;
  const std::string bad = first_non_finite_state();
  TORCH_CHECK(bad.empty(), "refusing to write checkpoint '", path, "': ", bad,
              " holds NaN or Inf (the last good checkpoint is kept)");
  torch::serialize::OutputArchive archive;
  archive.write("config", c10::IValue(config_to_toml(m.config)));
  archive.write("step", c10::IValue(m.step));

  torch::serialize::OutputArchive model_archive(archive.compilation_unit());
  m.model.module->save(model_archive);
  archive.write("model", model_archive);
  torch::serialize::OutputArchive optimizer_archive(archive.compilation_unit());
  m.optimizer->save(optimizer_archive);
  archive.write("optimizer", optimizer_archive);

  // Random state: the global CPU generator (dropout; init is already done),
  // the device generator, and the data sampler's position.
  archive.write("rng_cpu", cpu_generator_state(), /*is_buffer=*/true);
  if (m.device.is_cuda()) {
    auto gen = at::globalContext().defaultGenerator(m.device);
    std::lock_guard<std::mutex> lock(gen.mutex());
    archive.write("rng_device", gen.get_state(), /*is_buffer=*/true);
  }
  write_sampler_state(archive, *m.data.sampler);
  visit_totals(m.totals, [&](const std::string& key, const auto& field) { archive.write(key, c10::IValue(field)); });
  write_checkpoint(path, archive);
}

void Trainer::load_checkpoint(const std::string& path) {
  auto& m = *impl_;
  torch::serialize::InputArchive archive;
  read_checkpoint(path, archive, m.device);
  // A payload that passes the CRC but holds the wrong things (a corrupted
  // writer, a hand-edited file) must still give an error naming the file, not
  // TorchScript's own text alone.
  try {
    const Entries entries{archive, path};
    check_same_config(entries, m.config);
    // Everything is read into temporaries first where possible, so a failure
    // leaves this trainer unchanged except for the model/optimizer loads below.
    const int64_t step = entries.value("step").toInt();
    at::Tensor rng_cpu, rng_device;
    entries.buffer("rng_cpu", rng_cpu);
    if (m.device.is_cuda()) entries.buffer("rng_device", rng_device);
    torch::serialize::InputArchive model_archive, optimizer_archive;
    entries.archive("model", model_archive);
    entries.archive("optimizer", optimizer_archive);
    m.model.module->load(model_archive);
    m.optimizer->load(optimizer_archive);

    set_generator_state(at::detail::getDefaultCPUGenerator(), rng_cpu);
    if (m.device.is_cuda()) set_generator_state(at::globalContext().defaultGenerator(m.device), rng_device);
    m.data.sampler->set_named_state(read_sampler_state(entries, *m.data.sampler));
    m.totals = read_totals(entries);
    m.step = step;
  } catch (const c10::Error& e) {
    const std::string what = e.what_without_backtrace();
    if (what.find(path) != std::string::npos) throw;
    TORCH_CHECK(false, "checkpoint '", path, "': unreadable content: ", what);
  } catch (const std::exception& e) {
    TORCH_CHECK(false, "checkpoint '", path, "': unreadable content: ", e.what());
  }
}

}  // namespace specopt
