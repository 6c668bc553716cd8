// The archive helpers of optimizer_archive.h.
#include "core/optimizer_archive.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/types.h>

#include <sstream>

namespace specopt {
namespace detail {

c10::IValue get(InputArchive& a, const std::string& key) {
  c10::IValue v;
  TORCH_CHECK(a.try_read(key, v), "optimizer archive: missing entry '", key, "'");
  return v;
}

void write_transform(OutputArchive& a, const MatrixTransformOptions& t) {
  put(a, "p", t.p());
  put(a, "method", method_name(t.method()));
  put(a, "scale", scale_mode_name(t.scale()));
  put(a, "row_blocks", t.row_blocks());
  const SpectralOptions& s = t.spectral();
  put(a, "spectral.tol", s.tol());
  put(a, "spectral.iterations", s.iterations());
  put(a, "spectral.newton_lower", s.newton_lower());
  put(a, "spectral.ns_steps", s.ns_steps());
  put(a, "spectral.ns_coefficients", ns_coefficients_name(s.ns_coefficients()));
  put(a, "spectral.compute_dtype",
      static_cast<int64_t>(s.compute_dtype() ? static_cast<int>(*s.compute_dtype()) : -1));
  put(a, "spectral.neg_eps", s.neg_eps());
  put(a, "spectral.rank_tol", s.rank_tol());
  put(a, "spectral.check_finite", s.check_finite());
}

MatrixTransformOptions read_transform(InputArchive& a) {
  SpectralOptions s;
  s.tol(get(a, "spectral.tol").toDouble())
      .iterations(get(a, "spectral.iterations").toInt())
      .newton_lower(get(a, "spectral.newton_lower").toDouble())
      .ns_steps(get(a, "spectral.ns_steps").toInt())
      .ns_coefficients(parse_ns_coefficients(get(a, "spectral.ns_coefficients").toStringRef()))
      .neg_eps(get(a, "spectral.neg_eps").toDouble())
      .rank_tol(get(a, "spectral.rank_tol").toDouble())
      .check_finite(get(a, "spectral.check_finite").toBool());
  const int64_t dtype = get(a, "spectral.compute_dtype").toInt();
  if (dtype >= 0) s.compute_dtype(static_cast<c10::ScalarType>(dtype));
  return MatrixTransformOptions()
      .p(get(a, "p").toDouble())
      .method(parse_method(get(a, "method").toStringRef()))
      .scale(parse_scale_mode(get(a, "scale").toStringRef()))
      .row_blocks(get(a, "row_blocks").toInt())
      .spectral(s);
}

void write_shape(OutputArchive& a, const std::string& key, at::IntArrayRef sizes) {
  a.write(key, torch::tensor(sizes.vec(), torch::kInt64));
}

std::vector<int64_t> read_shape(InputArchive& a, const std::string& key) {
  at::Tensor t;
  TORCH_CHECK(a.try_read(key, t), "optimizer archive: missing entry '", key, "'");
  t = t.to(at::kCPU).contiguous();
  return std::vector<int64_t>(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel());
}

std::string shape_string(at::IntArrayRef sizes) {
  std::ostringstream os;
  os << sizes;
  return os.str();
}

void check_state_tensor(const at::Tensor& t, const at::Tensor& param, const std::string& what,
                        const std::string& name) {
  TORCH_CHECK(t.defined() && t.sizes() == param.sizes(), "optimizer load: state '", what, "' of ", name,
              " has shape ", t.defined() ? shape_string(t.sizes()) : "undefined", ", parameter has ",
              shape_string(param.sizes()));
}

}  // namespace detail
}  // namespace specopt
