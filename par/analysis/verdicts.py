"""Statistics over training seeds, numbers printed to the precision of their error bar, and a verdict on each
claim of the paper's Table 3 (and on ARPG's claim over Table 2, and on the video claims of Table 4) computed from
those numbers by one stated rule (`rule_text`): Welch's t test at the Welch–Satterthwaite degrees of freedom, 95 %;
"≈" claims as non-inferiority with a margin (the paper's "not much worse"); no verdict where both rows sit at the
tokenizer's reconstruction floor or at chance; Holm's step-down over each family of tests. The entropy claims
(par/analysis/entropy/summary.py) are judged by the same `decide`.

Pure functions on per-seed values: nothing here reads files or knows an outcome. `par tables` writes the values of
every run to runs.csv and judges every claim from that table alone (`judge_runs`).
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

LEVEL = 0.95  # every test and interval: 95 %
TOLERANCE = 0.05  # "≈" claims: the non-inferiority margin, as a share of B's value
SEEDS_CAP = 50  # seeds-to-resolve beyond this print as "> 50": the count only says "far out of reach" there


def t_quantile(p: float, df: float) -> float:
    """Student's t quantile at `df` degrees of freedom (df = ∞: the normal quantile)."""
    from scipy import stats

    return float(stats.t.ppf(p, df))


@dataclass(frozen=True)
class Welch:
    """d = mean(A) − mean(B), its standard error and Welch–Satterthwaite degrees of freedom."""

    d: float
    se: float
    df: float


def welch(sa: Stat, sb: Stat) -> Welch:
    """SE² = SE_A² + SE_B², df = SE⁴ / Σ SE_i⁴/(n_i − 1) over the rows whose SE is across seeds. A one-seed
    row's SE is its run's own, over thousands of images or samples: its df is effectively ∞, so it adds no term."""
    va, vb = sa.se ** 2, sb.se ** 2
    den = sum(v * v / (s.n - 1) for v, s in ((va, sa), (vb, sb)) if s.source == "seeds" and s.n > 1)
    return Welch(sa.mean - sb.mean, math.sqrt(va + vb), (va + vb) ** 2 / den if den > 0 else math.inf)


def _tail(x: float, df: float) -> float:
    """P(T ≥ x) for Student's t at `df`; a zero SE makes x ±∞ (or NaN for 0/0, taken as no evidence)."""
    from scipy import stats

    return 0.5 if math.isnan(x) else float(stats.t.sf(x, df))


def _ratio(num: float, se: float) -> float:
    return num / se if se > 0 else (math.nan if num == 0 else math.copysign(math.inf, num))


def _superiority(w: Welch, lower_is_better: bool) -> tuple[str, float, float]:
    """"A better than B", two-sided at 95 %: (verdict, p, gap left to resolve it)."""
    gain = -w.d if lower_is_better else w.d  # > 0: A better, as claimed
    p = min(1.0, 2 * _tail(abs(_ratio(gain, w.se)), w.df))
    if abs(gain) > t_quantile(0.5 + LEVEL / 2, w.df) * w.se:
        return ("reproduced" if gain > 0 else "contradicted (A worse)"), p, 0.0
    return "not resolved", p, abs(gain)


def _non_inferiority(w: Welch, lower_is_better: bool, margin: float) -> tuple[str, float, float]:
    """"A ≈ B" as the paper means it, A not worse than B by more than `margin`: one-sided 95 % bounds on how much
    A is worse. (verdict, p of the side the data lean to, gap left to resolve it)."""
    worse = w.d if lower_is_better else -w.d  # > 0: A worse than B
    q = t_quantile(LEVEL, w.df)
    lo, hi = worse - q * w.se, worse + q * w.se
    z = _ratio(worse - margin, w.se)
    p = _tail(-z, w.df) if worse < margin else _tail(z, w.df)
    if hi < margin:
        return ("reproduced (A better)" if hi < 0 else "reproduced (A not worse)"), p, 0.0
    if lo > margin:
        return "contradicted (A worse)", p, 0.0
    return "not resolved", p, abs(margin - worse)


def decide(w: Welch, lower_is_better: bool = True, margin: float | None = None) -> tuple[str, float, float]:
    """The rule on one difference (verdict, p, gap left to resolve it): a "better" claim, or with `margin` an ≈
    (non-inferiority) claim. Used by every claim, the entropy ones included."""
    if not (math.isfinite(w.d) and math.isfinite(w.se)):
        return "not resolved", math.nan, math.nan
    return _non_inferiority(w, lower_is_better, margin) if margin is not None else _superiority(w, lower_is_better)


def seeds_needed(gap: float, sd_a: float, sd_b: float, one_sided: bool = False, cap: int = SEEDS_CAP) -> float:
    """Smallest seed count N per model at which the t test at Welch's df would resolve `gap` (the distance from d to
    the decision boundary) given per-seed spreads `sd_a`, `sd_b`; inf when more than `cap` (or gap ≤ 0)."""
    if not gap > 0:
        return math.inf
    var, quad = sd_a ** 2 + sd_b ** 2, sd_a ** 4 + sd_b ** 4
    for n in range(2, cap + 1):
        df = (n - 1) * var ** 2 / quad if quad > 0 else math.inf
        if gap > t_quantile(LEVEL if one_sided else 0.5 + LEVEL / 2, df) * math.sqrt(var / n):
            return n
    return math.inf


@dataclass(frozen=True)
class Floor:
    """A level no model of this metric can beat or fall below in a meaningful way: the tokenizer's reconstruction
    (`what` = "floor") or chance, 1/classes, for class accuracy (`what` = "chance")."""

    what: str
    stat: Stat


def at_floor(s: Stat, floor: Floor | None) -> bool:
    """Whether a model's value cannot be told from the floor: |mean − floor| within the 95 % t interval of their
    difference. A value without an error bar is never "at floor" (nothing measures its noise)."""
    if floor is None or not (math.isfinite(s.se) and math.isfinite(floor.stat.mean)):
        return False
    fs = floor.stat if math.isfinite(floor.stat.se) else Stat(floor.stat.mean, 0.0, 1, None)
    w = welch(s, fs)
    return abs(w.d) <= t_quantile(0.5 + LEVEL / 2, w.df) * w.se


def judge(a: Sequence, b: Sequence, *, lower_is_better: bool = True, similar: bool = False,
          se_a=None, se_b=None, tolerance: float = TOLERANCE, floor: Floor | None = None) -> dict:
    """Verdict on "A is better than B" (or, with `similar`, "A is not worse than B by more than
    tolerance·|mean(B)|") from per-seed values `a`, `b`; `se_a`/`se_b` are per-run standard errors used only for a
    model with one seed. `floor`: where both A and B sit at it, the metric cannot tell them apart here."""
    sa, sb = mean_se(a, se_a), mean_se(b, se_b)
    w = welch(sa, sb)
    margin = tolerance * abs(sb.mean) if similar else None
    out = {"difference": w.d, "se": w.se, "df": w.df, "n_a": sa.n, "n_b": sb.n, "margin": margin, "p": math.nan,
           "seeds_to_resolve": None,
           "error_bar": "across seeds" if {sa.source, sb.source} == {"seeds"} else "per-run SE (one seed)"}
    if not math.isfinite(w.se):
        return out | {"verdict": "not resolved (one seed, no error bar)", "error_bar": "none"}
    if at_floor(sa, floor) and at_floor(sb, floor):
        return out | {"verdict": f"uninformative here (at {floor.what})"}
    verdict, p, gap = decide(w, lower_is_better, margin)
    out |= {"verdict": verdict, "p": p}
    if verdict == "not resolved":
        out["seeds_to_resolve"] = seeds_needed(gap, sa.sd, sb.sd, one_sided=similar)
    return out


def holm(pvalues: Sequence) -> list[float]:
    """Holm's step-down adjusted p-values: the k-th smallest of the m finite ones times m − k + 1, made
    non-decreasing, capped at 1. NaN (no test made) stays NaN and is not in the family."""
    ps = [float(p) if _finite(p) else math.nan for p in pvalues]
    order = sorted((i for i, p in enumerate(ps) if not math.isnan(p)), key=ps.__getitem__)
    out, running = [math.nan] * len(ps), 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - k) * ps[i]))
        out[i] = running
    return out


def rule_text(df=None, tolerance: float = TOLERANCE, video: bool = False) -> str:
    """The rule, in words. `df`: the verdict rows it introduces; then only the sentences about what they hold
    (class accuracy, one seed, floors, ARPG, video) appear, with the family size. Without `df`: every sentence but
    the video one unless `video`."""
    has = _Scope(df, video)
    text = [
        "**Rule.** For a comparison of row A (the one the paper says is better) with row B, d = mean(A) − mean(B) "
        "over their training seeds, SE(d) = √(SE_A² + SE_B²) with SE = std/√n across seeds, and Welch's t test "
        "at the Welch–Satterthwaite degrees of freedom, 95 % (two seeds each give df ≈ 2 and t = 4.3, not 2). "
        "**Better** claims, two-sided: **reproduced** when d is beyond t·SE(d) on the side the paper claims (lower "
        + " or ".join(["NLL"] + ["FID"] * has.fid + ["FVD"] * has.video)
        + (", higher class accuracy" if has.accuracy else "") + " for A), "
        "**contradicted (A worse)** when beyond it on the other side, else **not resolved**.",
        f"**≈ claims** (\"A ≈ B\") are non-inferiority claims with a margin of {tolerance:.0%} of B's value: "
        "**reproduced** when the upper one-sided 95 % bound of how much A is worse lies below the margin (\"A better\" "
        "when even that bound favours A, \"A not worse\" otherwise), **contradicted (A worse)** when the lower bound "
        "lies above it, else not resolved.",
        f"Seeds to resolve: the seeds per model at which the same test would decide, at the observed per-seed spread "
        f"(shown up to {SEEDS_CAP}; beyond that \"> {SEEDS_CAP}\")."]
    if has.one_seed:
        text.append("With one seed per model the error bar is the metric's own per-run standard error where it has "
                    "one (NLL over held-out images" + (", class accuracy over samples" if has.accuracy else "")
                    + (", FVD bootstrap over generated clips" if has.video else "") + ") — it ignores seed-to-seed "
                    "variation, so such a verdict is weaker and its seed count a lower bound; a metric with no "
                    "per-run standard error is **not resolved (one seed, no error bar)**.")
    if has.floor:
        text.append("**Uninformative here (at floor / at chance)**: both A and B lie within the 95 % interval of the "
                    "tokenizer's reconstruction floor" + (" (or, for class accuracy, of chance, 1/classes)"
                                                          if has.accuracy else "")
                    + ", so the metric measures the tokenizer (or nothing), not the models.")
    if has.arpg:
        text.append("ARPG vs PAR is judged on sample quality only, never on NLL: ARPG's NLL is the mean over random "
                    "orders, an upper bound on its likelihood, while PAR's is exact, so their difference does not "
                    "say which model is better.")
    text.append(family_text(df) if df is not None and "p_holm" in df else
                "Many claims at once: Holm's step-down adjusts every p-value for the family of tests.")
    return " ".join(text) + (VIDEO_RULE if has.video else "")


VIDEO_RULE = (" Table 4 (video) is judged by the same rule on NLL and on FVD (lower is better); with one seed, FVD's "
              "error bar is the run's bootstrap standard error over its generated clips, which, like the other "
              "per-run errors, ignores seed-to-seed variation.")


class _Scope:
    """What a set of verdict rows judges (all of it when there are none to look at)."""

    def __init__(self, df, video: bool):
        known = df is not None and "metric" in df
        metrics = set(df["metric"]) if known else None
        verdicts = [str(v) for v in df["verdict"]] if known else []
        self.fid = metrics is None or bool({CLASSIFIER_FID.label, INCEPTION_FID.label} & metrics)
        self.accuracy = metrics is None or CLASS_ACCURACY.label in metrics
        self.video = video or (known and bool(df["comparison"].map(is_video_row).any()))
        self.arpg = not known or bool((df["claim"] == ARPG_CLAIM).any())
        self.one_seed = not known or bool((df["error_bar"] != "across seeds").any())
        self.floor = not known or any(v.startswith("uninformative") for v in verdicts)


def family_text(df) -> str:
    """The family of tests the Holm column controls, in words (`df`: its rows, or some of them)."""
    sizes = {("video" if v else "image"): int(f) for v, f in zip(df["comparison"].map(is_video_row), df["family"])}
    family = " and ".join(f"{m} {kind} claim tests" for kind, m in sizes.items()) or "no tests"
    decided = int((df["p"] < 1 - LEVEL).sum())
    kept = int((df["p_holm"] < 1 - LEVEL).sum())
    return (f"**Many claims at once**: the family holds {family} (the rows with a p-value); the column p (Holm) "
            f"gives each raw p and, in brackets, Holm's step-down adjusted one, which controls the family-wise error "
            f"at 5 %: {decided} of these rows decide at p < 0.05 alone, {kept} still do after Holm.")


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

COLUMNS = ["claim", "comparison", "metric", "difference", "se", "df", "n_a", "n_b", "error_bar", "margin", "p",
           "p_holm", "family", "verdict", "seeds_to_resolve"]


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
                 tolerance: float = TOLERANCE, extra: Iterable[Mapping] = (), floors: Mapping[str, Floor] = None):
    """Verdicts of `claims` as a DataFrame (`COLUMNS`). `runs[table][row]` is a DataFrame with one row per seed and
    a column per metric key (nll, nll_se, cls_fid, class_accuracy, …); a comparison whose rows or metrics are
    absent is skipped. `extra`: rows judged elsewhere (e.g. entropy claims) with the same columns, appended.
    `floors`: metric key → its `Floor` (`metric_floors`). The Holm column adjusts over every row with a p."""
    import pandas as pd

    rows = []
    for c in claims:
        fa, fb = runs.get(c.table, {}).get(c.a), runs.get(c.table, {}).get(c.b)
        for m in _metrics_for(fa, fb, c.metrics) if fa is not None and fb is not None else []:
            v = judge(fa[m.key].tolist(), fb[m.key].tolist(), lower_is_better=m.lower_is_better, similar=c.similar,
                      se_a=_run_se(fa, m), se_b=_run_se(fb, m), tolerance=tolerance,
                      floor=(floors or {}).get(m.key))
            rows.append({"claim": c.claim, "comparison": f"{c.table}: {c.text()}", "metric": m.label, **v})
    rows += [{k: r.get(k) for k in COLUMNS} | {"comparison": r.get("comparison") or "§8 entropy analysis"}
             for r in extra]
    df = pd.DataFrame.from_records(rows, columns=COLUMNS)
    df["p"] = pd.to_numeric(df["p"], errors="coerce")
    return with_holm(df)


def with_holm(df):
    """`p_holm` and `family` (its size) over each family of tests: the image claims (Tables 2, 3, entropy) and the
    video claims (Table 4), each read in its own section of the report; rows without a p are in none."""
    df = df.copy()
    df["p_holm"], df["family"] = math.nan, 0
    for video in (False, True):
        mask = (df["comparison"].map(is_video_row) == video).to_numpy()
        df.loc[mask, "p_holm"] = holm(df.loc[mask, "p"].tolist())
        df.loc[mask, "family"] = int(df.loc[mask, "p"].notna().sum())
    return df


# ------------------------------------------------------------------------------------------ floors and runs.csv

FLOOR_OF = {"cls_fid": "recon", "fid": "recon", "fvd": "video-recon"}  # the reconstruction floor of each metric
CHANCE = "chance"  # the floor of class accuracy: 1/classes


def metric_floors(floor_stats: Mapping[str, Mapping[str, Stat]], classes: int | None = None) -> dict[str, Floor]:
    """metric key → its `Floor`: the tokenizer's reconstruction (`floor_stats[floor name][metric]`, e.g.
    floors/recon.json summarised) for FID and FVD, chance = 1/`classes` for class accuracy."""
    out = {key: Floor("floor", floor_stats[name][key]) for key, name in FLOOR_OF.items()
           if key in floor_stats.get(name, {}) and floor_stats[name][key].n}
    if classes:
        out["class_accuracy"] = Floor(CHANCE, Stat(1 / classes, 0.0, 1, None))
    return out


ROWS = "rows"  # runs.csv: where a model appears, "<table>:<row label>" joined by ROW_SEP
ROW_SEP = "; "


def judge_runs(table, claims: Sequence[Comparison] = CLAIMS, *, tolerance: float = TOLERANCE,
               extra: Iterable[Mapping] = ()):
    """Every verdict from runs.csv alone (as a DataFrame): rows of kind "run" grouped into `runs[table][row]` by
    their `rows` column, rows of kind "floor" (model = floor name) and "chance" giving the floors."""
    from par.errors import UserError

    missing = [c for c in ("kind", "model", ROWS) if c not in table]
    if missing:
        raise UserError(f"runs.csv: no column {', '.join(missing)}; write it with `par tables` (snakemake all_tables)")
    runs: dict[str, dict] = {}
    for _, frame in table[table["kind"] == "run"].groupby("model", sort=False):
        for spot in str(frame[ROWS].iloc[0]).split(ROW_SEP) if frame[ROWS].notna().any() else []:
            name, _, label = spot.partition(":")
            runs.setdefault(name, {})[label] = frame.reset_index(drop=True)
    stats = {r["model"]: {k: mean_se([r.get(k)], r.get(f"{k}_se")) for k in FLOOR_OF}
             for r in table[table["kind"] == "floor"].to_dict("records")}
    chance = table.loc[table["kind"] == CHANCE, "class_accuracy"] if "class_accuracy" in table else ()
    floors = metric_floors(stats, round(1 / chance.iloc[0]) if len(chance) else None)
    return judge_claims(runs, claims, tolerance=tolerance, extra=extra, floors=floors)


# ------------------------------------------------------------------------------------------ Markdown


def _seeds_text(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"> {SEEDS_CAP}" if math.isinf(v) else f"≈ {int(v)}"


def _count(v) -> str:
    return "–" if not _finite(v) else str(int(v))


def format_p(p) -> str:
    """A p-value to two significant digits; "< 0.001" below that."""
    if not _finite(p):
        return "–"
    if p < 0.001:
        return "< 0.001"
    p = float(f"{p:.2g}")
    return f"{p:.{max(1, 1 - math.floor(math.log10(p)))}f}"


ARROWS = {m.label: " ↓" if m.lower_is_better else " ↑" for m in ALL_METRICS}  # which sign of A − B favours A


def to_markdown(df) -> str:
    """The verdict table as Markdown: claim, comparison, metric (↓/↑: which way is better), difference ± SE, seeds,
    verdict, p (Holm-adjusted p), seeds to resolve ("> 50" beyond the cap)."""
    import pandas as pd

    shown = pd.DataFrame({
        "claim": df["claim"], "comparison": df["comparison"],
        "metric": [f"{m}{ARROWS.get(m, '')}" for m in df["metric"]],
        "difference A − B": [format_pm(d, s) for d, s in zip(df["difference"], df["se"])],
        "seeds (A / B)": [f"{_count(a)} / {_count(b)}" for a, b in zip(df["n_a"], df["n_b"])],
        "error bar": df["error_bar"].fillna("–"), "verdict": df["verdict"],
        "p (Holm)": [f"{format_p(p)} ({format_p(h)})" if _finite(p) else "–" for p, h in zip(df["p"], df["p_holm"])],
        "seeds to resolve": [_seeds_text(v) for v in df["seeds_to_resolve"]]})
    align = ("left",) * 3 + ("right",) * 2 + ("left",) * 2 + ("right",) * 2
    return shown.to_markdown(index=False, disable_numparse=True, colalign=align)
