// The trainer (trainer.h) and its checkpoint files (checkpoint.h).
#include "specopt/train/trainer.h"

#include "specopt/train/checkpoint.h"
#include "specopt/train/data.h"
#include "specopt/train/models.h"
#include "specopt/core/spectral_adamw.h"
#include "specopt/core/spectral_sgd.h"
#include "specopt/core/threads.h"
#include "specopt/core/update_rules.h"

#include "train/stop_signals.h"

#include <ATen/CPUGeneratorImpl.h>
#include <c10/util/Exception.h>
#include <torch/cuda.h>
#include <torch/nn/functional/loss.h>
#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>
#include <torch/utils.h>

#include <fcntl.h>
#include <nlohmann/json.hpp>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <sstream>

namespace specopt {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {
constexpr double kInf = std::numeric_limits<double>::infinity();

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}
}  // namespace

// =============================================================================
// Schedules
// =============================================================================

double lr_factor(int64_t step, const TrainLoopConfig& train) {
  const int64_t W = train.warmup_steps, N = train.steps;
  if (step < W) return static_cast<double>(step + 1) / static_cast<double>(W);
  if (train.lr_schedule == "constant") return 1.0;
  const double span = static_cast<double>(std::max<int64_t>(1, N - 1 - W));
  const double t = std::min(1.0, static_cast<double>(step - W) / span);
  const double r = train.min_lr_ratio;
  if (train.lr_schedule == "linear") return r + (1.0 - r) * (1.0 - t);
  TORCH_CHECK(train.lr_schedule == "cosine", "unknown lr_schedule '", train.lr_schedule, "'");
  return r + (1.0 - r) * 0.5 * (1.0 + std::cos(M_PI * t));
}

double scheduled_lr(int64_t step, double peak, const TrainLoopConfig& train) {
  if (train.min_lr <= 0) return peak * lr_factor(step, train);
  TrainLoopConfig shape = train;
  shape.min_lr_ratio = 0.0;  // f ∈ [0, 1]: 1 at the peak, 0 at the last step
  const double f = lr_factor(step, shape);
  if (step < train.warmup_steps) return peak * f;
  return train.min_lr + (peak - train.min_lr) * f;
}

PSchedule PSchedule::parse(const std::string& text) {
  PSchedule s;
  if (text.empty()) return s;
  auto bad = [&](const std::string& why) {
    TORCH_CHECK(false, "bad p schedule '", text, "': ", why,
                " (valid: \"\", \"constant:P\", \"linear:A->B\", \"cosine:A->B\", values in [-0.5, 1])");
  };
  auto number = [&](const std::string& t) {
    char* end = nullptr;
    const double v = std::strtod(t.c_str(), &end);
    if (t.empty() || end != t.c_str() + t.size() || !std::isfinite(v)) bad("'" + t + "' is not a number");
    if (v < -0.5 || v > 1.0) bad("p = " + t + " lies outside [-0.5, 1]");
    return v;
  };
  const auto colon = text.find(':');
  if (colon == std::string::npos) bad("missing 'kind:'");
  const std::string kind = text.substr(0, colon), rest = text.substr(colon + 1);
  if (kind == "constant") {
    s.kind = Kind::kConstant;
    s.from = s.to = number(rest);
    return s;
  }
  if (kind != "linear" && kind != "cosine") bad("unknown kind '" + kind + "'");
  s.kind = kind == "linear" ? Kind::kLinear : Kind::kCosine;
  const auto arrow = rest.find("->");
  if (arrow == std::string::npos) bad("missing '->'");
  s.from = number(rest.substr(0, arrow));
  s.to = number(rest.substr(arrow + 2));
  return s;
}

double PSchedule::at(int64_t step, int64_t steps) const {
  const double t =
      steps > 1 ? std::clamp(static_cast<double>(step) / static_cast<double>(steps - 1), 0.0, 1.0) : 1.0;
  switch (kind) {
    case Kind::kLinear:
      return from + (to - from) * t;
    case Kind::kCosine:
      return to + (from - to) * 0.5 * (1.0 + std::cos(M_PI * t));
    case Kind::kConstant:
    case Kind::kVariant:
      break;
  }
  return from;
}

// =============================================================================
// Gradient clipping
// =============================================================================

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

// =============================================================================
// Checkpoint files
// =============================================================================

namespace {
void put_le(std::string& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
uint64_t get_le(const char* p, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= static_cast<uint64_t>(static_cast<unsigned char>(p[i])) << (8 * i);
  return v;
}
uint32_t crc32_of(const char* data, size_t size) {
  return static_cast<uint32_t>(
      crc32_z(crc32_z(0L, Z_NULL, 0), reinterpret_cast<const Bytef*>(data), size));
}
}  // namespace

namespace {
// write(2) until all of `bytes` is written; false (errno set) on an error.
bool write_all(int fd, const char* bytes, size_t size) {
  size_t done = 0;
  while (done < size) {
    const ssize_t n = ::write(fd, bytes + done, size - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}
}  // namespace

void write_file_atomic(const std::string& path, const std::string& bytes) {
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  TORCH_CHECK(fd >= 0, "cannot create '", tmp, "': ", std::strerror(errno));
  // Any failure removes the temporary file: a partial PATH.tmp of a full disk
  // would otherwise keep the disk full. PATH itself is untouched.
  auto fail = [&](const char* what, int err) {
    ::unlink(tmp.c_str());
    TORCH_CHECK(false, "cannot ", what, " '", tmp, "' (for '", path, "'): ", std::strerror(err));
  };
  if (!write_all(fd, bytes.data(), bytes.size())) {
    const int err = errno;
    ::close(fd);
    fail("write", err);
  }
  if (::fsync(fd) != 0) {
    const int err = errno;
    ::close(fd);
    fail("fsync", err);
  }
  if (::close(fd) != 0) fail("close", errno);
  if (::rename(tmp.c_str(), path.c_str()) != 0) fail("rename", errno);
  // Make the rename itself durable.
  std::string dir = fs::path(path).parent_path().string();
  if (dir.empty()) dir = ".";
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

void write_checkpoint(const std::string& path, torch::serialize::OutputArchive& archive) {
  std::ostringstream payload_stream;
  archive.save_to(payload_stream);
  const std::string payload = payload_stream.str();
  std::string bytes(kCheckpointMagic, sizeof(kCheckpointMagic));
  put_le(bytes, kCheckpointFormatVersion, 4);
  put_le(bytes, payload.size(), 8);
  put_le(bytes, crc32_of(payload.data(), payload.size()), 4);
  bytes += payload;
  write_file_atomic(path, bytes);
}

void read_checkpoint(const std::string& path, torch::serialize::InputArchive& archive,
                     c10::optional<c10::Device> device) {
  // Only a regular file is read, and never more than it holds: a symlink to
  // /dev/zero, a FIFO or a directory is refused by name (O_NONBLOCK: opening
  // a FIFO does not wait for a writer).
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  TORCH_CHECK(fd >= 0, "cannot open checkpoint '", path, "': ", std::strerror(errno));
  struct FdCloser {
    int fd;
    ~FdCloser() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  TORCH_CHECK(::fstat(fd, &st) == 0, "cannot stat checkpoint '", path, "': ", std::strerror(errno));
  TORCH_CHECK(S_ISREG(st.st_mode), "checkpoint '", path, "' is not a regular file (",
              S_ISDIR(st.st_mode) ? "a directory" : S_ISCHR(st.st_mode) ? "a character device"
              : S_ISFIFO(st.st_mode) ? "a FIFO" : "a special file", ")");
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  auto read_exact = [&](char* out, size_t size) {
    size_t done = 0;
    while (done < size) {
      const ssize_t n = ::read(fd, out + done, size - done);
      if (n < 0 && errno == EINTR) continue;
      TORCH_CHECK(n >= 0, "cannot read checkpoint '", path, "': ", std::strerror(errno));
      if (n == 0) break;
      done += static_cast<size_t>(n);
    }
    return done;
  };
  std::string bytes(std::min<uint64_t>(file_size, kCheckpointHeaderSize), '\0');
  bytes.resize(read_exact(bytes.data(), bytes.size()));
  TORCH_CHECK(bytes.size() >= kCheckpointHeaderSize, "checkpoint '", path, "' is truncated: ",
              bytes.size(), " bytes, shorter than the ", kCheckpointHeaderSize, "-byte header");
  TORCH_CHECK(std::memcmp(bytes.data(), kCheckpointMagic, sizeof(kCheckpointMagic)) == 0,
              "'", path, "' is not a specopt checkpoint (bad magic bytes)");
  const uint64_t version = get_le(bytes.data() + 8, 4);
  TORCH_CHECK(version == kCheckpointFormatVersion, "checkpoint '", path, "' has format version ",
              version, "; this build of specopt reads version ", kCheckpointFormatVersion);
  const uint64_t length = get_le(bytes.data() + 12, 8);
  // The payload read is bounded by the file's real size (never by the header alone).
  const uint64_t have = file_size - kCheckpointHeaderSize;
  TORCH_CHECK(have == length, "checkpoint '", path, "' is ",
              have < length ? "truncated" : "followed by extra bytes", ": the header announces ",
              length, " payload bytes, the file holds ", have);
  bytes.resize(kCheckpointHeaderSize + length);
  const size_t got = read_exact(bytes.data() + kCheckpointHeaderSize, length);
  TORCH_CHECK(got == length, "checkpoint '", path, "' is truncated: it shrank to ", got,
              " payload bytes while being read (", length, " announced)");
  const char* payload = bytes.data() + kCheckpointHeaderSize;
  const uint64_t crc = get_le(bytes.data() + 20, 4);
  TORCH_CHECK(crc32_of(payload, length) == crc, "checkpoint '", path,
              "' is corrupt: CRC-32 of the payload does not match the header");
  try {
    archive.load_from(payload, length, device);
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, "checkpoint '", path, "': unreadable archive: ", e.what_without_backtrace());
  } catch (const std::exception& e) {
    TORCH_CHECK(false, "checkpoint '", path, "': unreadable archive: ", e.what());
  }
}

// =============================================================================
// Trainer
// =============================================================================

namespace {

// The keys that may differ between a checkpoint and the resuming config: they
// change where and how often things are written, not what is computed.
bool resumable_difference(const std::string& key) {
  return key == "run.threads" || key == "run.run_dir" || key == "train.log_every" ||
         key == "train.eval_every" || key == "train.checkpoint_every";
}

TokenDataset take_prefix(const TokenDataset& d, int64_t limit) {
  return limit > 0 && limit < d.size() ? d.slice(0, limit) : d;
}
ImageDataset take_prefix(const ImageDataset& d, int64_t limit) {
  return limit > 0 && limit < d.size() ? d.slice(0, limit) : d;
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

nlohmann::json json_number(double v) {
  if (std::isfinite(v)) return v;
  if (std::isnan(v)) return "nan";
  return v > 0 ? "inf" : "-inf";
}
double json_to_double(const nlohmann::json& j) {
  if (j.is_number()) return j.get<double>();
  if (j.is_string()) {
    const std::string s = j.get<std::string>();
    if (s == "inf") return kInf;
    if (s == "-inf") return -kInf;
    if (s == "nan") return std::numeric_limits<double>::quiet_NaN();
  }
  return kInf;  // null: no value
}

}  // namespace

struct Trainer::Impl {
  TrainConfig config;
  TrainHooks hooks;
  torch::Device device{torch::kCPU};

  std::shared_ptr<torch::nn::Module> module;
  std::function<at::Tensor(const at::Tensor&, const at::Tensor&)> loss_fn;
  std::vector<at::Tensor> params;

  // Exactly one of the two data kinds is set.
  std::unique_ptr<TokenBatchSampler> token_sampler;
  TokenDataset token_val;
  std::unique_ptr<ImageBatchSampler> image_sampler;
  ImageDataset image_val;
  int64_t items_per_example = 1;  // tokens per sequence, or 1 per image
  std::string unit;

  std::unique_ptr<SpectralOptimizer> optimizer;
  PSchedule p_schedule;
  int64_t step = 0;
  RunTotals totals;

  void sync() const {
    if (device.is_cuda()) torch::cuda::synchronize(device.index());
  }

  void all_reduce(at::Tensor& values) const {
    if (hooks.world_size > 1) {
      TORCH_CHECK(hooks.all_reduce_sum, "TrainHooks: world_size > 1 needs all_reduce_sum");
      hooks.all_reduce_sum(values);
    }
  }

  std::pair<at::Tensor, at::Tensor> next_train_batch() {
    return token_sampler ? token_sampler->next() : image_sampler->next();
  }

  // Validation batches of batch_size / grad_accum examples (before
  // train.eval_batches); an error naming the data if there is not one.
  int64_t validation_batches() const {
    const auto& c = config;
    const int64_t micro = c.train.batch_size / c.train.grad_accum;
    const int64_t n = token_sampler ? token_val.num_sequential_batches(micro, c.model.block_size)
                                    : image_val.num_batches(micro);
    TORCH_CHECK(n > 0, "the validation set ",
                token_sampler ? "'" + token_val.name() + "' (" + std::to_string(token_val.size()) + " tokens)"
                              : "of '" + (c.data.path.empty() ? std::string("fashion_mnist()") : c.data.path) + "'",
                " is too small for one batch of ", micro, " examples",
                token_sampler ? " of block_size " + std::to_string(c.model.block_size) + " tokens" : "",
                " (data.val_limit = ", c.data.val_limit, ")");
    return n;
  }
};

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
  if (c.model.kind == "gpt") {
    GPTConfig g;
    g.vocab_size = vocab_size;
    g.block_size = c.model.block_size;
    g.n_layer = c.model.n_layer;
    g.n_head = c.model.n_head;
    g.n_embd = c.model.n_embd;
    g.qk_norm = c.model.qk_norm;
    g.dropout = c.model.dropout;
    GPT gpt(g);
    m.module = gpt.ptr();
    m.loss_fn = [gpt](const at::Tensor& x, const at::Tensor& y) mutable { return gpt->loss(x, y); };
  } else {
    std::function<at::Tensor(const at::Tensor&)> forward;
    if (c.model.kind == "mlp") {
      MLPConfig mc;
      mc.hidden = c.model.hidden;
      MLP mlp(mc);
      m.module = mlp.ptr();
      forward = [mlp](const at::Tensor& x) mutable { return mlp->forward(x); };
    } else {
      CNNConfig cc;
      cc.channels1 = c.model.channels[0];
      cc.channels2 = c.model.channels[1];
      cc.hidden = c.model.fc_hidden;
      CNN cnn(cc);
      m.module = cnn.ptr();
      forward = [cnn](const at::Tensor& x) mutable { return cnn->forward(x); };
    }
    m.loss_fn = [forward](const at::Tensor& x, const at::Tensor& y) {
      return torch::nn::functional::cross_entropy(forward(x), y);
    };
  }
  m.module->to(m.device);
  m.params = m.module->parameters();

  OptimizerSpec spec;
  spec.variant = c.optim.variant;
  spec.lr_matrix = c.optim.lr_matrix;
  spec.lr_vector = c.optim.lr_vector;
  spec.weight_decay_matrix = c.optim.weight_decay_matrix;
  spec.weight_decay_vector = c.optim.weight_decay_vector;
  spec.beta1 = c.optim.beta1;
  spec.beta2 = c.optim.beta2;
  spec.eps = c.optim.eps;
  spec.momentum = c.optim.momentum;
  spec.nesterov = c.optim.nesterov;
  spec.method = parse_method(c.optim.method);
  spec.scale = parse_scale_mode(c.optim.scale);
  spec.split_rows_patterns = c.optim.split_rows;
  spec.split_rows_by_shape = c.optim.split_rows_by_shape;
  spec.split_rows_blocks = c.optim.split_rows_blocks;
  spec.spectral.tol(c.optim.spectral_tol).ns_steps(c.optim.ns_steps).newton_lower(c.optim.newton_lower);
  m.optimizer = make_optimizer(m.module->named_parameters(), spec);
  m.p_schedule = PSchedule::parse(c.optim.p_schedule);

  m.totals.best_val_loss = kInf;
  m.totals.last_val_loss = kInf;
  m.totals.last_train_loss = kInf;
  m.totals.initial_train_loss = kInf;
}

Trainer::~Trainer() = default;

int64_t Trainer::steps_done() const { return impl_->step; }
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
  // Batches are dealt round-robin to the ranks; (loss sum, example count) is summed.
  at::Tensor sums = torch::zeros({2}, torch::kFloat64);
  for (int64_t i = m.hooks.rank; i < n; i += m.hooks.world_size) {
    auto batch = m.token_sampler ? m.token_val.sequential_batch(i, micro, c.model.block_size)
                                 : m.image_val.batch(i, micro);
    const int64_t count = batch.first.size(0);
    const double loss =
        m.loss_fn(batch.first.to(m.device), batch.second.to(m.device)).item<double>();
    sums[0] += loss * static_cast<double>(count);
    sums[1] += static_cast<double>(count);
  }
  m.all_reduce(sums);
  m.module->train();
  return sums[0].item<double>() / sums[1].item<double>();
}

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

// =============================================================================
// Progress display
// =============================================================================

namespace {

std::string format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  const int64_t t = static_cast<int64_t>(std::llround(s));
  if (t >= 3600) return fmt::format("{}h{:02d}m", t / 3600, (t / 60) % 60);
  if (t >= 60) return fmt::format("{}m{:02d}s", t / 60, t % 60);
  return fmt::format("{}s", t);
}

std::string format_rate(double r) {
  if (r >= 1e6) return fmt::format("{:.2f}M", r / 1e6);
  if (r >= 1e3) return fmt::format("{:.1f}k", r / 1e3);
  return fmt::format("{:.0f}", r);
}

// A one-line live bar on a terminal, or plain log lines; both on stderr.
class Progress {
 public:
  Progress(ProgressMode mode, int64_t total_steps, int64_t log_every, std::string unit)
      : total_(total_steps), log_every_(log_every), unit_(std::move(unit)) {
    if (mode == ProgressMode::kAuto) mode = ::isatty(STDERR_FILENO) ? ProgressMode::kBar : ProgressMode::kLines;
    mode_ = mode;
  }

  void start(int64_t first_step) {
    start_ = Clock::now();
    first_step_ = first_step;
  }

  void update(const StepStats& s) {
    if (mode_ == ProgressMode::kQuiet) return;
    // Throughput shown: an exponential moving average of the per-step rate.
    const double step_rate = static_cast<double>(s.items) / std::max(s.step_s, 1e-12);
    rate_ = rate_ > 0 ? 0.9 * rate_ + 0.1 * step_rate : step_rate;
    const double rate = rate_;
    const double per_step = seconds_since(start_) / static_cast<double>(s.step - first_step_);
    const double eta = per_step * static_cast<double>(total_ - s.step);
    const std::string unit_short = unit_ == "tokens" ? "tok" : "samples";
    if (mode_ == ProgressMode::kLines) {
      if (s.step % log_every_ != 0 && s.step != total_) return;
      std::cerr << fmt::format("step {}/{} | loss {:.4f} | lr {:.3g}/{:.3g} | p {:.3g} | {} {}/s | eta {}\n",
                               s.step, total_, s.loss, s.lr_matrix, s.lr_vector, s.p, format_rate(rate),
                               unit_short, format_duration(eta));
      return;
    }
    // Redraw at most ~10 times a second, and on the last step.
    if (s.step != total_ && seconds_since(last_draw_) < 0.1) return;
    last_draw_ = Clock::now();
    constexpr int kWidth = 24;
    const int filled = static_cast<int>(kWidth * s.step / std::max<int64_t>(1, total_));
    std::cerr << fmt::format("\r{:>3.0f}% [{}{}] {}/{} loss {:.4f} lr {:.3g} {} {}/s ETA {}\x1b[K",
                             100.0 * s.step / total_, std::string(filled, '#'),
                             std::string(kWidth - filled, '.'), s.step, total_, s.loss, s.lr_matrix,
                             format_rate(rate), unit_short, format_duration(eta))
              << std::flush;
    drawn_ = true;
  }

  void message(const std::string& text) {
    if (mode_ == ProgressMode::kQuiet) return;
    if (drawn_) std::cerr << "\r\x1b[K";
    std::cerr << text << "\n";
    drawn_ = false;
  }

  void finish() {
    if (drawn_) std::cerr << "\n";
    drawn_ = false;
  }

 private:
  ProgressMode mode_;
  int64_t total_, log_every_;
  std::string unit_;
  Clock::time_point start_ = Clock::now(), last_draw_{};
  int64_t first_step_ = 0;
  double rate_ = 0.0;
  bool drawn_ = false;
};

// Keeps the rows of metrics.jsonl with step ≤ last_step (and drops a torn last
// line of a killed run), so a resumed run appends where its checkpoint left off.
void truncate_metrics(const std::string& path, int64_t last_step) {
  std::ifstream in(path);
  if (!in.good()) return;
  std::string kept, line;
  while (std::getline(in, line)) {
    const auto row = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (row.is_discarded() || !row.contains("step")) continue;
    if (row["step"].get<int64_t>() <= last_step) kept += line + "\n";
  }
  in.close();
  write_file_atomic(path, kept);
}

// ---- SIGINT / SIGTERM (TrainOptions::handle_signals) --------------------------

std::atomic<int> g_stop_signal{0};
static_assert(std::atomic<int>::is_always_lock_free, "the signal handler needs a lock-free flag");

// Async-signal-safe: an atomic store, write(2), signal(2), raise(3).
extern "C" void on_stop_signal(int sig) {
  if (g_stop_signal.exchange(sig) != 0) {
    // The second signal: the default action (exit by that signal) at once.
    ::signal(sig, SIG_DFL);
    ::raise(sig);
    return;
  }
  static const char msg[] =
      "\nspecopt: signal received: finishing this step, then writing a checkpoint and the metrics "
      "(send it again to exit at once)\n";
  const ssize_t ignored = ::write(STDERR_FILENO, msg, sizeof(msg) - 1);
  (void)ignored;
}

// Installs on_stop_signal for SIGINT and SIGTERM while it lives.
class StopSignals {
 public:
  // The flag is cleared before the handler is installed.
  explicit StopSignals(bool on) : handler_((g_stop_signal = 0, on), on_stop_signal) {}
  int received() const { return handler_.on() ? g_stop_signal.load() : 0; }

 private:
  detail::ScopedStopHandler handler_;
};

// ---- the run directory lock --------------------------------------------------------

// An exclusive flock(2) on RUN_DIR/lock for the lifetime of the object; the
// file holds the holder's PID for the error message of the next comer. The
// kernel drops the lock when the process dies (even by SIGKILL), so a stale
// file never blocks a rerun.
class RunDirLock {
 public:
  explicit RunDirLock(const fs::path& dir) {
    const std::string path = (dir / "lock").string();
    fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    TORCH_CHECK(fd_ >= 0, "cannot open the lock file '", path, "': ", std::strerror(errno));
    if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
      const int err = errno;
      std::string holder;
      // The holder writes its PID just after it locks: give it a moment.
      for (int attempt = 0; attempt < 20 && holder.empty(); ++attempt) {
        char buf[32] = {};
        const ssize_t n = ::pread(fd_, buf, sizeof(buf) - 1, 0);
        for (ssize_t i = 0; i < n && buf[i] >= '0' && buf[i] <= '9'; ++i) holder.push_back(buf[i]);
        if (holder.empty()) ::usleep(10000);
      }
      ::close(fd_);
      TORCH_CHECK(err == EWOULDBLOCK, "cannot lock '", path, "': ", std::strerror(err));
      TORCH_CHECK(false, "run directory '", dir.string(), "' is in use by process ",
                  holder.empty() ? std::string("(unknown PID)") : holder, " (it holds the lock '", path,
                  "'); wait for that run to end, or choose another run directory");
    }
    const std::string pid = std::to_string(::getpid()) + "\n";
    if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, pid.data(), pid.size(), 0) != static_cast<ssize_t>(pid.size())) {
      const int err = errno;
      ::close(fd_);
      TORCH_CHECK(false, "cannot write the lock file '", path, "': ", std::strerror(err));
    }
  }
  ~RunDirLock() { ::close(fd_); }
  RunDirLock(const RunDirLock&) = delete;
  RunDirLock& operator=(const RunDirLock&) = delete;

 private:
  int fd_ = -1;
};

// metrics.jsonl, appended line by line with checked write(2)s (an ofstream
// would fail silently on a full disk and leave half a line).
class MetricsFile {
 public:
  explicit MetricsFile(std::string path) : path_(std::move(path)) {
    fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    TORCH_CHECK(fd_ >= 0, "cannot open '", path_, "' for writing: ", std::strerror(errno));
  }
  ~MetricsFile() { ::close(fd_); }
  MetricsFile(const MetricsFile&) = delete;
  MetricsFile& operator=(const MetricsFile&) = delete;
  // "" on success, else the error naming the file.
  std::string append(const std::string& line) {
    const std::string text = line + "\n";
    const off_t before = ::lseek(fd_, 0, SEEK_END);
    if (write_all(fd_, text.data(), text.size())) return "";
    const int err = errno;
    // Drop the torn line, so the file stays whole lines (resume reads it).
    if (before >= 0) {
      const int ignored = ::ftruncate(fd_, before);
      (void)ignored;
    }
    return fmt::format("cannot write '{}': {}", path_, std::strerror(err));
  }

 private:
  std::string path_;
  int fd_ = -1;
};

TrainResult result_from_summary(const nlohmann::json& s) {
  TrainResult r;
  r.status = s.value("status", "finished");
  r.diverged = s.value("diverged", false);
  r.diverged_reason = s.value("diverged_reason", "");
  r.steps_done = s.value("steps_done", int64_t{0});
  r.final_train_loss = json_to_double(s.value("final_train_loss", nlohmann::json()));
  r.final_val_loss = json_to_double(s.value("final_val_loss", nlohmann::json()));
  r.best_val_loss = json_to_double(s.value("best_val_loss", nlohmann::json()));
  r.throughput_unit = s.value("throughput_unit", "");
  r.throughput = s.value("throughput", 0.0);
  r.spectral_share = s.value("spectral_share", 0.0);
  r.wall_s = s.value("wall_s", 0.0);
  return r;
}

}  // namespace

// =============================================================================
// A whole run
// =============================================================================

TrainResult train(const TrainConfig& config, const std::string& run_dir, const TrainOptions& options) {
  const bool main_process = options.hooks.is_main_process();
  const fs::path dir(run_dir);
  const std::string checkpoint_path = (dir / "checkpoint.pt").string();
  const std::string metrics_path = (dir / "metrics.jsonl").string();
  const std::string summary_path = (dir / "summary.json").string();
  const std::string config_path = (dir / "config.toml").string();
  const ProgressMode mode = main_process ? options.progress : ProgressMode::kQuiet;
  const StopSignals stop_signals(options.handle_signals);

  // One writer per run directory, for the whole run (before anything in it is
  // read or replaced).
  std::unique_ptr<RunDirLock> lock;
  if (main_process) {
    std::error_code ec;
    fs::create_directories(dir, ec);
    TORCH_CHECK(!ec, "cannot create run directory '", run_dir, "': ", ec.message());
    lock = std::make_unique<RunDirLock>(dir);
  }

  // A resumed run must be the same run: the config it was started with (its
  // config.toml) may differ only in keys that do not change the computation.
  if (options.resume && fs::exists(config_path)) {
    std::ifstream in(config_path);
    std::stringstream text;
    text << in.rdbuf();
    const TrainConfig before = config_from_toml_string(text.str(), config_path);
    std::string diff;
    for (const auto& key : config_differences(before, config))
      if (!resumable_difference(key)) diff += (diff.empty() ? "" : ", ") + key;
    TORCH_CHECK(diff.empty(), "cannot resume '", run_dir, "' with another config; these keys differ from ",
                config_path, ": ", diff);
  }
  if (options.resume && fs::exists(summary_path)) {
    std::ifstream in(summary_path);
    const auto summary = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
    TORCH_CHECK(!summary.is_discarded(), "cannot parse '", summary_path, "'");
    if (mode != ProgressMode::kQuiet)
      std::cerr << "run '" << run_dir << "' is already complete (" << summary_path << "); not retraining\n";
    return result_from_summary(summary);
  }

  std::error_code ec;
  Trainer trainer(config, options.hooks);
  const auto& c = trainer.config();
  Progress progress(mode, c.train.steps, c.train.log_every, trainer.item_unit());

  if (options.resume && fs::exists(checkpoint_path)) {
    trainer.load_checkpoint(checkpoint_path);
    if (options.hooks.after_load) options.hooks.after_load(trainer.optimizer());
    if (main_process) truncate_metrics(metrics_path, trainer.steps_done());
    progress.message(fmt::format("resuming '{}' at step {}/{}", run_dir, trainer.steps_done(), c.train.steps));
  } else if (main_process) {
    for (const auto& p : {metrics_path, summary_path, checkpoint_path, checkpoint_path + ".tmp"})
      fs::remove(p, ec);
  }
  if (main_process) write_file_atomic(config_path, config_to_toml(c));

  std::unique_ptr<MetricsFile> metrics;
  if (main_process) metrics = std::make_unique<MetricsFile>(metrics_path);
  auto& totals = trainer.totals();
  const auto run_start = Clock::now();
  const double wall_before = totals.wall_s;
  const std::string rate_key = trainer.item_unit() + "_per_s";

  bool diverged = false;
  std::string diverged_reason;
  int stop_signal = 0;
  auto save = [&] {
    if (options.hooks.before_save) options.hooks.before_save(trainer.optimizer());
    if (main_process) trainer.save_checkpoint(checkpoint_path);
    if (options.hooks.after_save) options.hooks.after_save(trainer.optimizer());
  };
  progress.start(trainer.steps_done());
  while (trainer.steps_done() < c.train.steps) {
    const StepStats s = trainer.step();
    nlohmann::json row = {{"step", s.step},
                          {"train_loss", json_number(s.loss)},
                          {"lr_matrix", s.lr_matrix},
                          {"lr_vector", s.lr_vector},
                          {"p", s.p},
                          {"grad_norm", json_number(s.grad_norm)},
                          {rate_key, s.items / std::max(s.step_s, 1e-12)}};
    totals.last_train_loss = s.loss;
    bool log_row = s.step % c.train.log_every == 0 || s.step == c.train.steps;
    if (s.diverged) {
      diverged = true;
      diverged_reason = s.diverged_reason;
      log_row = true;
    } else if (s.step % c.train.eval_every == 0 || s.step == c.train.steps) {
      const double val = trainer.evaluate();
      totals.last_val_loss = val;
      if (!std::isfinite(val)) {
        diverged = true;
        diverged_reason = "non-finite validation loss";
      } else if (val > kDivergenceLossFactor * totals.initial_train_loss) {
        diverged = true;
        diverged_reason = fmt::format("validation loss {:.4g} > {:g} × the initial loss {:.4g}", val,
                                      kDivergenceLossFactor, totals.initial_train_loss);
      } else {
        totals.best_val_loss = std::min(totals.best_val_loss, val);
      }
      row["val_loss"] = json_number(val);
      log_row = true;
      progress.message(fmt::format("step {}/{} | val_loss {:.4f} | best {:.4f}", s.step, c.train.steps,
                                   val, totals.best_val_loss));
    }
    if (main_process && log_row) {
      const std::string error = metrics->append(row.dump());
      if (!error.empty()) {
        // Disk full (or gone): stop, keeping what can be kept.
        progress.finish();
        std::string saved = "no checkpoint is written (train.checkpoint_every = 0)";
        if (c.train.checkpoint_every > 0 && !diverged) {
          try {
            save();
            saved = "a checkpoint of step " + std::to_string(trainer.steps_done()) + " was written to '" +
                    checkpoint_path + "'";
          } catch (const c10::Error& e) {
            saved = std::string("the checkpoint could not be written either: ") + e.what_without_backtrace();
          }
        }
        TORCH_CHECK(false, "run '", run_dir, "' stopped at step ", s.step, ": ", error, "; ", saved);
      }
    }
    totals.wall_s = wall_before + seconds_since(run_start);
    if (diverged) {
      progress.message(fmt::format("step {}/{}: {} — run diverged", s.step, c.train.steps, diverged_reason));
      break;
    }
    progress.update(s);
    // A stop signal on any rank stops every rank after the same step.
    double stop = stop_signals.received();
    if (options.hooks.world_size > 1 && options.handle_signals) {
      at::Tensor flag = torch::full({1}, stop, torch::kFloat64);
      options.hooks.all_reduce_sum(flag);
      stop = flag.item<double>();
    }
    const bool last = s.step == c.train.steps;
    if (stop != 0 && !last) {
      stop_signal = stop_signals.received() != 0 ? stop_signals.received() : SIGTERM;
      save();
      progress.finish();
      progress.message(fmt::format("{} at step {}/{}: checkpoint written to '{}'; rerun with --resume to continue",
                                   stop_signal == SIGINT ? "SIGINT" : stop_signal == SIGTERM ? "SIGTERM" : "signal",
                                   s.step, c.train.steps, checkpoint_path));
      break;
    }
    if (c.train.checkpoint_every > 0 && (s.step % c.train.checkpoint_every == 0 || last)) save();
  }
  progress.finish();

  TrainResult r;
  r.diverged = diverged;
  r.diverged_reason = diverged_reason;
  r.stop_signal = stop_signal;
  if (stop_signal != 0) {
    // No summary.json: the run is not complete, and --resume continues it.
    r.status = "interrupted";
    r.steps_done = trainer.steps_done();
    r.final_train_loss = totals.last_train_loss;
    r.final_val_loss = totals.last_val_loss;
    r.best_val_loss = totals.best_val_loss;
    r.throughput_unit = trainer.item_unit();
    r.wall_s = wall_before + seconds_since(run_start);
    return r;
  }
  r.status = diverged ? "diverged" : "finished";
  r.steps_done = trainer.steps_done();
  r.final_train_loss = totals.last_train_loss;
  r.final_val_loss = diverged ? kInf : totals.last_val_loss;
  r.best_val_loss = totals.best_val_loss;
  r.throughput_unit = trainer.item_unit();
  r.throughput = totals.train_s > 0 ? static_cast<double>(totals.items) / totals.train_s : 0.0;
  r.spectral_share = totals.train_s > 0 ? totals.transform_s / totals.train_s : 0.0;
  r.wall_s = wall_before + seconds_since(run_start);

  if (main_process) {
    int64_t parameters = 0;
    for (const auto& p : trainer.model().parameters()) parameters += p.numel();
    const nlohmann::json summary = {
        {"status", r.status},
        {"diverged", r.diverged},
        {"diverged_reason", r.diverged_reason},
        {"steps_done", r.steps_done},
        {"steps", c.train.steps},
        {"final_train_loss", json_number(r.final_train_loss)},
        {"final_val_loss", json_number(r.final_val_loss)},
        {"best_val_loss", json_number(r.best_val_loss)},
        {rate_key, r.throughput},
        {"throughput", r.throughput},
        {"throughput_unit", r.throughput_unit},
        {"spectral_share", r.spectral_share},
        {"train_s", totals.train_s},
        {"optimizer_s", totals.optimizer_s},
        {"transform_s", totals.transform_s},
        {"wall_s", r.wall_s},
        {"variant", parse_variant(c.optim.variant).name},
        {"lr_matrix", c.optim.lr_matrix},
        {"lr_vector", c.optim.lr_vector},
        {"seed", c.run.seed},
        {"model", c.model.kind},
        {"data", c.data.kind},
        {"parameters", parameters},
        {"device", c.run.device},
        {"cpu_threads", [] {
           const CpuThreads t = cpu_threads();
           return nlohmann::json{{"intra_op", t.intra_op}, {"blas", t.blas}, {"blas_kind", t.blas_kind}};
         }()},
    };
    write_file_atomic(summary_path, summary.dump(2) + "\n");
  }
  return r;
}

}  // namespace specopt
