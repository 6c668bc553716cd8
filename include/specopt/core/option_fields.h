// One field table per option set: visit_*_fields(o, v) calls v("name", field)
// for every field of `o`, in a fixed order, with `field` a reference into `o`
// (const when `o` is). Every front end that reads or writes options field by
// field is a visitor of these tables, so a new field is one line here:
//   - the optimizers' archives (core/optimizer_archive.h; the names are the
//     archive keys, nested tables prefixed "spectral.");
//   - the Python bindings' dicts and defaults (python/src/optim.cpp, bindings.cpp);
//   - the docs' option tables (tests/test_optimizers.cpp checks each name has a row).
// The config's [optim] table (train/config.cpp) holds an OptimizerSpec and
// lists its TOML keys over the same fields.
//
// Field types: double, int64_t, bool, std::string, std::vector<std::string>,
// the (β₁, β₂) pair, c10::optional<c10::ScalarType>, nested SpectralOptions,
// and the named enums of EnumNames below (one name ↔ value codec each).
#pragma once

#include "specopt/core/spectral.h"
#include "specopt/core/update_rules.h"

#include <c10/core/ScalarType.h>
#include <c10/util/Optional.h>

#include <cstdint>
#include <string>
#include <type_traits>

namespace specopt {

// The name ↔ value codec of a named enum (the names configs, archives and
// Python use); parse throws c10::Error listing the valid names. Empty for
// other types.
template <class E>
struct EnumNames {};
template <>
struct EnumNames<Method> {
  static std::string name(Method m) { return method_name(m); }
  static Method parse(const std::string& s) { return parse_method(s); }
};
template <>
struct EnumNames<ScaleMode> {
  static std::string name(ScaleMode m) { return scale_mode_name(m); }
  static ScaleMode parse(const std::string& s) { return parse_scale_mode(s); }
};
template <>
struct EnumNames<NsCoefficients> {
  static std::string name(NsCoefficients c) { return ns_coefficients_name(c); }
  static NsCoefficients parse(const std::string& s) { return parse_ns_coefficients(s); }
};
template <>
struct EnumNames<OnNonFinite> {
  static std::string name(OnNonFinite p) { return on_nonfinite_name(p); }
  static OnNonFinite parse(const std::string& s) { return parse_on_nonfinite(s); }
};

template <class T, class = void>
struct is_named_enum : std::false_type {};
template <class T>
struct is_named_enum<T, std::void_t<decltype(EnumNames<T>::name)>> : std::true_type {};

// SpectralOptions::compute_dtype as an integer: the ScalarType's value, -1 = none.
inline int64_t dtype_code(const c10::optional<c10::ScalarType>& dtype) {
  return dtype ? static_cast<int64_t>(static_cast<int>(*dtype)) : -1;
}
inline c10::optional<c10::ScalarType> dtype_from_code(int64_t code) {
  if (code < 0) return c10::nullopt;
  return static_cast<c10::ScalarType>(code);
}

// SpectralOptions beyond its method. Where Ψ_p runs inside an optimizer the
// method is MatrixTransformOptions::method, so nested `spectral` options are
// these fields (archives and group dicts hold no spectral.method).
template <class O, class V>
void visit_spectral_settings(O& o, V&& v) {
  v("tol", o.tol());
  v("iterations", o.iterations());
  v("newton_lower", o.newton_lower());
  v("ns_steps", o.ns_steps());
  v("ns_coefficients", o.ns_coefficients());
  v("compute_dtype", o.compute_dtype());
  v("neg_eps", o.neg_eps());
  v("rank_tol", o.rank_tol());
  v("check_finite", o.check_finite());
}

// All of SpectralOptions (spectral_power's options).
template <class O, class V>
void visit_spectral_fields(O& o, V&& v) {
  v("method", o.method());
  visit_spectral_settings(o, v);
}

// MatrixTransformOptions, or anything with its accessors (SpectralGroupOptions).
template <class O, class V>
void visit_transform_fields(O& o, V&& v) {
  v("p", o.p());
  v("method", o.method());
  v("scale", o.scale());
  v("row_blocks", o.row_blocks());
  v("spectral", o.spectral());
}

// SpectralGroupOptions: the fields both optimizer families share.
template <class O, class V>
void visit_group_fields(O& o, V&& v) {
  v("weight_decay", o.weight_decay());
  v("decay_vectors", o.decay_vectors());
  visit_transform_fields(o, v);
}

// SpectralAdamWOptions.
template <class O, class V>
void visit_adamw_fields(O& o, V&& v) {
  v("lr", o.lr());
  v("betas", o.betas());
  v("eps", o.eps());
  visit_group_fields(o, v);
}

// SpectralSGDOptions.
template <class O, class V>
void visit_sgd_fields(O& o, V&& v) {
  v("lr", o.lr());
  v("momentum", o.momentum());
  v("nesterov", o.nesterov());
  visit_group_fields(o, v);
}

// OptimizerSpec (make_optimizer.h). Its `method` wins over spectral.method.
template <class S, class V>
void visit_spec_fields(S& s, V&& v) {
  v("variant", s.variant);
  v("lr_matrix", s.lr_matrix);
  v("lr_vector", s.lr_vector);
  v("weight_decay_matrix", s.weight_decay_matrix);
  v("weight_decay_vector", s.weight_decay_vector);
  v("beta1", s.beta1);
  v("beta2", s.beta2);
  v("eps", s.eps);
  v("momentum", s.momentum);
  v("nesterov", s.nesterov);
  v("method", s.method);
  v("scale", s.scale);
  v("split_rows_patterns", s.split_rows_patterns);
  v("split_rows_by_shape", s.split_rows_by_shape);
  v("split_rows_blocks", s.split_rows_blocks);
  v("exclude_from_spectral", s.exclude_from_spectral);
  v("on_nonfinite", s.on_nonfinite);
  v("spectral", s.spectral);
}

}  // namespace specopt
