"""Verdicts on the paper's claims: each outcome of the stated rule, the seeds-to-resolve count, the precision of
printed numbers. Everything is fed synthetic per-seed values; nothing reads a result file."""

import math
import re

import numpy as np
import pandas as pd
import pytest

from scipy import stats

from par.analysis.verdicts import (ARPG_CLAIM, CLAIMS, SAMPLE_QUALITY, SEEDS_CAP, VIDEO_CLAIMS, VIDEO_RULE, Comparison,
                                   Floor, Stat, at_floor, format_p, format_pm, holm, judge, judge_claims, mean_se,
                                   metric_floors, rule_text, seeds_needed, t_quantile, to_markdown, welch)


def _seeds(mean: float, sd: float, n: int) -> list[float]:
    """n values with exactly this mean and sample standard deviation (ddof=1)."""
    z = np.linspace(-1, 1, n)
    z = (z - z.mean()) / z.std(ddof=1)
    return list(mean + sd * z)


# ------------------------------------------------------------------------------------------ numbers


def test_mean_and_standard_error_across_seeds_and_for_one_seed():
    s = mean_se([1.0, 1.2, 1.4])
    assert s.n == 3 and s.mean == pytest.approx(1.2) and s.se == pytest.approx(0.2 / math.sqrt(3))
    assert s.source == "seeds"
    one = mean_se([1.0, None, float("nan")], run_se=0.01)  # missing values do not count as seeds
    assert (one.n, one.se, one.source) == (1, 0.01, "run")
    bare = mean_se([1.0])
    assert math.isnan(bare.se) and bare.source is None


@pytest.mark.parametrize("mean,se,text", [
    (0.0043, 0.0021, "0.004 ± 0.002"),  # a small value keeps its digits (never "0")
    (343.81, 23.0, "340 ± 20"),
    (343.81, 12.0, "344 ± 12"),  # an SE starting with 1 keeps two digits
    (1.2441, 0.096, "1.24 ± 0.10"),
    (-0.0004, 0.01, "0.000 ± 0.010"),  # no "-0.000"
    (77.77, None, "77.77"),
    (140480.0, 0.0, "140,480"),
    (None, 0.1, "–"),
])
def test_numbers_carry_the_precision_of_their_error_bar(mean, se, text):
    assert format_pm(mean, se) == text


@pytest.mark.parametrize("p,text", [(0.399, "0.40"), (0.0015, "0.0015"), (0.05, "0.050"), (0.00099, "< 0.001"),
                                    (1.0, "1.0"), (float("nan"), "–")])
def test_p_values_print_two_significant_digits(p, text):
    assert format_p(p) == text


# ------------------------------------------------------------------------------------------ the test itself


@pytest.mark.parametrize("df", [1, 1.7, 2, 4, 30, math.inf])
def test_t_quantiles_are_scipys(df):
    assert t_quantile(0.975, df) == pytest.approx(stats.t.ppf(0.975, df), rel=1e-12)
    assert t_quantile(0.95, df) == pytest.approx(stats.t.ppf(0.95, df), rel=1e-12)
    assert t_quantile(0.975, 2) == pytest.approx(4.303, abs=1e-3) and t_quantile(0.975, 4) == pytest.approx(2.776,
                                                                                                             abs=1e-3)


def test_welch_matches_scipys_unequal_variance_t_test():
    a, b = [1.0, 1.3, 1.1], [1.5, 1.45, 1.9, 1.6]
    w = welch(mean_se(a), mean_se(b))
    va, vb = np.var(a, ddof=1) / 3, np.var(b, ddof=1) / 4
    assert w.se == pytest.approx(math.sqrt(va + vb))
    assert w.df == pytest.approx((va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 3))  # Welch–Satterthwaite by hand
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert judge(a, b)["p"] == pytest.approx(ref.pvalue, rel=1e-9) and w.d / w.se == pytest.approx(ref.statistic)


# ------------------------------------------------------------------------------------------ "A better than B"


def test_a_clear_difference_in_the_claimed_direction_is_reproduced_and_in_the_other_contradicted():
    a, b = [1.0, 1.1, 1.2], [1.4, 1.5, 1.6]
    v = judge(a, b, lower_is_better=True)
    assert v["verdict"] == "reproduced" and v["difference"] == pytest.approx(-0.4)
    assert v["se"] == pytest.approx(math.sqrt(2 * 0.01 / 3)) and v["error_bar"] == "across seeds"
    assert v["df"] == pytest.approx(4) and v["seeds_to_resolve"] is None
    assert judge(a, b, lower_is_better=False)["verdict"] == "contradicted (A worse)"  # e.g. class accuracy
    assert judge(b, a, lower_is_better=True)["verdict"] == "contradicted (A worse)"


def test_two_seeds_each_need_the_t_quantile_not_two_standard_errors():
    # issue 24, (e) L vs M on classifier FID with 2 vs 2 seeds: |d| = 3·SE(d) passed "|d| > 2·SE", but at Welch's
    # df = 2 (equal spreads) the 95 % quantile is 4.30
    a, b = _seeds(10.0, 1.0, 2), _seeds(13.0, 1.0, 2)  # SE(d) = √(1/2 + 1/2) = 1, d = −3
    v = judge(a, b)
    assert v["difference"] / v["se"] == pytest.approx(-3.0, abs=1e-3) and v["df"] == pytest.approx(2)
    assert v["verdict"] == "not resolved" and v["p"] > 0.05
    far = judge(_seeds(10.0, 1.0, 2), _seeds(14.5, 1.0, 2))  # 4.5 > 4.30·1
    assert far["verdict"] == "reproduced" and far["p"] < 0.05


def test_seeds_to_resolve_is_the_count_at_which_the_same_test_decides():
    # A: mean 1.20, sd 0.2; B: mean 1.35, sd 0.2; 3 seeds each cannot tell
    a, b = _seeds(1.20, 0.2, 3), _seeds(1.35, 0.2, 3)
    v = judge(a, b)
    n = v["seeds_to_resolve"]
    assert v["verdict"] == "not resolved" and 3 < n <= SEEDS_CAP
    # and the count is right: the same means and spreads over n seeds resolve it, over n − 1 they do not
    assert judge(_seeds(1.20, 0.2, n), _seeds(1.35, 0.2, n))["verdict"] == "reproduced"
    assert judge(_seeds(1.20, 0.2, n - 1), _seeds(1.35, 0.2, n - 1))["verdict"] == "not resolved"


def test_out_of_reach_differences_are_capped_not_printed_as_millions():
    # the tiny report printed "≈ 8387326": a difference of 2e-5 against an SE of 0.03
    v = judge([1.30002], [1.3], se_a=0.02, se_b=0.02)
    assert v["verdict"] == "not resolved" and math.isinf(v["seeds_to_resolve"])
    assert seeds_needed(0.0, 0.1, 0.1) == math.inf and seeds_needed(1.0, 0.1, 0.1) == 2
    md = to_markdown(judge_claims({"t": {"x": _frame(nll=[1.30002], nll_se=[0.02], n=1),
                                         "y": _frame(nll=[1.3], nll_se=[0.02], n=1)}},
                                  (Comparison("(z) mine", "t", "x", "y"),)))
    assert f"> {SEEDS_CAP}" in md and "8387326" not in md


def test_one_seed_uses_the_runs_own_standard_error_or_says_there_is_none():
    v = judge([1.20], [1.30], se_a=0.01, se_b=0.02)
    assert v["verdict"] == "reproduced" and v["error_bar"] == "per-run SE (one seed)"
    assert v["se"] == pytest.approx(math.hypot(0.01, 0.02)) and math.isinf(v["df"])  # over thousands of images
    v = judge([1.20], [1.24], se_a=0.01, se_b=0.02)  # 1.96·0.0224 = 0.044 > 0.04
    # N seeds with that spread: t(0.975, (N−1)·…)·√(0.0005/N) < 0.04 first at N = 4
    assert v["verdict"] == "not resolved" and v["seeds_to_resolve"] == 4
    v = judge([10.0], [12.0])  # FID: no per-run standard error
    assert v["verdict"] == "not resolved (one seed, no error bar)" and v["seeds_to_resolve"] is None
    assert math.isnan(v["p"])  # no test made: outside the Holm family


# ------------------------------------------------------------------------------------------ "A ≈ B"


def test_about_equal_claims_are_non_inferiority_with_a_margin():
    b = _seeds(1.00, 0.01, 3)  # margin: 5 % of 1.00 = 0.05 (lower is better)
    close = judge(_seeds(1.01, 0.01, 3), b, similar=True)
    assert close["verdict"] == "reproduced (A not worse)" and close["margin"] == pytest.approx(0.05)
    better = judge(_seeds(0.80, 0.01, 3), b, similar=True)
    assert better["verdict"] == "reproduced (A better)"  # 0.2 better: never "contradicted" for being better
    far = judge(_seeds(1.20, 0.01, 3), b, similar=True)
    assert far["verdict"] == "contradicted (A worse)"  # 0.20 worse, its lower bound above the margin
    wide = judge(_seeds(1.03, 0.05, 3), b, similar=True)
    assert wide["verdict"] == "not resolved" and 3 < wide["seeds_to_resolve"] <= SEEDS_CAP
    n = wide["seeds_to_resolve"]
    assert judge(_seeds(1.03, 0.05, n), _seeds(1.0, 0.01, n), similar=True)["verdict"] == "reproduced (A not worse)"
    assert judge(_seeds(1.03, 0.05, n - 1), _seeds(1.0, 0.01, n - 1), similar=True)["verdict"] == "not resolved"
    assert judge(_seeds(1.03, 0.05, 3), b, similar=True, tolerance=0.2)["verdict"] == "reproduced (A not worse)"


def test_non_inferiority_bounds_are_one_sided_and_follow_the_metrics_direction():
    b = _seeds(0.50, 0.0075, 3)  # class accuracy: higher is better, margin 0.025
    w = welch(mean_se(_seeds(0.49, 0.0075, 3)), mean_se(b))
    # the one-sided 95 % bound of "A worse" (0.01) lies below the margin, a two-sided one would not
    assert -w.d + stats.t.ppf(0.95, w.df) * w.se < 0.025 < -w.d + stats.t.ppf(0.975, w.df) * w.se
    assert judge(_seeds(0.49, 0.0075, 3), b, lower_is_better=False, similar=True)["verdict"] == \
        "reproduced (A not worse)"
    assert judge(_seeds(0.40, 0.01, 3), b, lower_is_better=False, similar=True)["verdict"] == \
        "contradicted (A worse)"
    assert judge(_seeds(0.60, 0.01, 3), b, lower_is_better=False, similar=True)["verdict"] == \
        "reproduced (A better)"
    # its p: the one-sided t test against the margin, as scipy computes it
    v = judge(_seeds(0.49, 0.0075, 3), b, lower_is_better=False, similar=True)
    assert v["p"] == pytest.approx(stats.t.cdf((-w.d - 0.025) / w.se, w.df))


# ------------------------------------------------------------------------------------------ floors


def test_values_at_the_reconstruction_floor_or_at_chance_are_uninformative():
    floor = Floor("floor", Stat(204.0, 4.0, 1, "run"))  # small-video: rFVD 204 ± 4
    a, b = _seeds(206.0, 3.0, 3), _seeds(211.0, 3.0, 3)
    assert judge(a, b, similar=True, floor=floor)["verdict"] == "uninformative here (at floor)"
    assert judge(a, b, similar=True)["verdict"] != "uninformative here (at floor)"
    above = judge(_seeds(300.0, 3.0, 3), b, floor=floor)  # one model clearly above the floor: judged
    assert above["verdict"] == "contradicted (A worse)"
    chance = Floor("chance", Stat(0.1, 0.0, 1, None))
    v = judge(_seeds(0.11, 0.01, 3), _seeds(0.10, 0.01, 3), lower_is_better=False, floor=chance)
    assert v["verdict"] == "uninformative here (at chance)" and math.isnan(v["p"])
    assert judge(_seeds(0.6, 0.01, 3), _seeds(0.5, 0.01, 3), lower_is_better=False, floor=chance)["verdict"] == \
        "reproduced"
    assert not at_floor(mean_se([0.1]), chance)  # no error bar, nothing measures its noise


def test_claims_use_the_floor_of_their_metric():
    floors = metric_floors({"recon": {"cls_fid": Stat(40.0, math.nan, 1, None)}}, classes=10)
    assert set(floors) == {"cls_fid", "class_accuracy"} and floors["class_accuracy"].stat.mean == pytest.approx(0.1)
    runs = {"table3b": {"n=4": _frame(cls_fid=_seeds(41, 1, 3), class_accuracy=_seeds(0.10, 0.01, 3),
                                      nll=_seeds(1.25, 0.004, 3)),
                        "n=16": _frame(cls_fid=_seeds(41.5, 1, 3), class_accuracy=_seeds(0.11, 0.01, 3),
                                       nll=_seeds(1.30, 0.004, 3))}}
    got = judge_claims(runs, floors=floors).set_index("metric")["verdict"]
    assert got["classifier FID"] == "uninformative here (at floor)"
    assert got["class accuracy"] == "uninformative here (at chance)" and got["NLL / token"] == "reproduced"
    assert "at floor / at chance" in rule_text(judge_claims(runs, floors=floors))


# ------------------------------------------------------------------------------------------ many claims


def test_holm_adjusts_by_hand_and_leaves_untested_rows_out():
    # sorted 0.01, 0.03, 0.04 of m = 3: ×3, ×2, ×1, made non-decreasing
    assert holm([0.04, 0.01, float("nan"), 0.03]) == pytest.approx([0.06, 0.03, math.nan, 0.06], nan_ok=True)
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    df = judge_claims({"t": {"x": _frame(nll=_seeds(1.0, 0.01, 3)), "y": _frame(nll=_seeds(1.1, 0.01, 3)),
                             "z": _frame(fid=[3.0], n=1), "w": _frame(fid=[4.0], n=1)}},
                      (Comparison("(z) one", "t", "x", "y"), Comparison("(z) two", "t", "z", "w")))
    assert list(df["family"]) == [1, 1] and df["p_holm"].iloc[0] == pytest.approx(df["p"].iloc[0])
    assert "family holds 1 image claim tests" in rule_text(df)


# ------------------------------------------------------------------------------------------ claims over tables


def _frame(nll=None, nll_se=None, cls_fid=None, fid=None, class_accuracy=None, n=3):
    cols = {"nll": nll, "nll_se": nll_se, "cls_fid": cls_fid, "fid": fid, "class_accuracy": class_accuracy}
    return pd.DataFrame({k: v if isinstance(v, list) else [v] * n for k, v in cols.items() if v is not None})


def test_each_claim_is_judged_per_metric_from_the_numbers():
    runs = {
        "table3b": {"n=1": _frame(nll=_seeds(1.244, 0.004, 3), cls_fid=_seeds(20, 1, 3)),
                    "n=4": _frame(nll=_seeds(1.250, 0.004, 3), cls_fid=_seeds(21, 1, 3)),
                    "n=16": _frame(nll=_seeds(1.20, 0.004, 3), cls_fid=_seeds(21.5, 1, 3))},
        "table3d": {"raster multi": _frame(nll=_seeds(1.40, 0.01, 3), cls_fid=_seeds(40, 2, 3),
                                           class_accuracy=_seeds(0.5, 0.01, 3)),
                    "distant multi": _frame(nll=_seeds(1.25, 0.01, 3), cls_fid=_seeds(21, 2, 3),
                                            class_accuracy=_seeds(0.8, 0.01, 3))},
        "table3a": {"w/ initial sequential": _frame(nll=[1.25], nll_se=[0.002], fid=[300.0], n=1),
                    "w/o initial sequential": _frame(nll=[1.27], nll_se=[0.002], fid=[310.0], n=1)},
        "table3e": {"S / L": _frame(nll=_seeds(1.25, 0.01, 2))},  # the larger models are absent: skipped
    }
    df = judge_claims(runs)
    got = {(r.comparison, r.metric): r.verdict for r in df.itertuples()}
    assert got == {
        ("table3b: n=4 ≈ n=1", "NLL / token"): "reproduced (A not worse)",
        ("table3b: n=4 ≈ n=1", "classifier FID"): "not resolved",  # 1 ± 0.8 worse, bound 2.7 > margin 1.0
        ("table3b: n=4 better than n=16", "NLL / token"): "contradicted (A worse)",
        ("table3b: n=4 better than n=16", "classifier FID"): "not resolved",
        ("table3d: distant multi better than raster multi", "NLL / token"): "reproduced",
        ("table3d: distant multi better than raster multi", "classifier FID"): "reproduced",
        ("table3d: distant multi better than raster multi", "class accuracy"): "reproduced",
        ("table3a: w/ initial sequential better than w/o initial sequential", "NLL / token"): "reproduced",
        # no classifier FID in this preset: Inception FID stands in; one seed and no SE
        ("table3a: w/ initial sequential better than w/o initial sequential", "Inception FID"):
            "not resolved (one seed, no error bar)",
    }
    assert set(df.loc[df.comparison.str.startswith("table3a"), "error_bar"]) == {"per-run SE (one seed)", "none"}


def test_extra_rows_are_appended_and_claims_come_from_data():
    extra = [{"claim": "entropy: lower near the reference", "comparison": "PAR vs raster", "metric": "entropy",
              "difference": -1.2, "se": 0.1, "n_a": 1, "n_b": 1, "verdict": "reproduced"}]
    df = judge_claims({}, extra=extra)
    assert list(df.verdict) == ["reproduced"] and df.loc[0, "seeds_to_resolve"] is None
    # a made-up claim over made-up rows is judged the same way: nothing is keyed to the paper's outcome
    mine = (Comparison("(z) mine", "t", "x", "y"),)
    df = judge_claims({"t": {"x": _frame(nll=_seeds(2.0, 0.01, 3)), "y": _frame(nll=_seeds(1.0, 0.01, 3))}}, mine)
    assert list(df.verdict) == ["contradicted (A worse)"]
    assert {c.table for c in CLAIMS} == {"table2", "table3a", "table3b", "table3c", "table3d", "table3e", "table4"}


def test_arpg_vs_par_is_judged_on_sample_quality_never_on_nll():
    # ARPG's NLL (an upper bound) is far above PAR's: judged on NLL the claim would be contradicted
    runs = {"table2": {"ARPG, PAR n=4's steps": _frame(nll=_seeds(1.50, 0.01, 3), cls_fid=_seeds(20, 1, 3),
                                                       class_accuracy=_seeds(0.80, 0.01, 3)),
                       "PAR n=4": _frame(nll=_seeds(1.25, 0.01, 3), cls_fid=_seeds(30, 1, 3),
                                         class_accuracy=_seeds(0.70, 0.01, 3)),
                       "ARPG, PAR n=16's steps": _frame(nll=[1.5], nll_se=[0.002], fid=[300.0], n=1),
                       "PAR n=16": _frame(nll=[1.3], nll_se=[0.002], fid=[310.0], n=1)}}
    df = judge_claims(runs)
    assert set(df.claim) == {ARPG_CLAIM} and "NLL / token" not in set(df.metric)
    got = {(r.comparison, r.metric): r.verdict for r in df.itertuples()}
    assert got == {
        ("table2: ARPG, PAR n=4's steps better than PAR n=4", "classifier FID"): "reproduced",
        ("table2: ARPG, PAR n=4's steps better than PAR n=4", "class accuracy"): "reproduced",
        # no classifier FID: Inception FID stands in, as for any claim
        ("table2: ARPG, PAR n=16's steps better than PAR n=16", "Inception FID"):
            "not resolved (one seed, no error bar)",
    }
    assert "never on NLL" in rule_text() and "upper bound" in rule_text()
    # the same rows under an unrestricted comparison are judged on NLL too: the restriction is what keeps it out
    free = Comparison("x", "table2", "ARPG, PAR n=4's steps", "PAR n=4")
    assert "NLL / token" in set(judge_claims(runs, (free,)).metric)
    assert Comparison("x", "t", "a", "b", metrics=SAMPLE_QUALITY).metrics == SAMPLE_QUALITY


def test_absent_arpg_rows_give_no_arpg_verdict():
    runs = {"table2": {"PAR n=4": _frame(nll=_seeds(1.25, 0.01, 3), cls_fid=_seeds(30, 1, 3)),
                       "PAR n=16": _frame(nll=_seeds(1.30, 0.01, 3), cls_fid=_seeds(35, 1, 3))},
            "table3b": {"n=4": _frame(nll=_seeds(1.25, 0.01, 3)), "n=16": _frame(nll=_seeds(1.30, 0.01, 3))}}
    df = judge_claims(runs)
    assert not (df.claim == ARPG_CLAIM).any() and list(df.comparison) == ["table3b: n=4 better than n=16"]


def test_markdown_states_difference_seeds_and_seeds_to_resolve():
    runs = {"t": {"x": _frame(nll=_seeds(1.20, 0.2, 3)), "y": _frame(nll=_seeds(1.35, 0.2, 3)),
                  "z": _frame(nll=[1.0, 1.1, 1.2]), "w": _frame(nll=[1.2, 1.1, 1.0])}}
    df = judge_claims(runs, (Comparison("(z) mine", "t", "x", "y"), Comparison("(z) mine", "t", "z", "w")))
    md = to_markdown(df)
    header, align = md.splitlines()[:2]
    assert "difference A − B" in header and "seeds to resolve" in header and "verdict" in header
    assert align.startswith("|:--") and "--:|" in align  # text left, numbers right
    assert re.search(r"-0\.[12] ± 0\.2 ", md)  # -0.15 ± 0.163: the SE rounds to 0.2, the mean to its place
    n = int(df["seeds_to_resolve"].iloc[0])
    assert "3 / 3" in md and f"≈ {n}" in md and f"> {SEEDS_CAP}" in md  # a zero difference: out of reach
    assert re.search(r"\| +0\.\d+ \(0\.\d+\) \|", md)  # p and its Holm-adjusted value
    assert "Welch–Satterthwaite" in rule_text() and "margin of 5%" in rule_text() and "Holm" in rule_text()
    assert rule_text().startswith("**Rule.**") and "(lower NLL or FID, higher class accuracy for A)" in rule_text()


# ------------------------------------------------------------------------------------------ Table 4 (video)

SIMILAR = "Table 4: video n=4 ≈ n=1 (paper FVD 99.5 vs 94.1)"
WORSE = "Table 4: video n=16 worse than n=4 (paper 103.4 vs 99.5)"


def _video(nll, fvd, fvd_se=None, nll_se=None):
    n = len(fvd)
    cols = {"nll": nll, "fvd": fvd} | ({"fvd_se": [fvd_se] * n} if fvd_se is not None else {}) \
        | ({"nll_se": [nll_se] * n} if nll_se is not None else {})
    return pd.DataFrame(cols)


def test_table4_claims_are_judged_on_nll_and_fvd():
    runs = {"table4": {"PAR-1×": _video(_seeds(2.00, 0.01, 3), _seeds(50.0, 1.0, 3)),
                       "PAR-4×": _video(_seeds(2.01, 0.01, 3), _seeds(50.5, 1.0, 3)),
                       "PAR-16×": _video(_seeds(2.30, 0.01, 3), _seeds(60.0, 1.0, 3))}}
    df = judge_claims(runs)
    got = {(r.claim, r.comparison, r.metric): r.verdict for r in df.itertuples()}
    assert got == {
        (SIMILAR, "table4: PAR-4× ≈ PAR-1×", "NLL / token"): "reproduced (A not worse)",  # 0.01 ± 0.008 < 0.1
        (SIMILAR, "table4: PAR-4× ≈ PAR-1×", "FVD"): "reproduced (A not worse)",  # 0.5 ± 0.8 < 2.5
        (WORSE, "table4: PAR-4× better than PAR-16×", "NLL / token"): "reproduced",
        (WORSE, "table4: PAR-4× better than PAR-16×", "FVD"): "reproduced",  # −9.5 ± 1.6
    }
    # the other way round: PAR-16× better than PAR-4× on FVD contradicts the claim
    flipped = {"table4": runs["table4"] | {"PAR-16×": _video(_seeds(2.30, 0.01, 3), _seeds(40.0, 1.0, 3))}}
    v = judge_claims(flipped).set_index(["comparison", "metric"])["verdict"]
    assert v[("table4: PAR-4× better than PAR-16×", "FVD")] == "contradicted (A worse)"


def test_table4_with_one_seed_uses_the_bootstrap_se_and_can_stay_unresolved():
    # one seed each: FVD's error bar is the run's bootstrap SE; 52 vs 50 ± hypot(3, 3) = 4.2 cannot tell
    runs = {"table4": {"PAR-1×": _video([2.00], [50.0], fvd_se=3.0, nll_se=0.002),
                       "PAR-4×": _video([2.01], [52.0], fvd_se=3.0, nll_se=0.002),
                       "PAR-16×": _video([2.02], [55.0], fvd_se=3.0, nll_se=0.002)}}
    df = judge_claims(runs).set_index(["comparison", "metric"])
    fvd = df.loc[("table4: PAR-4× ≈ PAR-1×", "FVD")]
    assert fvd["verdict"] == "not resolved" and fvd["error_bar"] == "per-run SE (one seed)"
    assert fvd["se"] == pytest.approx(math.hypot(3.0, 3.0)) and fvd["seeds_to_resolve"] > 1
    assert df.loc[("table4: PAR-4× better than PAR-16×", "FVD"), "verdict"] == "not resolved"  # −3 ± 8.5
    # without its bootstrap SE a one-seed FVD has no error bar at all
    bare = {"table4": {k: v.drop(columns="fvd_se") for k, v in runs["table4"].items()}}
    v = judge_claims(bare).set_index(["comparison", "metric"])["verdict"]
    assert v[("table4: PAR-4× ≈ PAR-1×", "FVD")] == "not resolved (one seed, no error bar)"


def test_fvd_is_judged_only_where_both_rows_have_it_and_the_rule_says_how():
    runs = {"table4": {"PAR-1×": _video(_seeds(2.00, 0.01, 3), _seeds(50.0, 1.0, 3)),
                       "PAR-4×": _video(_seeds(2.01, 0.01, 3), [float("nan")] * 3)}}
    df = judge_claims(runs)
    assert list(df.metric) == ["NLL / token"]  # PAR-4× has no FVD; PAR-16× is absent: that claim is skipped
    assert {c.table for c in VIDEO_CLAIMS} == {"table4"} and len(VIDEO_CLAIMS) == 2
    assert VIDEO_RULE.strip() in rule_text(video=True) and "FVD" not in rule_text()
