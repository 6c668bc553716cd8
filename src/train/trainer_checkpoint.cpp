// Trainer::save_checkpoint and Trainer::load_checkpoint (trainer.h): what a
// trainer checkpoint holds (docs/training.md); the file format is checkpoint.h's.
#include "train/trainer_impl.h"

#include "specopt/train/checkpoint.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>

#include <mutex>

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
  m.module->save(model_archive);
  archive.write("model", model_archive);
  torch::serialize::OutputArchive optimizer_archive(archive.compilation_unit());
  m.optimizer->save(optimizer_archive);
  archive.write("optimizer", optimizer_archive);

  // Random state: the global CPU generator (dropout; init is already done),
  // the device generator, and the data samplers' positions.
  archive.write("rng_cpu", cpu_generator_state(), /*is_buffer=*/true);
  if (m.device.is_cuda()) {
    auto gen = at::globalContext().defaultGenerator(m.device);
    std::lock_guard<std::mutex> lock(gen.mutex());
    archive.write("rng_device", gen.get_state(), /*is_buffer=*/true);
  }
  if (m.token_sampler) {
    const auto& st = m.token_sampler->state();
    archive.write("data_seed", c10::IValue(static_cast<int64_t>(st.seed)));
    archive.write("data_step", c10::IValue(st.step));
  } else {
    const auto& st = m.image_sampler->state();
    archive.write("data_seed", c10::IValue(static_cast<int64_t>(st.seed)));
    archive.write("data_epoch", c10::IValue(st.epoch));
    archive.write("data_cursor", c10::IValue(st.cursor));
  }

  archive.write("totals_best_val_loss", c10::IValue(m.totals.best_val_loss));
  archive.write("totals_last_val_loss", c10::IValue(m.totals.last_val_loss));
  archive.write("totals_last_train_loss", c10::IValue(m.totals.last_train_loss));
  archive.write("totals_initial_train_loss", c10::IValue(m.totals.initial_train_loss));
  archive.write("totals_items", c10::IValue(m.totals.items));
  archive.write("totals_train_s", c10::IValue(m.totals.train_s));
  archive.write("totals_optimizer_s", c10::IValue(m.totals.optimizer_s));
  archive.write("totals_transform_s", c10::IValue(m.totals.transform_s));
  archive.write("totals_wall_s", c10::IValue(m.totals.wall_s));
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
  auto read = [&](const char* key) {
    c10::IValue v;
    TORCH_CHECK(archive.try_read(key, v), "checkpoint '", path, "' lacks the entry '", key, "'");
    return v;
  };

  const TrainConfig saved = config_from_toml_string(read("config").toStringRef(), path + " (config)");
  std::string diff;
  for (const auto& key : config_differences(saved, m.config))
    if (!resumable_difference(key)) diff += (diff.empty() ? "" : ", ") + key;
  TORCH_CHECK(diff.empty(), "checkpoint '", path, "' was written with another config; these keys differ: ",
              diff, " (only run.threads, run.run_dir, train.log_every, train.eval_every and "
              "train.checkpoint_every may change on resume)");

  // Everything is read into temporaries first where possible, so a failure
  // leaves this trainer unchanged except for the model/optimizer loads below.
  const int64_t step = read("step").toInt();
  at::Tensor rng_cpu, rng_device;
  TORCH_CHECK(archive.try_read("rng_cpu", rng_cpu, true), "checkpoint '", path, "' lacks 'rng_cpu'");
  if (m.device.is_cuda())
    TORCH_CHECK(archive.try_read("rng_device", rng_device, true), "checkpoint '", path,
                "' lacks 'rng_device'");

  torch::serialize::InputArchive model_archive, optimizer_archive;
  TORCH_CHECK(archive.try_read("model", model_archive), "checkpoint '", path, "' lacks 'model'");
  TORCH_CHECK(archive.try_read("optimizer", optimizer_archive), "checkpoint '", path,
              "' lacks 'optimizer'");
  m.module->load(model_archive);
  m.optimizer->load(optimizer_archive);

  set_generator_state(at::detail::getDefaultCPUGenerator(), rng_cpu);
  if (m.device.is_cuda()) set_generator_state(at::globalContext().defaultGenerator(m.device), rng_device);
  if (m.token_sampler) {
    TokenSamplerState st;
    st.seed = static_cast<uint64_t>(read("data_seed").toInt());
    st.step = read("data_step").toInt();
    m.token_sampler->set_state(st);
  } else {
    EpochSamplerState st;
    st.seed = static_cast<uint64_t>(read("data_seed").toInt());
    st.epoch = read("data_epoch").toInt();
    st.cursor = read("data_cursor").toInt();
    m.image_sampler->set_state(st);
  }
  m.totals.best_val_loss = read("totals_best_val_loss").toDouble();
  m.totals.last_val_loss = read("totals_last_val_loss").toDouble();
  m.totals.last_train_loss = read("totals_last_train_loss").toDouble();
  {
    // Absent from checkpoints written before the loss-factor divergence rule.
    c10::IValue v;
    m.totals.initial_train_loss = archive.try_read("totals_initial_train_loss", v) ? v.toDouble() : kInf;
  }
  m.totals.items = read("totals_items").toInt();
  m.totals.train_s = read("totals_train_s").toDouble();
  m.totals.optimizer_s = read("totals_optimizer_s").toDouble();
  m.totals.transform_s = read("totals_transform_s").toDouble();
  m.totals.wall_s = read("totals_wall_s").toDouble();
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
