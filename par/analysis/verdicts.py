"""Statistics over training seeds, numbers printed to the precision of their error bar, and a verdict on each
claim of the paper's Table 3 (and on ARPG's claim over Table 2, and on the video claims of Table 4) computed from
those numbers by one stated rule (`rule_text`).

Pure functions on per-seed values: nothing here reads files or knows an outcome. `par tables` feeds it the
per-seed values of every table row and writes the verdicts next to the tables.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

# ------------------------------------------------------------------------------------------ seed statistics


@dataclass(frozen=True)
class Stat:
    """Mean over seeds, its standard error and the number of seeds behind it.
    `source`: "seeds" (std/√n across seeds), "run" (one seed: the metric's own standard error) or None (no ±)."""

    mean: float
    se: float
    n: int
    source: str | None

    @property
    def sd(self) -> float:
        """Spread of one seed (per-run SE when there is one seed): what `seeds_to_resolve` scales."""
        return self.se * math.sqrt(self.n) if self.n else math.nan


def _finite(x) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def mean_se(values: Iterable, run_se=None) -> Stat:
    """Mean ± standard error (std with ddof=1 over √n) of the finite `values`. With one value the standard
    error is `run_se` (the metric's own, e.g. NLL over held-out images) when given, else NaN."""
    xs = [float(v) for v in values if _finite(v)]
    n = len(xs)
    if n == 0:
        return Stat(math.nan, math.nan, 0, None)
    mean = sum(xs) / n
    if n >= 2:
        return Stat(mean, math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1) / n), n, "seeds")
    return Stat(mean, float(run_se), 1, "run") if _finite(run_se) else Stat(mean, math.nan, 1, None)


# ------------------------------------------------------------------------------------------ formatting


def se_decimals(se: float) -> int:
    """Decimal places the error bar justifies: the SE rounded to 2 significant digits when it starts with a 1
    (0.14, not 0.1), else to 1; negative for SEs ≥ 10 (340 ± 20)."""
    one = float(f"{se:.1g}")
    exp = math.floor(math.log10(one))
    sig = 2 if round(one / 10 ** exp) == 1 else 1
    return sig - 1 - exp


def format_value(v, sig: int = 4) -> str:
    """A number without an error bar: `sig` significant digits, never scientific notation."""
    if not _finite(v):
        return "–"
    v = float(f"{v:.10g}")  # 6.000000000000002 (a difference of floats) is 6
    if v.is_integer():  # counts, steps, parameters
        return f"{v:,.0f}" if abs(v) >= 10_000 else f"{v:.0f}"
    dec = max(0, sig - 1 - math.floor(math.log10(abs(v))))
    return f"{v:.{dec}f}"


def format_pm(mean, se, sig: int = 4) -> str:
    """`mean ± se` with both rounded to the error bar's precision (0.004 ± 0.002); a missing or zero SE prints
    the value alone (`format_value`)."""
    if not _finite(mean):
        return "–"
    if not _finite(se) or se <= 0:
        return format_value(mean, sig)
    dec = se_decimals(se)
    if dec <= 0:
        q = 10 ** -dec
        return f"{round(mean / q) * q + 0.0:.0f} ± {round(se / q) * q:.0f}"
    return f"{round(mean, dec) + 0.0:.{dec}f} ± {se:.{dec}f}"  # + 0.0: no "-0.000"


# ------------------------------------------------------------------------------------------ the rule

TOLERANCE = 0.05  # "≈" claims: |difference| within 5% of the baseline's value


def rule_text(tolerance: float = TOLERANCE, video: bool = False) -> str:
    """The rule, in words; `video`: with the sentence on Table 4 (FVD and its per-run error bar)."""
    return (
        "**Rule.** For a comparison of row A (the one the paper says is better) with row B, d = mean(A) − mean(B) "
        "over their training seeds, with SE(d) = √(SE_A² + SE_B²) (Welch) and SE = std/√n across seeds. "
        "If |d| > 2·SE(d): **reproduced** when d has the sign of the paper's claim (lower NLL or FID, higher class "
        "accuracy for A), else **contradicted**; otherwise **not resolved**, with the number of seeds per model "
        "that would make 2·SE(d) < |d| at the observed per-seed spread (SE ∝ 1/√seeds). "
        f"For a claim that two rows are about equal (≈), the tolerance is ±{tolerance:.0%} of B's value: "
        "**reproduced** when the interval d ± 2·SE(d) lies inside it, **contradicted** when it lies wholly outside, "
        "else not resolved. With one seed per model the error bar is the metric's own per-run standard error where "
        "it has one (NLL over held-out images, class accuracy over samples) — it ignores seed-to-seed variation, "
        "so such a verdict is weaker and its seed count a lower bound; a metric with no per-run standard error "
        "(FID) is **not resolved (one seed, no error bar)**. "
        "ARPG vs PAR is judged on sample quality only, never on NLL: ARPG's NLL is the mean over random orders, an "
        "upper bound on its likelihood, while PAR's is exact, so their difference does not say which model is "
        "better." + (VIDEO_RULE if video else ""))


VIDEO_RULE = (" Table 4 (video) is judged by the same rule on NLL and on FVD (lower is better); with one seed, FVD's "
              "error bar is the run's bootstrap standard error over its generated clips, which, like the other "
              "per-run errors, ignores seed-to-seed variation.")


def seeds_needed(margin: float, sd_a: float, sd_b: float) -> float:
    """Smallest seed count N per model with 2·√((sd_a² + sd_b²)/N) < margin; inf when margin ≤ 0."""
    if not margin > 0:
        return math.inf
    return math.floor(4 * (sd_a ** 2 + sd_b ** 2) / margin ** 2) + 1


def judge(a: Sequence, b: Sequence, *, lower_is_better: bool = True, similar: bool = False,
          se_a=None, se_b=None, tolerance: float = TOLERANCE) -> dict:
    """Verdict on "A is better than B" (or, with `similar`, "A ≈ B" within ±tolerance·|mean(B)|) from per-seed
    values `a`, `b`; `se_a`/`se_b` are per-run standard errors used only for a model with one seed."""
    sa, sb = mean_se(a, se_a), mean_se(b, se_b)
    d, se = sa.mean - sb.mean, math.hypot(sa.se, sb.se)
    sources = {sa.source, sb.source}
    out = {"difference": d, "se": se, "n_a": sa.n, "n_b": sb.n, "seeds_to_resolve": None,
           "error_bar": "across seeds" if sources == {"seeds"} else "per-run SE (one seed)"}
    if not math.isfinite(se):
        return out | {"verdict": "not resolved (one seed, no error bar)", "error_bar": "none"}
    if similar:
        tol = tolerance * abs(sb.mean)
        if abs(d) + 2 * se < tol:
            return out | {"verdict": "reproduced"}
        if abs(d) - 2 * se > tol:
            return out | {"verdict": "contradicted"}
        margin = abs(tol - abs(d))
    else:
        if abs(d) > 2 * se:
            return out | {"verdict": "reproduced" if (d < 0) == lower_is_better else "contradicted"}
        margin = abs(d)
    return out | {"verdict": "not resolved", "seeds_to_resolve": seeds_needed(margin, sa.sd, sb.sd)}


# ------------------------------------------------------------------------------------------ the claims


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    lower_is_better: bool
    run_se: str | None = None  # key of the metric's own per-run standard error, if it has one


NLL = Metric("nll", "NLL / token", True, "nll_se")
CLASSIFIER_FID = Metric("cls_fid", "classifier FID", True)
INCEPTION_FID = Metric("fid", "Inception FID", True)  # stands in for the classifier FID when a preset has none
CLASS_ACCURACY = Metric("class_accuracy", "class accuracy", False, "class_accuracy_se")
FVD = Metric("fvd", "FVD", True, "fvd_se")  # video (Table 4); its per-run SE: bootstrap over generated clips
SAMPLE_QUALITY = (CLASSIFIER_FID, INCEPTION_FID, CLASS_ACCURACY)
ALL_METRICS = (NLL, *SAMPLE_QUALITY, FVD)


@dataclass(frozen=True)
class Comparison:
    """One pairwise comparison of a claim: row `a` of `table` is better than row `b` (or ≈ b when `similar`),
    judged on those of `metrics` that both rows have."""

    claim: str
    table: str
    a: str
    b: str
    similar: bool = False
    metrics: tuple[Metric, ...] = ALL_METRICS

    def text(self) -> str:
        return f"{self.a} ≈ {self.b}" if self.similar else f"{self.a} better than {self.b}"


_E = "(e) larger is better"
# The paper's Table 3 claims (arXiv 2412.15119) over the row labels of config.yaml `tables:`.
CLAIMS = (
    Comparison("(a) the initial sequential phase helps", "table3a", "w/ initial sequential", "w/o initial sequential"),
    Comparison("(b) n=4 ≈ n=1, n=16 worse than n=4", "table3b", "n=4", "n=1", similar=True),
    Comparison("(b) n=4 ≈ n=1, n=16 worse than n=4", "table3b", "n=4", "n=16"),
    Comparison("(c) full in-group attention beats causal", "table3c", "full in group", "causal in group"),
    Comparison("(d) adjacent-parallel much worse than distant-parallel", "table3d", "distant multi", "raster multi"),
    Comparison("(d) PAR order alone (n=1, 4 regions) costs little", "table3d", "distant one", "raster one",
               similar=True),
    Comparison(_E, "table3e", "M / XL", "S / L"),
    Comparison(_E, "table3e", "L / XXL", "M / XL"),
    Comparison(_E, "table3e", "L / XXL", "S / L"),
    Comparison(_E, "table3e", "3B", "L / XXL"),
)
ARPG_CLAIM = "ARPG vs PAR at equal steps (ARPG's claim: better)"
# ARPG (arXiv 2503.10568) sampled at PAR's step counts; its NLL is only an upper bound, so sample quality only
ARPG_CLAIMS = tuple(Comparison(ARPG_CLAIM, "table2", f"ARPG, PAR n={n}'s steps", f"PAR n={n}",
                               metrics=SAMPLE_QUALITY) for n in (4, 16))
CLAIMS += ARPG_CLAIMS
# The paper's Table 4 (UCF-101 video): FVD 94.1 / 99.5 / 103.4 at 1 / 4 / 16 tokens per step
VIDEO_CLAIMS = (
    Comparison("Table 4: video n=4 ≈ n=1 (paper FVD 99.5 vs 94.1)", "table4", "PAR-4×", "PAR-1×", similar=True),
    Comparison("Table 4: video n=16 worse than n=4 (paper 103.4 vs 99.5)", "table4", "PAR-4×", "PAR-16×"),
)
VIDEO_TABLES = tuple(sorted({c.table for c in VIDEO_CLAIMS}))
CLAIMS += VIDEO_CLAIMS

COLUMNS = ["claim", "comparison", "metric", "difference", "se", "n_a", "n_b", "error_bar", "verdict",
           "seeds_to_resolve"]


def _has(frame, key: str) -> bool:
    return frame is not None and key in frame and frame[key].notna().any()


def _metrics_for(fa, fb, allowed=ALL_METRICS) -> list[Metric]:
    """NLL, then sample quality: classifier FID (Inception FID when no classifier FID), class accuracy, FVD
    (video); only those in `allowed` that both rows have."""
    fid = CLASSIFIER_FID if _has(fa, "cls_fid") and _has(fb, "cls_fid") else INCEPTION_FID
    return [m for m in (NLL, fid, CLASS_ACCURACY, FVD) if m in allowed and _has(fa, m.key) and _has(fb, m.key)]


def is_video_row(comparison: str) -> bool:
    """Whether a verdict row (its `comparison`, "<table>: …") judges a video claim (Table 4)."""
    return str(comparison).split(":")[0] in VIDEO_TABLES


def _run_se(frame, metric: Metric):
    if metric.run_se and metric.run_se in frame and len(frame) == 1:
        return frame[metric.run_se].iloc[0]
    return None


def judge_claims(runs: Mapping[str, Mapping], claims: Sequence[Comparison] = CLAIMS, *,
                 tolerance: float = TOLERANCE, extra: Iterable[Mapping] = ()):
    """Verdicts of `claims` as a DataFrame (`COLUMNS`). `runs[table][row]` is a DataFrame with one row per seed and
    a column per metric key (nll, nll_se, cls_fid, class_accuracy, …); a comparison whose rows or metrics are
    absent is skipped. `extra`: rows judged elsewhere (e.g. entropy claims) with the same columns, appended."""
    import pandas as pd

    rows = []
    for c in claims:
        fa, fb = runs.get(c.table, {}).get(c.a), runs.get(c.table, {}).get(c.b)
        for m in _metrics_for(fa, fb, c.metrics) if fa is not None and fb is not None else []:
            v = judge(fa[m.key].tolist(), fb[m.key].tolist(), lower_is_better=m.lower_is_better, similar=c.similar,
                      se_a=_run_se(fa, m), se_b=_run_se(fb, m), tolerance=tolerance)
            rows.append({"claim": c.claim, "comparison": f"{c.table}: {c.text()}", "metric": m.label, **v})
    rows += [{k: r.get(k) for k in COLUMNS} | {"comparison": r.get("comparison") or "§8 entropy analysis"}
             for r in extra]
    return pd.DataFrame.from_records(rows, columns=COLUMNS)


def _seeds_text(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return "—" if math.isinf(v) else f"≈ {int(v)}"


def _count(v) -> str:
    return "–" if not _finite(v) else str(int(v))


def to_markdown(df) -> str:
    """The verdict table as Markdown: claim, comparison, metric, difference ± SE, seeds, verdict, seeds to
    resolve (— when the difference is zero, so no seed count resolves it)."""
    import pandas as pd

    shown = pd.DataFrame({
        "claim": df["claim"], "comparison": df["comparison"], "metric": df["metric"],
        "difference A − B": [format_pm(d, s) for d, s in zip(df["difference"], df["se"])],
        "seeds (A / B)": [f"{_count(a)} / {_count(b)}" for a, b in zip(df["n_a"], df["n_b"])],
        "error bar": df["error_bar"].fillna("–"), "verdict": df["verdict"],
        "seeds to resolve": [_seeds_text(v) for v in df["seeds_to_resolve"]]})
    align = ("left",) * 3 + ("right",) * 2 + ("left",) * 2 + ("right",)
    return shown.to_markdown(index=False, disable_numparse=True, colalign=align)
