// Models of the controlled study: a nanoGPT-style GPT and two small image
// classifiers (MLP, CNN) for 28×28 grayscale images with 10 classes.
//
// GPT (as nanoGPT with bias=False, the configuration of arXiv 2602.04669):
//   x = wte(idx) + wpe(pos)
//   for each block:  x = x + attn(ln_1(x));  x = x + mlp(ln_2(x))
//   logits = ln_f(x) · wteᵀ                                    (tied LM head)
//   attn: packed QKV projection c_attn (3d × d), causal softmax(q kᵀ/√h) v per
//         head (h = d / n_head), output projection c_proj (d × d)
//   mlp:  c_proj(GELU(c_fc(x))), c_fc: 4d × d, c_proj: d × 4d (exact erf GELU)
//   LayerNorm: weight only (no bias), ε = 1e-5. Linear layers have no bias.
// Initialisation (nanoGPT): every Linear and Embedding weight ~ N(0, 0.02²),
// except attn.c_proj and mlp.c_proj ~ N(0, (0.02/√(2·n_layer))²) (GPT-2's
// residual-path scaling); LayerNorm weights = 1. Initialisation draws from the
// global torch generator: call torch::manual_seed first for a reproducible model.
//
// Parameter names (named_parameters()), as nanoGPT's:
//   transformer.wte.weight          (V, d)   also the LM head (appears once)
//   transformer.wpe.weight          (block_size, d)
//   transformer.h.{i}.ln_1.weight   (d)
//   transformer.h.{i}.attn.c_attn.weight (3d, d)   rows: [q; k; v]
//   transformer.h.{i}.attn.c_proj.weight (d, d)
//   transformer.h.{i}.ln_2.weight   (d)
//   transformer.h.{i}.mlp.c_fc.weight    (4d, d)
//   transformer.h.{i}.mlp.c_proj.weight  (d, 4d)
//   transformer.ln_f.weight         (d)
//
// QK-norm (qk_norm = true): q and k of each head are RMS-normalised over the
// head dimension (no learned scale, ε = 1e-6) before the dot product, as in
// modded-nanogpt; it adds no parameters.
#pragma once

#include "specopt/train/config.h"  // GPTShape

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/container/moduledict.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include <cstdint>
#include <string>
#include <vector>

namespace specopt {

// The shape (GPTShape of config.h: n_layer, n_head, n_embd, block_size,
// qk_norm, dropout, the defaults of the [model] table) and the vocabulary.
struct GPTConfig : GPTShape {
  int64_t vocab_size = 256;
};

// Throws c10::Error naming the bad field (non-positive sizes, n_embd % n_head,
// dropout outside [0, 1)).
void validate(const GPTConfig& config);

// Closed form of the number of distinct parameters of GPT(config):
//   V·d + T·d + L·(12·d² + 2·d) + d
// (tied head counted once; 12d² = 3d² QKV + d² proj + 8d² MLP; 2d = ln_1, ln_2).
int64_t gpt_parameter_count(const GPTConfig& config);

// LayerNorm with a weight and no bias (nanoGPT bias=False).
class LayerNormImpl : public torch::nn::Module {
 public:
  explicit LayerNormImpl(int64_t dim, double eps = 1e-5);
  at::Tensor forward(const at::Tensor& x);
  at::Tensor weight;
  double eps;
};
TORCH_MODULE(LayerNorm);

class CausalSelfAttentionImpl : public torch::nn::Module {
 public:
  explicit CausalSelfAttentionImpl(const GPTConfig& config);
  at::Tensor forward(const at::Tensor& x);  // (B, T, d) → (B, T, d)
  torch::nn::Linear c_attn{nullptr}, c_proj{nullptr};
  int64_t n_head;
  bool qk_norm;
  double dropout;

 private:
  // Additive causal mask (0 on and below the diagonal, -inf above), cached for
  // the last (T, dtype, device) seen. Not a registered buffer: it is derived
  // data and stays out of state dicts and checkpoints.
  const at::Tensor& causal_mask(int64_t T, const at::TensorOptions& options);
  at::Tensor mask_;
};
TORCH_MODULE(CausalSelfAttention);

class GPTMLPImpl : public torch::nn::Module {
 public:
  explicit GPTMLPImpl(const GPTConfig& config);
  at::Tensor forward(const at::Tensor& x);
  torch::nn::Linear c_fc{nullptr}, c_proj{nullptr};
  double dropout;
};
TORCH_MODULE(GPTMLP);

class BlockImpl : public torch::nn::Module {
 public:
  explicit BlockImpl(const GPTConfig& config);
  at::Tensor forward(const at::Tensor& x);
  LayerNorm ln_1{nullptr}, ln_2{nullptr};
  CausalSelfAttention attn{nullptr};
  GPTMLP mlp{nullptr};
};
TORCH_MODULE(Block);

class GPTImpl : public torch::nn::Module {
 public:
  explicit GPTImpl(const GPTConfig& config);
  // idx: (B, T) int64 token ids, T ≤ block_size. Returns logits (B, T, V).
  at::Tensor forward(const at::Tensor& idx);
  // Mean cross entropy of forward(idx) against targets (B, T) int64.
  at::Tensor loss(const at::Tensor& idx, const at::Tensor& targets);
  const GPTConfig& config() const { return config_; }

  torch::nn::Embedding wte{nullptr}, wpe{nullptr};
  // Registered under one ModuleDict "transformer" (wte, wpe, h, ln_f) so that
  // the names match nanoGPT; these members are the same modules, typed.
  torch::nn::ModuleList h{nullptr};  // of Block
  LayerNorm ln_f{nullptr};

 private:
  void init_weights();
  GPTConfig config_;
};
TORCH_MODULE(GPT);

// Image classifiers: input (B, 1, 28, 28) (or (B, 784) for the MLP) float,
// output logits (B, num_classes). PyTorch default initialisation (Kaiming
// uniform), drawn from the global torch generator. Layers have biases.
struct MLPConfig {
  int64_t input_dim = 28 * 28;
  std::vector<int64_t> hidden = {256, 256};  // ReLU after each hidden layer
  int64_t num_classes = 10;
};
void validate(const MLPConfig& config);

class MLPImpl : public torch::nn::Module {
 public:
  explicit MLPImpl(const MLPConfig& config = {});
  at::Tensor forward(const at::Tensor& x);
  // Named "layers.{k}.weight/bias" (k counts the Linear layers).
  torch::nn::ModuleList layers{nullptr};

 private:
  MLPConfig config_;
};
TORCH_MODULE(MLP);

// conv(1→c₁, 3×3, pad 1) → ReLU → maxpool 2 → conv(c₁→c₂, 3×3, pad 1) → ReLU
// → maxpool 2 → flatten (c₂·7·7) → Linear(hidden) → ReLU → Linear(num_classes).
struct CNNConfig {
  int64_t channels1 = 32;
  int64_t channels2 = 64;
  int64_t hidden = 128;
  int64_t num_classes = 10;
};
void validate(const CNNConfig& config);

class CNNImpl : public torch::nn::Module {
 public:
  explicit CNNImpl(const CNNConfig& config = {});
  at::Tensor forward(const at::Tensor& x);  // x: (B, 1, 28, 28)
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr};
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};

 private:
  CNNConfig config_;
};
TORCH_MODULE(CNN);

}  // namespace specopt
