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
  visit_transform_fields(t, ArchiveWriter{a, ""});
}

MatrixTransformOptions read_transform(InputArchive& a) {
  MatrixTransformOptions t;
  visit_transform_fields(t, ArchiveReader{a, ""});
  return t;
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
