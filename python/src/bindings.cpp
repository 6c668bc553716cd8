// specopt._C: the C++ core exposed to Python. This file: the module, error
// translation, the transform Ψ_p and the variant/method tables. The
// optimizer steps are bound in optim.cpp.
//
// Errors: the core raises c10::Error subclasses; option validators called
// through as_value_error (bindings.h) raise ValueError, and the translator
// below maps what escapes from the computations:
//   c10::ValueError (TORCH_CHECK_VALUE: a bad option, e.g. p's range) -> ValueError
//   c10::TypeError / IndexError / NotImplementedError                 -> the Python namesakes
//   any other c10::Error (non-finite input, shapes, numerics)         -> RuntimeError
// always with the C++ message (without the C++ backtrace).
#include "bindings.h"

#include <torch/csrc/Dtype.h>
#include <torch/csrc/DynamicTypes.h>

#include <c10/util/Exception.h>
#include <torch/version.h>

#include <sstream>
#include <string>
#include <vector>

#include "specopt/core/threads.h"
#include "specopt/core/variants.h"

namespace specopt {
namespace python {

namespace {

void translate_c10_errors(std::exception_ptr ptr) {
  try {
    if (ptr) std::rethrow_exception(ptr);
  } catch (const c10::ValueError& e) {
    PyErr_SetString(PyExc_ValueError, e.what_without_backtrace());
  } catch (const c10::TypeError& e) {
    PyErr_SetString(PyExc_TypeError, e.what_without_backtrace());
  } catch (const c10::IndexError& e) {
    PyErr_SetString(PyExc_IndexError, e.what_without_backtrace());
  } catch (const c10::NotImplementedError& e) {
    PyErr_SetString(PyExc_NotImplementedError, e.what_without_backtrace());
  } catch (const c10::Error& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what_without_backtrace());
  }
}

// value (of spectral option `name`) as T; TypeError naming the option.
template <typename T>
T cast_option(const std::string& name, const char* type, py::handle value) {
  // bool is an int in Python; refuse it where a number is meant (and vice versa).
  const bool is_bool = PyBool_Check(value.ptr());
  const auto wrong = [&] {
    return py::type_error("spectral option '" + name + "' must be " + type + ", got " +
                          std::string(py::str(py::type::of(value).attr("__name__"))));
  };
  if (std::is_same<T, bool>::value != is_bool) throw wrong();
  try {
    return value.cast<T>();
  } catch (const py::cast_error&) {
    throw wrong();
  }
}

// The Python codec of the spectral option types: enums by name (a bad name is
// a ValueError), compute_dtype as a torch.dtype or None, numbers as themselves.
template <typename T>
py::object spectral_value(const T& value) {
  if constexpr (is_named_enum<T>::value) {
    return py::cast(EnumNames<T>::name(value));
  } else if constexpr (std::is_same<T, c10::optional<c10::ScalarType>>::value) {
    if (!value) return py::none();
    return py::reinterpret_borrow<py::object>(reinterpret_cast<PyObject*>(torch::getTHPDtype(*value)));
  } else {
    return py::cast(value);
  }
}

template <typename T>
void set_spectral_value(const std::string& name, py::handle v, T& out) {
  const char* type = python_type_name<T>();
  if constexpr (is_named_enum<T>::value) {
    const auto text = cast_option<std::string>(name, type, v);
    out = as_value_error([&] { return EnumNames<T>::parse(text); });
  } else if constexpr (std::is_same<T, c10::optional<c10::ScalarType>>::value) {
    if (v.is_none()) {
      out = c10::nullopt;
    } else if (THPDtype_Check(v.ptr())) {
      out = reinterpret_cast<THPDtype*>(v.ptr())->scalar_type;
    } else {
      throw py::type_error("spectral option '" + name + "' must be " + type + ", got " +
                           std::string(py::str(py::type::of(v).attr("__name__"))));
    }
  } else {
    out = cast_option<T>(name, type, v);
  }
}

std::string spectral_field_names() {
  std::string names;
  const SpectralOptions defaults;
  visit_spectral_fields(defaults, [&](const std::string& name, const auto&) {
    names += (names.empty() ? "" : ", ") + name;
  });
  return names;
}

// {name: value} of the settings (method left out) of `options`.
py::dict spectral_settings_dict(const SpectralOptions& options) {
  py::dict d;
  visit_spectral_settings(options, [&](const std::string& name, const auto& value) {
    d[py::str(name)] = spectral_value(value);
  });
  return d;
}

py::dict info_dict(const SpectralInfo& info) {
  py::dict d;
  d["method"] = method_name(info.method);
  d["iterations"] = info.iterations;
  d["residual"] = info.residual;
  d["p_effective"] = info.p_effective;
  d["matmul_flops"] = info.matmul_flops;
  return d;
}

}  // namespace

SpectralOptions spectral_options_from(const py::dict& options, SpectralOptions base) {
  read_fields(
      base, options, [](auto& o, auto&& v) { visit_spectral_fields(o, v); },
      [](const std::string& key, py::handle value, auto& field) { set_spectral_value(key, value, field); },
      [](const std::string& key) {
        return py::value_error("unknown spectral option '" + key + "' (valid: " + spectral_field_names() + ")");
      });
  return base;
}

py::dict spectral_options_dict(const SpectralOptions& options) {
  const py::dict defaults = spectral_settings_dict({});
  py::dict d;
  for (const auto& item : spectral_settings_dict(options))
    if (!item.second.equal(defaults[item.first])) d[item.first] = item.second;
  return d;
}

py::dict spectral_option_defaults() {
  py::dict d;
  const SpectralOptions defaults;
  visit_spectral_fields(defaults, [&](const std::string& name, const auto& value) {
    d[py::str(name)] = spectral_value(value);
  });
  return d;
}

}  // namespace python
}  // namespace specopt

PYBIND11_MODULE(_C, m) {
  using namespace specopt;
  using namespace specopt::python;
  m.doc() = "specopt C++ core (use the `specopt` package, not this module directly)";
  // The LibTorch headers this module was compiled with (specopt.build_info records the same).
  m.attr("libtorch_version") = TORCH_VERSION;
  py::register_local_exception_translator(&translate_c10_errors);

  // ---- transform --------------------------------------------------------------
  std::ostringstream doc;
  doc << "spectral_power(tensor, p, method='auto', *, return_info=False, **options)\n\n"
         "Psi_p(O) = U diag(sigma^p) V^T for each matrix in the last two dims of `tensor`.\n"
         "Returns a tensor of the same shape and dtype (p = 1 returns `tensor` itself), or\n"
         "(tensor, info) with return_info=True; info = {method, iterations, residual,\n"
         "p_effective, matmul_flops}.\n\nOptions (defaults from the C++ SpectralOptions):\n";
  for (const auto& item : spectral_option_defaults())
    if (item.first.cast<std::string>() != "method")
      doc << "  " << std::string(py::str(item.first)) << " = " << std::string(py::repr(item.second))
          << "\n";
  doc << "\nRaises ValueError for a bad p/method/option, TypeError for an option of the wrong\n"
         "type and RuntimeError for non-finite input.";
  py::options signature_options;
  signature_options.disable_function_signatures();  // the docstring carries the Python-style signature
  m.def(
      "spectral_power",
      [](const at::Tensor& tensor, double p, const std::string& method, bool return_info,
         const py::kwargs& kwargs) -> py::object {
        SpectralOptions options = spectral_options_from(kwargs);
        options.method(as_value_error([&] { return parse_method(method); }));
        SpectralInfo info;
        at::Tensor result;
        {
          py::gil_scoped_release no_gil;
          result = spectral_power(tensor, p, options, &info);
        }
        if (!return_info) return py::cast(result);
        return py::make_tuple(result, info_dict(info));
      },
      doc.str().c_str(), py::arg("tensor"), py::arg("p"), py::arg("method") = "auto", py::kw_only(),
      py::arg("return_info") = false);
  signature_options.enable_function_signatures();
  m.def(
      "methods",
      [] {
        std::vector<std::string> names;
        for (auto method : all_methods()) names.push_back(method_name(method));
        return names;
      },
      "Names of the spectral methods, in the C++ table's order.");
  m.def("spectral_option_defaults", &spectral_option_defaults,
        "{name: default} of every spectral option accepted by spectral_power(**options) and by\n"
        "an optimizer group's 'spectral' dict.");

  // ---- variant table -----------------------------------------------------------
  py::class_<Variant>(m, "Variant", "An optimizer variant: name, family ('Adam' or 'mSGD') and p.")
      .def_readonly("name", &Variant::name)
      .def_property_readonly("family", [](const Variant& v) { return family_name(v.family); })
      .def_readonly("p", &Variant::p)
      .def("__eq__", [](const Variant& a, const Variant& b) {
        return a.name == b.name && a.family == b.family && a.p == b.p;
      })
      // Pickled by its canonical name (copy.deepcopy / pickle of an optimizer holding one).
      .def(py::pickle([](const Variant& v) { return py::make_tuple(v.name); },
                      [](const py::tuple& t) { return parse_variant(t[0].cast<std::string>()); }))
      .def("__repr__", [](const Variant& v) {
        std::ostringstream os;
        os << "Variant(name='" << v.name << "', family='" << family_name(v.family) << "', p=" << v.p
           << ")";
        return os.str();
      });
  m.def(
      "parse_variant",
      [](const std::string& name) { return as_value_error([&] { return parse_variant(name); }); },
      py::arg("name"),
        "Parse a variant name ('AdamS', 'mSGDZ', 'adam:p=0.3', case-insensitive).");
  m.def("named_variants", &named_variants,
        "The eight named variants in table order (Adam, AdamS, AdamQ, AdamZ, mSGD, ...).");

  m.def(
      "set_cpu_threads",
      [](int n) {
        const CpuThreads t = set_cpu_threads(n);
        py::dict d;
        d["intra_op"] = t.intra_op;
        d["blas"] = t.blas;
        d["blas_kind"] = t.blas_kind;
        d["gomp_wait_set"] = t.gomp_wait_set;
        return d;
      },
      py::arg("n") = 0,
      "Give LibTorch's intra-op pool and OpenBLAS's pool a consistent thread count (n <= 0:\n"
      "OMP_NUM_THREADS or all cores) and return {intra_op, blas, blas_kind, gomp_wait_set}.\n"
      "With Debian's pthreads OpenBLAS and no OMP_WAIT_POLICY/GOMP_SPINCOUNT in the environment\n"
      "the intra-op pool gets 1 thread: libgomp's spinning workers would otherwise halve the\n"
      "speed of a multi-threaded training step (docs/training.md, Threads).");

  bind_optim(m);
  bind_muon(m);
}
