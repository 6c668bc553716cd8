// GPT (nanoGPT, bias=False), MLP and CNN. See include/specopt/train/models.h.
#include "specopt/train/models.h"

#include <ATen/ATen.h>
#include <torch/nn/init.h>

#include <cmath>
#include <limits>

namespace specopt {

// ---------------------------------------------------------------- configs

void validate(const GPTConfig& c) {
  TORCH_CHECK(c.vocab_size > 0, "GPTConfig.vocab_size must be > 0, got ", c.vocab_size);
  TORCH_CHECK(c.block_size > 0, "GPTConfig.block_size must be > 0, got ", c.block_size);
  TORCH_CHECK(c.n_layer > 0, "GPTConfig.n_layer must be > 0, got ", c.n_layer);
  TORCH_CHECK(c.n_head > 0, "GPTConfig.n_head must be > 0, got ", c.n_head);
  TORCH_CHECK(c.n_embd > 0, "GPTConfig.n_embd must be > 0, got ", c.n_embd);
  TORCH_CHECK(c.n_embd % c.n_head == 0, "GPTConfig.n_embd (", c.n_embd,
              ") must be divisible by n_head (", c.n_head, ")");
  TORCH_CHECK(c.dropout >= 0.0 && c.dropout < 1.0, "GPTConfig.dropout must be in [0, 1), got ",
              c.dropout);
}

int64_t gpt_parameter_count(const GPTConfig& c) {
  const int64_t d = c.n_embd;
  return c.vocab_size * d + c.block_size * d + c.n_layer * (12 * d * d + 2 * d) + d;
}

void validate(const MLPConfig& c) {
  TORCH_CHECK(c.input_dim > 0, "MLPConfig.input_dim must be > 0, got ", c.input_dim);
  TORCH_CHECK(c.num_classes > 0, "MLPConfig.num_classes must be > 0, got ", c.num_classes);
  for (size_t i = 0; i < c.hidden.size(); ++i) {
    TORCH_CHECK(c.hidden[i] > 0, "MLPConfig.hidden[", i, "] must be > 0, got ", c.hidden[i]);
  }
}

void validate(const CNNConfig& c) {
  TORCH_CHECK(c.channels1 > 0, "CNNConfig.channels1 must be > 0, got ", c.channels1);
  TORCH_CHECK(c.channels2 > 0, "CNNConfig.channels2 must be > 0, got ", c.channels2);
  TORCH_CHECK(c.hidden > 0, "CNNConfig.hidden must be > 0, got ", c.hidden);
  TORCH_CHECK(c.num_classes > 0, "CNNConfig.num_classes must be > 0, got ", c.num_classes);
}

namespace {

torch::nn::Linear linear_no_bias(int64_t in, int64_t out) {
  return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(false));
}

at::Tensor maybe_dropout(const at::Tensor& x, double p, bool training) {
  return (p > 0.0 && training) ? at::dropout(x, p, /*train=*/true) : x;
}

// RMS normalisation over the last dimension without a learned scale (QK-norm).
at::Tensor rms_normalize(const at::Tensor& x, double eps) {
  return x * at::rsqrt(x.pow(2).mean(-1, /*keepdim=*/true) + eps);
}

}  // namespace

// ---------------------------------------------------------------- GPT parts

LayerNormImpl::LayerNormImpl(int64_t dim, double eps_) : eps(eps_) {
  weight = register_parameter("weight", at::ones({dim}));
}

at::Tensor LayerNormImpl::forward(const at::Tensor& x) {
  return at::layer_norm(x, {weight.size(0)}, weight, /*bias=*/{}, eps);
}

CausalSelfAttentionImpl::CausalSelfAttentionImpl(const GPTConfig& c)
    : n_head(c.n_head), qk_norm(c.qk_norm), dropout(c.dropout) {
  c_attn = register_module("c_attn", linear_no_bias(c.n_embd, 3 * c.n_embd));
  c_proj = register_module("c_proj", linear_no_bias(c.n_embd, c.n_embd));
}

at::Tensor CausalSelfAttentionImpl::forward(const at::Tensor& x) {
  const int64_t B = x.size(0), T = x.size(1), C = x.size(2);
  const int64_t hs = C / n_head;
  // Packed projection: rows [0, C) of c_attn give q, [C, 2C) k, [2C, 3C) v.
  auto qkv = c_attn->forward(x).split(C, /*dim=*/2);
  auto heads = [&](const at::Tensor& t) { return t.view({B, T, n_head, hs}).transpose(1, 2); };
  at::Tensor q = heads(qkv[0]), k = heads(qkv[1]), v = heads(qkv[2]);  // (B, nh, T, hs)
  if (qk_norm) {
    q = rms_normalize(q, 1e-6);
    k = rms_normalize(k, 1e-6);
  }
  // Plain causal attention (LibTorch 1.13 has no scaled_dot_product_attention):
  // softmax(q kᵀ/√hs + M) v with M = -inf above the diagonal. The scale goes
  // on q (T/hs times fewer entries than the scores) and the mask is added in
  // place, so the (B, nh, T, T) scores are written once instead of three
  // times in the forward pass and in the backward pass.
  const double scale = 1.0 / std::sqrt(static_cast<double>(hs));
  auto att = at::matmul(q * scale, k.transpose(-2, -1)).add_(causal_mask(T, x.options()));
  att = maybe_dropout(at::softmax(att, -1), dropout, is_training());
  auto y = at::matmul(att, v).transpose(1, 2).contiguous().view({B, T, C});
  return maybe_dropout(c_proj->forward(y), dropout, is_training());
}

const at::Tensor& CausalSelfAttentionImpl::causal_mask(int64_t T, const at::TensorOptions& options) {
  if (!mask_.defined() || mask_.size(0) != T || mask_.scalar_type() != c10::typeMetaToScalarType(options.dtype()) ||
      mask_.device() != options.device()) {
    mask_ = at::full({T, T}, -std::numeric_limits<double>::infinity(), options).triu(1);
  }
  return mask_;
}

GPTMLPImpl::GPTMLPImpl(const GPTConfig& c) : dropout(c.dropout) {
  c_fc = register_module("c_fc", linear_no_bias(c.n_embd, 4 * c.n_embd));
  c_proj = register_module("c_proj", linear_no_bias(4 * c.n_embd, c.n_embd));
}

at::Tensor GPTMLPImpl::forward(const at::Tensor& x) {
  return maybe_dropout(c_proj->forward(at::gelu(c_fc->forward(x))), dropout, is_training());
}

BlockImpl::BlockImpl(const GPTConfig& c) {
  ln_1 = register_module("ln_1", LayerNorm(c.n_embd));
  attn = register_module("attn", CausalSelfAttention(c));
  ln_2 = register_module("ln_2", LayerNorm(c.n_embd));
  mlp = register_module("mlp", GPTMLP(c));
}

at::Tensor BlockImpl::forward(const at::Tensor& x) {
  auto y = x + attn->forward(ln_1->forward(x));
  return y + mlp->forward(ln_2->forward(y));
}

// ---------------------------------------------------------------- GPT

GPTImpl::GPTImpl(const GPTConfig& c) : config_(c) {
  validate(c);
  wte = torch::nn::Embedding(c.vocab_size, c.n_embd);
  wpe = torch::nn::Embedding(c.block_size, c.n_embd);
  h = torch::nn::ModuleList();
  for (int64_t i = 0; i < c.n_layer; ++i) h->push_back(Block(c));
  ln_f = LayerNorm(c.n_embd);
  // One container named "transformer" gives nanoGPT's parameter names. The
  // LM head is wte itself (weight tying), so it is not registered again.
  torch::nn::ModuleDict transformer;
  transformer->update({{"wte", wte.ptr()}, {"wpe", wpe.ptr()}, {"h", h.ptr()}, {"ln_f", ln_f.ptr()}});
  register_module("transformer", transformer);
  init_weights();
}

void GPTImpl::init_weights() {
  torch::NoGradGuard no_grad;
  // nanoGPT _init_weights: Linear/Embedding ~ N(0, 0.02²); then the two
  // residual output projections get std 0.02/√(2·n_layer) (GPT-2 paper §2.3).
  const double residual_std = 0.02 / std::sqrt(2.0 * static_cast<double>(config_.n_layer));
  wte->weight.normal_(0.0, 0.02);
  wpe->weight.normal_(0.0, 0.02);
  for (const auto& module : *h) {
    auto* block = module->as<BlockImpl>();
    block->attn->c_attn->weight.normal_(0.0, 0.02);
    block->attn->c_proj->weight.normal_(0.0, residual_std);
    block->mlp->c_fc->weight.normal_(0.0, 0.02);
    block->mlp->c_proj->weight.normal_(0.0, residual_std);
  }
}

at::Tensor GPTImpl::forward(const at::Tensor& idx) {
  TORCH_CHECK(idx.dim() == 2, "GPT.forward: idx must be (B, T), got shape ", idx.sizes());
  TORCH_CHECK(idx.scalar_type() == at::kLong, "GPT.forward: idx must be int64, got ",
              idx.scalar_type());
  const int64_t T = idx.size(1);
  TORCH_CHECK(T >= 1 && T <= config_.block_size, "GPT.forward: sequence length ", T,
              " must be in [1, block_size = ", config_.block_size, "]");
  // An out-of-range id would only trip a device-side assert on CUDA (or read
  // past the table); one min/max reduction (a single host sync) names it.
  if (idx.numel() > 0) {
    const auto [lo, hi] = at::aminmax(idx);
    const auto range = at::stack({lo, hi}).cpu();
    const int64_t min_id = range[0].item<int64_t>(), max_id = range[1].item<int64_t>();
    TORCH_CHECK(min_id >= 0 && max_id < config_.vocab_size, "GPT.forward: token id ",
                min_id < 0 ? min_id : max_id, " is outside [0, vocab_size = ", config_.vocab_size,
                ")");
  }
  auto pos = at::arange(T, idx.options());
  auto x = wte->forward(idx) + wpe->forward(pos);  // (B, T, d) + (T, d)
  x = maybe_dropout(x, config_.dropout, is_training());
  for (const auto& module : *h) x = module->as<BlockImpl>()->forward(x);
  x = ln_f->forward(x);
  return at::linear(x, wte->weight);  // tied LM head: logits = x · wteᵀ
}

at::Tensor GPTImpl::loss(const at::Tensor& idx, const at::Tensor& targets) {
  TORCH_CHECK(targets.sizes() == idx.sizes(), "GPT.loss: targets shape ", targets.sizes(),
              " must equal idx shape ", idx.sizes());
  auto logits = forward(idx);
  return at::cross_entropy_loss(logits.view({-1, logits.size(-1)}), targets.reshape({-1}));
}

// ---------------------------------------------------------------- MLP

MLPImpl::MLPImpl(const MLPConfig& c) : config_(c) {
  validate(c);
  layers = register_module("layers", torch::nn::ModuleList());
  int64_t in = c.input_dim;
  for (int64_t width : c.hidden) {
    layers->push_back(torch::nn::Linear(in, width));
    in = width;
  }
  layers->push_back(torch::nn::Linear(in, c.num_classes));
}

at::Tensor MLPImpl::forward(const at::Tensor& x) {
  TORCH_CHECK(x.dim() >= 2, "MLP.forward: input must be (B, ...), got shape ", x.sizes());
  auto y = x.reshape({x.size(0), -1});
  TORCH_CHECK(y.size(1) == config_.input_dim, "MLP.forward: input has ", y.size(1),
              " features per sample, expected input_dim = ", config_.input_dim);
  const size_t n = layers->size();
  for (size_t i = 0; i < n; ++i) {
    y = layers[i]->as<torch::nn::LinearImpl>()->forward(y);
    if (i + 1 < n) y = at::relu(y);
  }
  return y;
}

// ---------------------------------------------------------------- CNN

CNNImpl::CNNImpl(const CNNConfig& c) : config_(c) {
  validate(c);
  conv1 = register_module(
      "conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(1, c.channels1, 3).padding(1)));
  conv2 = register_module(
      "conv2", torch::nn::Conv2d(torch::nn::Conv2dOptions(c.channels1, c.channels2, 3).padding(1)));
  fc1 = register_module("fc1", torch::nn::Linear(c.channels2 * 7 * 7, c.hidden));
  fc2 = register_module("fc2", torch::nn::Linear(c.hidden, c.num_classes));
}

at::Tensor CNNImpl::forward(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 4 && x.size(1) == 1 && x.size(2) == 28 && x.size(3) == 28,
              "CNN.forward: input must be (B, 1, 28, 28), got shape ", x.sizes());
  auto y = at::max_pool2d(at::relu(conv1->forward(x)), {2, 2});   // (B, c1, 14, 14)
  y = at::max_pool2d(at::relu(conv2->forward(y)), {2, 2});        // (B, c2, 7, 7)
  y = at::relu(fc1->forward(y.flatten(1)));
  return fc2->forward(y);
}

}  // namespace specopt
