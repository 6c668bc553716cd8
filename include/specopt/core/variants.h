// The table of optimizer variants: one source of truth for code, configs,
// logs and bindings.
//
//   family  | p = 1 | p = 1/2 | p = 1/4 | p = 0
//   --------+-------+---------+---------+------
//   Adam    | Adam  | AdamS   | AdamQ   | AdamZ     u = m̂/(√v̂+ε), matrices get Ψ_p(u)
//   mSGD    | mSGD  | mSGDS   | mSGDQ   | mSGDZ     b ← μb + g,   matrices get Ψ_p(b)
//
// Besides the eight names, a family with any p is written "adam:p=0.3" or
// "msgd:p=0.3" (p in [-0.5, 1]). Parsing is case-insensitive.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace specopt {

enum class Family {
  kAdam,  // RMS-normalised update (SpectralAdamW)
  kSGD,   // first-moment update, momentum SGD (SpectralSGD)
};

struct Variant {
  std::string name;  // canonical spelling: "AdamS", "mSGDZ", or "adam:p=0.3"
  Family family;
  double p;
};

// The eight named variants in table order: Adam, AdamS, AdamQ, AdamZ, mSGD, mSGDS, mSGDQ, mSGDZ.
const std::vector<Variant>& named_variants();
// Throws c10::Error naming the bad string and listing the valid forms.
Variant parse_variant(const std::string& text);
// Other names parse_variant accepts, with the variant each stands for
// ("AdamW" → "Adam").
const std::vector<std::pair<std::string, std::string>>& variant_aliases();
// Canonical name for (family, p): a table name when p is 1, ½, ¼ or 0, else "adam:p=<p>".
std::string variant_name(Family family, double p);
std::string family_name(Family family);  // "Adam" / "mSGD"

}  // namespace specopt
