// Archive helpers shared by the optimizers' save/load (optimizer_base.cpp,
// spectral_adamw.cpp, spectral_sgd.cpp): typed entries, the Ψ_p options
// (MatrixTransformOptions) as one block of entries, shapes, state checks.
// Private to the core layer.
#pragma once

#include "specopt/core/update_rules.h"  // MatrixTransformOptions

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <torch/optim/optimizer.h>
#include <torch/serialize/archive.h>

#include <cstdint>
#include <string>
#include <vector>

namespace specopt {

using torch::optim::OptimizerOptions;
using torch::optim::OptimizerParamState;
using torch::serialize::InputArchive;
using torch::serialize::OutputArchive;

namespace detail {

template <typename T>
void put(OutputArchive& a, const std::string& key, T value) {
  a.write(key, c10::IValue(value));
}

// The entry `key`; an error naming it when it is missing.
c10::IValue get(InputArchive& a, const std::string& key);

// The Ψ_p options shared by both option structs, spectral settings included.
void write_transform(OutputArchive& a, const MatrixTransformOptions& t);
MatrixTransformOptions read_transform(InputArchive& a);

// Options structs with the MatrixTransformOptions setters (SpectralAdamWOptions,
// SpectralSGDOptions).
template <typename Options>
void assign_transform(Options& o, const MatrixTransformOptions& t) {
  o.p(t.p()).method(t.method()).scale(t.scale()).row_blocks(t.row_blocks()).spectral(t.spectral());
}

template <typename Options>
MatrixTransformOptions transform_of(const Options& o) {
  return MatrixTransformOptions()
      .p(o.p())
      .method(o.method())
      .scale(o.scale())
      .row_blocks(o.row_blocks())
      .spectral(o.spectral());
}

void write_shape(OutputArchive& a, const std::string& key, at::IntArrayRef sizes);
std::vector<int64_t> read_shape(InputArchive& a, const std::string& key);
std::string shape_string(at::IntArrayRef sizes);

// A state tensor read from an archive must match its parameter.
void check_state_tensor(const at::Tensor& t, const at::Tensor& param, const std::string& what,
                        const std::string& name);

}  // namespace detail
}  // namespace specopt
