// Archive helpers shared by the optimizers' save/load (optimizer_base.cpp,
// spectral_adamw.cpp, spectral_sgd.cpp, muon.cpp): typed entries, the option
// tables (option_fields.h) as entries, shapes, state checks.
// Private to the core layer.
#pragma once

#include "specopt/core/option_fields.h"
#include "specopt/core/update_rules.h"  // MatrixTransformOptions

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <torch/optim/optimizer.h>
#include <torch/serialize/archive.h>

#include <cstdint>
#include <string>
#include <tuple>
#include <type_traits>
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

// Writes each field of an option table (option_fields.h) as one entry: the
// field's name (nested SpectralOptions as "spectral.<name>", method left out:
// the transform's method wins), enums by name, compute_dtype as dtype_code, the
// (β₁, β₂) pair "betas" as the two entries "beta1", "beta2". These keys are
// the archive format: checkpoints of every earlier version use them.
struct ArchiveWriter {
  OutputArchive& a;
  std::string prefix;
  template <class T>
  void operator()(const std::string& name, const T& value) const {
    const std::string key = prefix + name;
    if constexpr (is_named_enum<T>::value) {
      put(a, key, EnumNames<T>::name(value));
    } else if constexpr (std::is_same<T, c10::optional<c10::ScalarType>>::value) {
      put(a, key, dtype_code(value));
    } else if constexpr (std::is_same<T, SpectralOptions>::value) {
      visit_spectral_settings(value, ArchiveWriter{a, key + "."});
    } else if constexpr (std::is_same<T, std::tuple<double, double>>::value) {
      put(a, key.substr(0, key.size() - 1) + "1", std::get<0>(value));
      put(a, key.substr(0, key.size() - 1) + "2", std::get<1>(value));
    } else {
      put(a, key, value);
    }
  }
};

// Reads what ArchiveWriter wrote; a missing entry is an error naming it.
struct ArchiveReader {
  InputArchive& a;
  std::string prefix;
  template <class T>
  void operator()(const std::string& name, T& value) const {
    const std::string key = prefix + name;
    if constexpr (is_named_enum<T>::value) {
      value = EnumNames<T>::parse(get(a, key).toStringRef());
    } else if constexpr (std::is_same<T, c10::optional<c10::ScalarType>>::value) {
      value = dtype_from_code(get(a, key).toInt());
    } else if constexpr (std::is_same<T, SpectralOptions>::value) {
      visit_spectral_settings(value, ArchiveReader{a, key + "."});
    } else if constexpr (std::is_same<T, std::tuple<double, double>>::value) {
      value = std::make_tuple(get(a, key.substr(0, key.size() - 1) + "1").toDouble(),
                              get(a, key.substr(0, key.size() - 1) + "2").toDouble());
    } else if constexpr (std::is_same<T, double>::value) {
      value = get(a, key).toDouble();
    } else if constexpr (std::is_same<T, bool>::value) {
      value = get(a, key).toBool();
    } else {
      static_assert(std::is_same<T, int64_t>::value, "ArchiveReader: unsupported field type");
      value = get(a, key).toInt();
    }
  }
};

// The Ψ_p options as one block of entries (Muon's archive uses it too).
void write_transform(OutputArchive& a, const MatrixTransformOptions& t);
MatrixTransformOptions read_transform(InputArchive& a);

void write_shape(OutputArchive& a, const std::string& key, at::IntArrayRef sizes);
std::vector<int64_t> read_shape(InputArchive& a, const std::string& key);
std::string shape_string(at::IntArrayRef sizes);

// A state tensor read from an archive must match its parameter.
void check_state_tensor(const at::Tensor& t, const at::Tensor& param, const std::string& what,
                        const std::string& name);

}  // namespace detail
}  // namespace specopt
