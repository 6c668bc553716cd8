// Shared pieces of the specopt._C extension (one translation unit per area:
// bindings.cpp = module, errors, transform and variant table; optim.cpp =
// the functional optimizer steps and the C++ reference optimizers).
#pragma once

#include <c10/util/Exception.h>
#include <torch/csrc/utils/pybind.h>

#include "specopt/core/spectral.h"

namespace specopt {
namespace python {

namespace py = pybind11;

// Runs an option validator (parse_method, parse_variant, Options::check(), ...):
// such a function judges options only, so its c10::Error is re-raised as
// ValueError with the same message. The calls wrapped in this are the
// binding's explicit table of "option errors".
template <typename F>
auto as_value_error(F&& validate) -> decltype(validate()) {
  try {
    return validate();
  } catch (const c10::Error& e) {
    throw py::value_error(e.what_without_backtrace());
  }
}

// SpectralOptions from Python keyword options ({"tol": 1e-5, "compute_dtype": torch.float64, ...}).
// Option names and their defaults come from one table (spectral_option_defaults), so
// spectral_power(**options) and an optimizer group's "spectral" dict accept the same keys.
// An unknown key or a value of the wrong type raises ValueError naming it.
SpectralOptions spectral_options_from(const py::dict& options, SpectralOptions base = {});
// {name: value} of the options that differ from the defaults ("method" left out: an
// optimizer group has its own).
py::dict spectral_options_dict(const SpectralOptions& options);
// {name: default} for every spectral option (method as its name, compute_dtype None).
py::dict spectral_option_defaults();

void bind_optim(py::module_& m);

}  // namespace python
}  // namespace specopt
