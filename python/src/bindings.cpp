// specopt._C: the C++ core exposed to Python.
#include <torch/extension.h>

#include "specopt/spectral.h"
#include "specopt/variants.h"

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "specopt C++ core";
  m.def(
      "spectral_power",
      [](const at::Tensor& O, double p, const std::string& method) {
        return specopt::spectral_power(
            O, p, specopt::SpectralOptions().method(specopt::parse_method(method)));
      },
      py::arg("tensor"), py::arg("p"), py::arg("method") = "auto");
}
