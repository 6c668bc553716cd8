// Archive helpers shared by the optimizer classes (spectral_optimizers.cpp,
// muon.cpp): typed entries with clear "missing entry" errors, the Ψ_p options,
// and the shape checks of loaded state.
#pragma once

#include "specopt/core/update_rules.h"

#include <ATen/core/Tensor.h>
#include <torch/serialize/archive.h>

#include <string>

namespace specopt {
namespace detail {

template <typename T>
void put(torch::serialize::OutputArchive& a, const std::string& key, T value) {
  a.write(key, c10::IValue(value));
}
// The entry `key`; throws c10::Error naming it when missing.
c10::IValue get(torch::serialize::InputArchive& a, const std::string& key);

// MatrixTransformOptions, the spectral settings included.
void write_transform(torch::serialize::OutputArchive& a, const MatrixTransformOptions& t);
MatrixTransformOptions read_transform(torch::serialize::InputArchive& a);

std::string shape_string(at::IntArrayRef sizes);
// Throws, naming `name` and `what`, unless t is defined with param's shape.
void check_state_tensor(const at::Tensor& t, const at::Tensor& param, const std::string& what,
                        const std::string& name);

}  // namespace detail
}  // namespace specopt
