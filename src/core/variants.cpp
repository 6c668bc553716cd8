#include "specopt/core/variants.h"

#include "specopt/core/spectral.h"  // ascii_lower, p_in_range

#include <c10/util/Exception.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <sstream>

namespace specopt {

const std::vector<Variant>& named_variants() {
  static const std::vector<Variant> table = {
      {"Adam", Family::kAdam, 1.0},  {"AdamS", Family::kAdam, 0.5},
      {"AdamQ", Family::kAdam, 0.25}, {"AdamZ", Family::kAdam, 0.0},
      {"mSGD", Family::kSGD, 1.0},   {"mSGDS", Family::kSGD, 0.5},
      {"mSGDQ", Family::kSGD, 0.25}, {"mSGDZ", Family::kSGD, 0.0},
  };
  return table;
}

const std::vector<std::pair<std::string, std::string>>& variant_aliases() {
  static const std::vector<std::pair<std::string, std::string>> table = {
      {"AdamW", "Adam"},  // torch's name of Adam with decoupled weight decay
  };
  return table;
}

std::string family_name(Family family) { return family == Family::kAdam ? "Adam" : "mSGD"; }

std::string variant_name(Family family, double p) {
  for (const auto& v : named_variants())
    if (v.family == family && v.p == p) return v.name;
  std::ostringstream os;
  os << ascii_lower(family_name(family)) << ":p=" << p;
  return os.str();
}

Variant parse_variant(const std::string& text) {
  const std::string key = ascii_lower(text);
  for (const auto& v : named_variants())
    if (ascii_lower(v.name) == key) return v;
  for (const auto& [alias, name] : variant_aliases())
    if (ascii_lower(alias) == key) return parse_variant(name);
  const auto colon = key.find(':');
  if (colon != std::string::npos) {
    const std::string fam = key.substr(0, colon);
    std::string rest = key.substr(colon + 1);
    if (rest.rfind("p=", 0) == 0) rest = rest.substr(2);
    Family family;
    bool fam_ok = true;
    if (fam == "adam") family = Family::kAdam;
    else if (fam == "msgd") family = Family::kSGD;
    else fam_ok = false;
    if (fam_ok && !rest.empty()) {
      char* end = nullptr;
      const double p = std::strtod(rest.c_str(), &end);
      TORCH_CHECK(end && *end == '\0' && std::isfinite(p),
                  "variant '", text, "': p must be a number, got '", rest, "'");
      TORCH_CHECK(p_in_range(p), "variant '", text, "': p must lie in [-0.5, 1], got ", p);
      return Variant{variant_name(family, p), family, p};
    }
  }
  TORCH_CHECK(false, "unknown optimizer variant '", text,
              "' (valid: Adam, AdamS, AdamQ, AdamZ, mSGD, mSGDS, mSGDQ, mSGDZ, "
              "or adam:p=<p> / msgd:p=<p> with p in [-0.5, 1])");
}

}  // namespace specopt
