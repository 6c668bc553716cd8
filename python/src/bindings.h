// Shared pieces of the specopt._C extension (one translation unit per area:
// bindings.cpp = module, errors, transform and variant table; optim.cpp =
// the functional optimizer steps and the C++ reference optimizers).
#pragma once

#include <c10/util/Exception.h>
#include <torch/csrc/utils/pybind.h>

#include "specopt/core/option_fields.h"
#include "specopt/core/spectral.h"

#include <string>
#include <tuple>
#include <type_traits>

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

// What a field of an option table (option_fields.h) must be in Python, for the
// TypeError messages ("param group option 'p' must be a float, got str").
template <class T>
const char* python_type_name() {
  if constexpr (std::is_same<T, double>::value) return "a float";
  else if constexpr (std::is_same<T, bool>::value) return "a bool";
  else if constexpr (std::is_same<T, int64_t>::value) return "an int";
  else if constexpr (std::is_same<T, std::tuple<double, double>>::value) return "a pair of floats";
  else if constexpr (std::is_same<T, Method>::value) return "a method name";
  else if constexpr (std::is_same<T, ScaleMode>::value) return "a scale mode name";
  else if constexpr (std::is_same<T, NsCoefficients>::value) return "a coefficient set name";
  else if constexpr (std::is_same<T, c10::optional<c10::ScalarType>>::value) return "a torch.dtype or None";
  else return "a string";
}

// Sets, for each entry of `dict`, the field of that name of `o`: `visit` is a
// field table (a callable visit(o, visitor), option_fields.h) and
// read(key, value, field) converts one value. A key that names no field
// throws unknown(key).
template <class O, class Visit, class Read, class Unknown>
void read_fields(O& o, const py::dict& dict, Visit&& visit, Read&& read, Unknown&& unknown) {
  for (const auto& item : dict) {
    const auto key = item.first.cast<std::string>();
    bool found = false;
    visit(o, [&](const std::string& name, auto& field) {
      if (name != key) return;
      read(key, item.second, field);
      found = true;
    });
    if (!found) throw unknown(key);
  }
}

// SpectralOptions from Python keyword options ({"tol": 1e-5, "compute_dtype": torch.float64, ...}).
// Option names come from the field table visit_spectral_fields (option_fields.h), so
// spectral_power(**options) and an optimizer group's "spectral" dict accept the same keys.
// An unknown key or a value of the wrong type raises ValueError naming it.
SpectralOptions spectral_options_from(const py::dict& options, SpectralOptions base = {});
// {name: value} of the options that differ from the defaults ("method" left out: an
// optimizer group has its own).
py::dict spectral_options_dict(const SpectralOptions& options);
// {name: default} for every spectral option (method as its name, compute_dtype None).
py::dict spectral_option_defaults();

void bind_optim(py::module_& m);
void bind_muon(py::module_& m);  // muon.cpp: Muon and on_nonfinite

}  // namespace python
}  // namespace specopt
