// Small helpers shared by the GoogleTest suites.
#pragma once

#include <c10/util/Exception.h>
#include <gtest/gtest.h>

#include <string>

namespace specopt {
namespace testing {

// The message (without backtrace) of the c10::Error thrown by f; fails the
// test when f throws none.
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  }
  ADD_FAILURE() << "expected a c10::Error";
  return "";
}

}  // namespace testing
}  // namespace specopt
