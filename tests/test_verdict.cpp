// The claim verdicts (specopt/study/verdict.h) on constructed studies whose right answer is known:
// clearly supported, clearly contradicted, noise only, a grid edge, one seed.
#include "specopt/study/verdict.h"

#include <c10/util/Exception.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

namespace {

using specopt::ClaimEvidence;
using specopt::Family;
using specopt::SeedTable;
using specopt::Verdict;
using specopt::VariantGrid;

constexpr double kInf = std::numeric_limits<double>::infinity();

// Seven lrs half a decade apart: 1e-3 … 1.
const std::vector<double> kGrid = {1e-3, 3.16227766e-3, 1e-2, 3.16227766e-2, 0.1, 0.316227766, 1.0};

// A basin: flat (+ a 0.001 slope towards the centre, so the centre is best) within `half` grid
// points of `centre`, a 25 % rise per point outside it, divergence from 3 points past it on the
// high side. `noise[s]` is added to every finite loss of seed s.
VariantGrid basin(const std::string& name, Family family, double p, int centre, int half,
                  double level, const std::vector<double>& noise) {
  VariantGrid g;
  g.variant = name;
  g.family = family;
  g.p = p;
  g.lrs = kGrid;
  for (int k = 0; k < static_cast<int>(kGrid.size()); ++k) {
    const int d = std::abs(k - centre);
    std::vector<double> row;
    for (double n : noise) {
      if (k - centre > half + 2) {
        row.push_back(kInf);
      } else {
        const double loss = level + 0.001 * d + (d > half ? 0.25 * level * (d - half) : 0.0);
        row.push_back(loss + n);
      }
    }
    g.loss.push_back(row);
  }
  return g;
}

const std::vector<double> kNoiseA = {0.004, -0.003, 0.001};
const std::vector<double> kNoiseB = {-0.002, 0.003, 0.000};
const std::vector<double> kNoiseC = {0.001, 0.002, -0.003};

// Adam family wide (5 stable points), mSGD narrow (1 point; p < 1: 3 points), AdamZ / mSGDZ a
// little worse than Adam in every seed: all three claims hold.
SeedTable supported_table() {
  SeedTable t;
  t.seeds = {0, 1, 2};
  t.variants = {basin("Adam", Family::kAdam, 1.0, 3, 2, 2.0, kNoiseA),
                basin("AdamZ", Family::kAdam, 0.0, 3, 2, 2.02, kNoiseB),
                basin("mSGD", Family::kSGD, 1.0, 3, 0, 2.0, kNoiseC),
                basin("mSGDZ", Family::kSGD, 0.0, 3, 1, 2.03, kNoiseA)};
  return t;
}

const ClaimEvidence& claim(const specopt::ToleranceVerdicts& v, int n) { return v.claims.at(n - 1); }

TEST(VerdictBootstrap, PercentileIntervalOfAMean) {
  // Constant data: a point interval.
  auto c = specopt::bootstrap_mean({2.5, 2.5, 2.5});
  EXPECT_DOUBLE_EQ(c.estimate, 2.5);
  EXPECT_DOUBLE_EQ(c.lo, 2.5);
  EXPECT_DOUBLE_EQ(c.hi, 2.5);
  // Three values: a resample of one value thrice has probability 1/27 > 2.5 %, so the 95 %
  // percentile interval of the mean runs from the smallest to the largest value exactly.
  auto i = specopt::bootstrap_mean({1.0, 2.0, 4.0});
  EXPECT_DOUBLE_EQ(i.estimate, 7.0 / 3.0);
  EXPECT_DOUBLE_EQ(i.lo, 1.0);
  EXPECT_DOUBLE_EQ(i.hi, 4.0);
  // Fixed RNG seed: the same interval every time; NaN entries are dropped.
  const std::vector<double> x = {0.1, 0.5, 0.2, 0.9, 0.4, 0.3, 0.8, 0.6};
  auto a = specopt::bootstrap_mean(x), b = specopt::bootstrap_mean(x);
  EXPECT_EQ(a.lo, b.lo);
  EXPECT_EQ(a.hi, b.hi);
  EXPECT_LT(a.lo, a.estimate);
  EXPECT_GT(a.hi, a.estimate);
  auto n = specopt::bootstrap_mean({1.0, std::nan(""), 4.0});
  EXPECT_DOUBLE_EQ(n.estimate, 2.5);
  EXPECT_THROW(specopt::bootstrap_mean(x, {0, 1, 0.95}), c10::Error);
}

TEST(VerdictWidth, GridPointsCountForTheirHalfGaps) {
  const std::vector<double> lrs = {1e-3, 1e-2, 1e-1, 1.0, 10.0};  // one decade apart
  bool edge = true;
  // Three stable points in the middle: 3 decades, not at an end.
  EXPECT_NEAR(specopt::stable_width(lrs, {3.0, 2.0, 1.9, 2.0, 3.0}, 2.05, &edge), 3.0, 1e-12);
  EXPECT_FALSE(edge);
  // One stable point: one decade; none (the best is above the threshold): 0.
  EXPECT_NEAR(specopt::stable_width(lrs, {3.0, 2.5, 1.9, 2.5, 3.0}, 2.05), 1.0, 1e-12);
  EXPECT_EQ(specopt::stable_width(lrs, {3.0, 2.5, 2.1, 2.5, 3.0}, 2.05), 0.0);
  // A diverged point breaks the run; the run reaching the first point touches the edge.
  EXPECT_NEAR(specopt::stable_width(lrs, {1.95, 1.9, kInf, 2.0, 3.0}, 2.05, &edge), 2.0, 1e-12);
  EXPECT_TRUE(edge);
  // Uneven grid: halfway in log lr.
  EXPECT_NEAR(specopt::stable_width({1e-3, 1e-2, 1e-1}, {3.0, 1.0, 3.0}, 2.0), 1.0, 1e-12);
  EXPECT_NEAR(specopt::stable_width({1e-3, 1e-2, 1e0}, {3.0, 1.0, 3.0}, 2.0), 1.5, 1e-12);
}

TEST(VerdictClaims, ClearlySupported) {
  const auto v = specopt::judge_claims(supported_table(), 0.02);
  ASSERT_EQ(v.claims.size(), 3u);
  // Widths: Adam family 5 points = 2.5 decades each, mSGD 0.5, mSGDZ 1.5 (its level 2.03 is
  // within 2 % of L* ≈ 1.997).
  EXPECT_NEAR(v.widths[0].width.estimate, 2.5, 1e-9);
  EXPECT_NEAR(v.widths[2].width.estimate, 0.5, 1e-9);
  EXPECT_NEAR(v.widths[3].width.estimate, 1.5, 1e-9);
  for (const auto& w : v.widths) EXPECT_TRUE(w.bracketed) << w.variant << ": " << w.bracket_note;
  EXPECT_EQ(claim(v, 1).verdict, Verdict::kSupported) << claim(v, 1).evidence;
  EXPECT_NEAR(claim(v, 1).difference.estimate, 2.5 - 1.0, 1e-9);
  EXPECT_GT(claim(v, 1).difference.lo, 0.0);
  EXPECT_EQ(claim(v, 2).verdict, Verdict::kSupported) << claim(v, 2).evidence;
  EXPECT_NEAR(claim(v, 2).difference.estimate, 1.0, 1e-9);
  // AdamZ is 0.02 worse than Adam in every seed, mSGDZ 0.03: neither outperforms Adam.
  EXPECT_EQ(claim(v, 3).verdict, Verdict::kSupported) << claim(v, 3).evidence;
  EXPECT_LT(claim(v, 3).difference.hi, claim(v, 3).margin);
}

TEST(VerdictClaims, ClearlyContradicted) {
  SeedTable t;
  t.seeds = {0, 1, 2};
  // mSGD family wide, Adam family narrow; compression narrows mSGD; AdamZ beats Adam by 0.2 in
  // every seed (seed noise ~0.004).
  t.variants = {basin("Adam", Family::kAdam, 1.0, 3, 0, 2.2, kNoiseA),
                basin("AdamZ", Family::kAdam, 0.0, 3, 0, 2.0, kNoiseB),
                basin("mSGD", Family::kSGD, 1.0, 3, 2, 2.0, kNoiseC),
                basin("mSGDZ", Family::kSGD, 0.0, 3, 1, 2.0, kNoiseA)};
  const auto v = specopt::judge_claims(t, 0.02);
  EXPECT_EQ(claim(v, 1).verdict, Verdict::kContradicted) << claim(v, 1).evidence;
  EXPECT_LT(claim(v, 1).difference.hi, 0.0);
  EXPECT_EQ(claim(v, 2).verdict, Verdict::kContradicted) << claim(v, 2).evidence;
  EXPECT_NEAR(claim(v, 2).difference.estimate, 1.5 - 2.5, 1e-9);
  EXPECT_EQ(claim(v, 3).verdict, Verdict::kContradicted) << claim(v, 3).evidence;
  EXPECT_GT(claim(v, 3).difference.lo, claim(v, 3).margin);
}

TEST(VerdictClaims, NoiseOnlyIsInconclusive) {
  // Every variant has the same basin; seed noise at the basin's rim decides which points are
  // stable: seed 0 favours the Adam family, seed 1 the mSGD family. AdamZ is Adam plus noise.
  SeedTable t;
  t.seeds = {0, 1, 2};
  auto rim = [](VariantGrid g, const std::vector<double>& extra) {
    for (int k : {1, 5})
      for (size_t s = 0; s < extra.size(); ++s) g.loss[k][s] += extra[s];
    return g;
  };
  t.variants = {rim(basin("Adam", Family::kAdam, 1.0, 3, 2, 2.0, kNoiseA), {0.0, 0.1, 0.0}),
                rim(basin("AdamZ", Family::kAdam, 0.0, 3, 2, 2.0, kNoiseB), {0.0, 0.1, 0.0}),
                rim(basin("mSGD", Family::kSGD, 1.0, 3, 2, 2.0, kNoiseC), {0.1, 0.0, 0.0}),
                rim(basin("mSGDZ", Family::kSGD, 0.0, 3, 2, 2.0, kNoiseA), {0.1, 0.0, 0.05})};
  const auto v = specopt::judge_claims(t, 0.02);
  for (int n : {1, 2, 3}) {
    EXPECT_EQ(claim(v, n).verdict, Verdict::kInconclusive) << n << ": " << claim(v, n).evidence;
    EXPECT_TRUE(claim(v, n).widen.empty()) << n;
  }
  EXPECT_LT(claim(v, 1).difference.lo, 0.0);
  EXPECT_GT(claim(v, 1).difference.hi, 0.0);
}

TEST(VerdictClaims, GridEdgeIsInconclusiveAndSaysWhichGridToWiden) {
  SeedTable t = supported_table();
  // mSGD's optimum at the largest lr: its basin may continue beyond the grid.
  t.variants[2] = basin("mSGD", Family::kSGD, 1.0, 6, 0, 2.0, kNoiseC);
  const auto v = specopt::judge_claims(t, 0.02);
  EXPECT_FALSE(v.widths[2].bracketed);
  EXPECT_NE(v.widths[2].bracket_note.find("grid edge"), std::string::npos);
  for (int n : {1, 2}) {
    EXPECT_EQ(claim(v, n).verdict, Verdict::kInconclusive) << claim(v, n).evidence;
    EXPECT_EQ(claim(v, n).point_verdict, Verdict::kSupported);
    EXPECT_EQ(claim(v, n).widen, std::vector<std::string>{"mSGD"});
    EXPECT_NE(claim(v, n).evidence.find("widen the grid of mSGD"), std::string::npos);
  }
  // Claim 3 does not involve mSGD.
  EXPECT_EQ(claim(v, 3).verdict, Verdict::kSupported);

  // No clear rise at the low end: a basin reaching the smallest lr.
  t = supported_table();
  t.variants[0] = basin("Adam", Family::kAdam, 1.0, 2, 2, 2.0, kNoiseA);
  const auto w = specopt::judge_claims(t, 0.02);
  EXPECT_FALSE(w.widths[0].bracketed);
  EXPECT_EQ(claim(w, 3).verdict, Verdict::kInconclusive);
  EXPECT_EQ(claim(w, 3).widen, std::vector<std::string>{"Adam"});
}

TEST(VerdictClaims, OneSeedGivesAPointEstimateOnly) {
  SeedTable t = supported_table();
  t.seeds = {0};
  for (auto& g : t.variants)
    for (auto& row : g.loss) row.resize(1);
  const auto v = specopt::judge_claims(t, 0.02);
  for (int n : {1, 2, 3}) {
    EXPECT_EQ(claim(v, n).verdict, Verdict::kInconclusive) << n;
    EXPECT_EQ(claim(v, n).point_verdict, Verdict::kSupported) << n << ": " << claim(v, n).evidence;
    EXPECT_NE(claim(v, n).evidence.find("One seed"), std::string::npos);
  }
  EXPECT_EQ(claim(v, 1).difference.lo, claim(v, 1).difference.hi);
}

TEST(VerdictClaims, ToleranceListAndBadInput) {
  EXPECT_EQ(specopt::report_tolerances(0.02), (std::vector<double>{0.02, 0.01, 0.04}));
  EXPECT_EQ(specopt::report_tolerances(0.0), (std::vector<double>{0.0}));
  SeedTable t = supported_table();
  t.variants[0].loss[0].pop_back();
  EXPECT_THROW(specopt::judge_claims(t, 0.02), c10::Error);
  EXPECT_THROW(specopt::judge_claims(supported_table(), -1.0), c10::Error);
}

}  // namespace
