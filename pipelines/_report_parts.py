"""Pieces of the `report` stage: the comparison rule, the definitions, markdown tables, the sweep
summary and the overview figures.

Comparison rule (`compare`, the only place the report decides that two numbers differ): a and b
differ when |a - b| > REL_TOL * max(|a|, |b|) and, for means over n > 1 seeds, also when |a - b|
exceeds the sum of their 95% t-interval half-widths t(0.975, n - 1) * std / sqrt(n) (`half_width`),
i.e. the two intervals do not overlap. Otherwise they tie. Rankings, "grows / falls with CFG" and
"beyond / within a threshold" are all decided by `compare`.

Sweep input (`sweep.out`, written by `pipelines.sweep` / `sphereard.sweep.results`): `results.csv`,
one row per trial (`trial`, `status` done | stopped, the settings `posterior`, `radius`, `projection`,
`sampler_steps`, `cfg_scale`, `train`, then `seed`, metric columns, `mlflow_run_id`), is summarised
here as mean / std / n over the seeds of the finished trials; without it `summary.csv` is read
(`<metric>_mean`, `<metric>_std`, `num_seeds`; plain metric columns are taken as means).
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy import stats

from sphereard.config import POSTERIORS
from sphereard.eval.diagnostics import DRIFT_TOL, FIG_DPI, FIG_SIZE
from sphereard.eval.extractors import metric_name
from sphereard.eval.figures import norm_series_style, posterior_colour, reference_line, series_styles

log = logging.getLogger("pipelines.report")

SWEEP_KEYS = ("posterior", "radius", "projection", "sampler_steps", "train", "cfg_scale")  # cfg_scale last
COUNT_COLUMNS = ("num_seeds", "n", "n_seeds", "count")
DONE = "done"  # results.csv status of a finished trial (ASHA-stopped ones are left out)
SWEEP_SHOWN = ("fd_", "fid_", "class_consistency_", "norm_rel_dev_max", "norm_rel_dev_mean")  # report's curves
LOWER_BETTER = ("fd_", "fid_", "kid_")
METRIC_PREFIXES = (*LOWER_BETTER, "precision_", "recall_", "is_", "class_consistency_", "norm_")
HIDDEN_PREFIXES = ("kid_std_", "is_std_")
GEN_METRICS = ("fd", "kid", "precision", "recall", "is", "class_consistency")
NORM_KEY = re.compile(r"^norm_rel_dev_(?P<projection>[a-z]+)_cfg(?P<cfg>[0-9.eE+-]+)$")
MISSING = "n/a"
MISSING_COUNT = "an unrecorded number of"
DEFAULT_RADIUS = "sqrt(d)"

REL_TOL = 0.02  # two numbers closer than 2% of the larger magnitude are a tie
CONFIDENCE = 0.95  # two-sided t-interval of a mean over seeds
COMPARISON_RULE = (
    f"**Comparison rule.** Two numbers a, b are called different (ranked, \"grows\", \"beyond a threshold\") "
    f"only when |a - b| > {REL_TOL:.0%} of max(|a|, |b|) (`REL_TOL`) and, for sweep points that average n > 1 "
    f"seeds, also when |a - b| exceeds the sum of their {CONFIDENCE:.0%} t-interval half-widths "
    "t(0.975, n - 1) * std / sqrt(n) (the intervals do not overlap). Otherwise they are a tie, printed as "
    "\"no difference beyond the tolerance\". `kid_*` and `is_*` must also differ by more than the sum of the "
    "stds the evaluate stage reports with them (`kid_std_*` over KID subsets, `is_std_*` over IS splits). A "
    "change with CFG must hold at every consecutive diagnostic scale (else \"not monotone\"), and for norm "
    "deviations exceed 0.5 percentage points. The main tables come from one seed per tokenizer, so only the "
    f"{REL_TOL:.0%} tolerance applies there: a difference beyond it is not yet evidence beyond run-to-run noise.")


def fmt(v) -> str:
    """Table cell: strings as is, ints exact, floats to 4 significant digits, None / NaN as n/a."""
    if v is None:
        return MISSING
    if isinstance(v, (str, bool)):
        return str(v)
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    v = float(v)
    if math.isnan(v):
        return MISSING
    return f"{v:,.0f}" if abs(v) >= 1e4 else f"{v:.4g}"


def md_table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows])


def collapse(values: dict[str, object], show=fmt) -> str:
    """One value when every posterior has the same (absent ones left out), else `p v, q w`; n/a if none."""
    known = {p: v for p, v in values.items() if v is not None}
    if not known:
        return fmt(None)
    if len({show(v) for v in known.values()}) == 1:
        return show(next(iter(known.values())))
    return ", ".join(f"{p} {show(v)}" for p, v in known.items())


def is_metric(column: str) -> bool:
    return column.startswith(METRIC_PREFIXES) and not column.startswith(HIDDEN_PREFIXES)


def finite(v) -> bool:
    return isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and math.isfinite(v)


# ---- the comparison rule ----

def half_width(std, n) -> float:
    """Half-width of the CONFIDENCE t-interval of a mean over n seeds with sample std `std`; 0 for n <= 1
    or an unknown std (a single value has no interval)."""
    if not (finite(n) and n > 1 and finite(std)):
        return 0.0
    return float(stats.t.ppf(0.5 + CONFIDENCE / 2, int(n) - 1) * std / math.sqrt(n))


def compare(a: float, b: float, a_half: float = 0.0, b_half: float = 0.0, rel_tol: float = REL_TOL) -> int:
    """+1 if a > b, -1 if a < b, 0 (a tie) unless |a - b| exceeds both rel_tol * max(|a|, |b|) and the
    summed interval half-widths a_half + b_half (module docstring)."""
    gap = float(a) - float(b)
    if abs(gap) <= rel_tol * max(abs(a), abs(b)) or abs(gap) <= a_half + b_half:
        return 0
    return 1 if gap > 0 else -1


def trend(series: list[tuple[float, float]], abs_floor: float = 0.0) -> int:
    """+1 (grows) / -1 (shrinks) / 0 (no change beyond the tolerance) / None (not monotone) for values
    [(x, v)] sorted by x: every consecutive step must move one way or tie (`compare`, and more than
    `abs_floor` in absolute terms, e.g. percentage points for fractions), and the ends must differ."""
    def step(a: float, b: float) -> int:
        return 0 if abs(float(b) - float(a)) <= abs_floor else compare(b, a)

    steps = {step(a, b) for (_, a), (_, b) in zip(series, series[1:])} - {0}
    if len(steps) > 1:
        return None
    return step(series[0][1], series[-1][1]) if steps else 0


# ---- metric keys of the stage outputs ----

def generation_keys(ev: dict[str, dict]) -> list[str]:
    """Generation metric keys present in any posterior's evaluate metrics, grouped per extractor tag."""
    present = {k for m in ev.values() for k in m}
    tags = dict.fromkeys("inception" if k == "fid_inception" else k[3:] for m in ev.values() for k in m
                         if k.startswith("fd_") or k == "fid_inception")
    return [metric_name(m, t) for t in tags for m in GEN_METRICS if metric_name(m, t) in present]


def recon_fd_keys(ev: dict[str, dict]) -> list[str]:
    """rfd_<tag> / rfid_inception keys (without the evaluate stage's `recon_` prefix)."""
    return list(dict.fromkeys(k[len("recon_"):] for m in ev.values() for k in m
                              if k.startswith(("recon_rfd_", "recon_rfid_"))))


def norm_devs(metrics: dict) -> dict[tuple[str, float], float]:
    """{(projection, cfg_scale): max relative norm deviation} from `norm_rel_dev_<proj>_cfg<w>` keys."""
    out = {}
    for key, value in metrics.items():
        if m := NORM_KEY.match(key):
            out[(m["projection"], float(m["cfg"]))] = value
    return out


# ---- sweep ----

def radius_label(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)) or str(v).strip().lower() in ("", "none", "null"):
        return DEFAULT_RADIUS
    return fmt(float(v))


def _check_sweep(frame: pd.DataFrame) -> pd.DataFrame:
    missing = [k for k in ("posterior", "cfg_scale") if k not in frame]
    if missing:
        raise ValueError(f"no {', '.join(missing)} column")
    return frame.assign(radius=frame["radius"].map(radius_label)) if "radius" in frame else frame


def summarise_results(results: pd.DataFrame) -> pd.DataFrame:
    """One row per trial -> one row per setting: <metric>_mean, <metric>_std (over seeds) and n."""
    frame = _check_sweep(results)
    if "status" in frame:
        frame = frame[frame["status"] == DONE]
    keys = [k for k in SWEEP_KEYS if k in frame]
    metrics = [c for c in frame if is_metric(c) and pd.api.types.is_numeric_dtype(frame[c])]
    if not metrics:
        raise ValueError("no metric columns")
    grouped = frame.groupby(keys, dropna=False)
    out = grouped[metrics].mean().add_suffix("_mean").join(grouped[metrics].std().add_suffix("_std"))
    return out.assign(n=grouped.size()).reset_index()


def parse_summary(summary: pd.DataFrame) -> pd.DataFrame:
    """summary.csv with <metric>_mean / <metric>_std columns, or plain metric columns (taken as means)."""
    frame = _check_sweep(summary)
    rename = {c: f"{c}_mean" for c in frame if is_metric(c) and not c.endswith(("_mean", "_std", "_count"))
              and f"{c}_mean" not in frame}
    frame = frame.rename(columns=rename)
    count = next((c for c in COUNT_COLUMNS if c in frame), None)
    frame["n"] = frame[count] if count else np.nan
    if not any(c.endswith("_mean") and is_metric(c) for c in frame):
        raise ValueError("no metric columns")
    return frame


def load_sweep(out: Path) -> tuple[pd.DataFrame | None, str]:
    """(summary frame or None, one sentence for the report saying where it came from / why it is absent)."""
    results, summary = out / "results.csv", out / "summary.csv"
    source = results if results.is_file() else summary if summary.is_file() else None
    if source is None:
        return None, (f"**No sweep outputs** (`{results}` and `{summary}` are absent): run the `sweep` stage "
                      "for metric-vs-CFG curves. Nothing in this section is measured.")
    try:
        raw = pd.read_csv(source)
        frame = summarise_results(raw) if source == results else parse_summary(raw)
    except (ValueError, KeyError, pd.errors.ParserError) as err:
        log.warning("%s: cannot summarise the sweep (%s)", source, err)
        return None, f"**Sweep outputs unreadable**: `{source}`: {err}. No CFG curves."
    n = frame["n"].dropna()
    seeds = f"{int(n.min())}-{int(n.max())}" if len(n) and n.min() != n.max() else fmt(n.iloc[0]) if len(n) else "?"
    stopped = int((raw["status"] != DONE).sum()) if "status" in raw else 0
    what = (f"{len(raw)} trials" + (f", {stopped} stopped early and left out" if stopped else "") +
            "; mean (± std when n > 1) over seeds" if source == results else "read as summarised")
    return frame, (f"From `{source}` ({what}); trials per point n = {seeds}. The sweep stage's own plots are in "
                   f"`{out / 'plots'}`.")


def sweep_metrics(summary: pd.DataFrame) -> list[str]:
    """The summarised metrics the report shows as curves (FD per extractor, class consistency, norm drift)."""
    names = [c[:-len("_mean")] for c in summary if c.endswith("_mean")]
    shown = [m for m in names if is_metric(m) and m.startswith(SWEEP_SHOWN)]
    return sorted(shown, key=lambda m: next(i for i, prefix in enumerate(SWEEP_SHOWN) if m.startswith(prefix)))


def posterior_rank(item: tuple) -> int:
    """Sort key of (posterior, ...) items: the paper's order spherical, gaussian_norm, gaussian."""
    return POSTERIORS.index(item[0]) if item[0] in POSTERIORS else len(POSTERIORS)


def sweep_lines(summary: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """{label: rows sorted by cfg_scale}, one line per posterior x each other setting that varies within
    a posterior (`auto` projection, sphere for one posterior and none for another, stays out of the label)."""
    varying = [k for k in SWEEP_KEYS[1:-1] if k in summary
               and summary.groupby("posterior")[k].nunique(dropna=False).max() > 1]
    lines = {}
    for values, rows in summary.groupby(["posterior", *varying], sort=False, dropna=False):
        label = ", ".join([str(values[0])] + [f"{k}={v}" for k, v in zip(varying, values[1:])])
        lines[label] = rows.sort_values("cfg_scale")
    return dict(sorted(lines.items(), key=lambda item: posterior_rank((item[1]["posterior"].iloc[0],))))


def fixed_settings(summary: pd.DataFrame) -> str:
    """Settings constant within each posterior: 'projection: spherical sphere, gaussian none; train False'."""
    out = []
    for key in SWEEP_KEYS[1:-1]:
        if key not in summary or summary.groupby("posterior")[key].nunique(dropna=False).max() > 1:
            continue
        per = summary.groupby("posterior")[key].first()
        out.append(f"{key} {per.iloc[0]}" if per.nunique(dropna=False) == 1 else
                   f"{key}: " + ", ".join(f"{p} {v}" for p, v in sorted(per.items(), key=posterior_rank)))
    return "; ".join(out)


def _cell(row, metric: str) -> str:
    mean, std = row[f"{metric}_mean"], row.get(f"{metric}_std", np.nan)
    return f"{fmt(mean)} ± {fmt(std)}" if row["n"] > 1 and finite(std) else fmt(mean)


def sweep_table(summary: pd.DataFrame, metric: str) -> str:
    cfgs = sorted(summary["cfg_scale"].unique())
    rows = []
    for label, line in sweep_lines(summary).items():
        by_cfg = {r["cfg_scale"]: _cell(r, metric) for _, r in line.iterrows()}
        rows.append([label, *[by_cfg.get(w, MISSING) for w in cfgs]])
    return md_table(["tokenizer / setting", *[f"w={w:g}" for w in cfgs]], rows)


def plot_sweep(summary: pd.DataFrame, metric: str, path: Path) -> None:
    """Mean of `metric` vs CFG scale, one line per setting in its tokenizer's colour; error bars = the
    CONFIDENCE t-interval of the mean where n > 1 seeds."""
    lines = sweep_lines(summary)
    styles = series_styles(list(lines))
    fig = Figure(figsize=FIG_SIZE)
    ax = fig.add_subplot()
    for label, line in lines.items():
        std = line.get(f"{metric}_std", pd.Series(np.nan, index=line.index))
        yerr = [half_width(sd, n) for sd, n in zip(std, line["n"])]
        ax.errorbar(line["cfg_scale"], line[f"{metric}_mean"], yerr=yerr, capsize=3, label=label, **styles[label])
    ax.set(xlabel="CFG scale w", ylabel=metric, title=f"{metric} vs CFG scale")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=FIG_DPI)


# ---- overview figures from the evaluate CSVs ----

def plot_norm_overview(frames: dict[str, pd.DataFrame], radii: dict[str, float | None], path: Path) -> None:
    """Mean pre-projection token norm per position, one panel per tokenizer in its colour (dashed = no
    projection, more opaque = higher CFG scale), the radius R it is compared with as a dotted line."""
    fig = Figure(figsize=(FIG_SIZE[0] * len(frames) * 0.7, FIG_SIZE[1]))
    for i, (p, frame) in enumerate(frames.items()):
        ax = fig.add_subplot(1, len(frames), i + 1)
        scales = sorted(frame["cfg_scale"].unique())
        for series, rows in frame.groupby("series", sort=False):
            style = norm_series_style(p, str(rows["projection"].iloc[0]), scales.index(rows["cfg_scale"].iloc[0]),
                                      len(scales))
            ax.plot(rows["position"], rows["norm_mean"], label=series, **style)
        if finite(radii.get(p)):
            reference_line(ax, radii[p], f"R = {radii[p]:.3g}")
        ax.set(xlabel="token position", ylabel="mean ||z|| (pre-projection)", title=p)
        ax.legend(fontsize="x-small")
    fig.tight_layout()
    fig.savefig(path, dpi=FIG_DPI)


def plot_split_overview(frames: dict[str, pd.DataFrame], path: Path) -> None:
    """Teacher-forced error per position: solid = tangential, dashed = radial, one colour per tokenizer."""
    fig = Figure(figsize=FIG_SIZE)
    ax = fig.add_subplot()
    for p, frame in frames.items():  # long format: position, series (radial | tangential), error
        part = {name: rows.sort_values("position") for name, rows in frame.groupby("series")}
        colour = posterior_colour(p)
        ax.plot(part["tangential"]["position"], part["tangential"]["error"], color=colour, label=f"{p} tangential")
        ax.plot(part["radial"]["position"], part["radial"]["error"], ls="--", color=colour, label=f"{p} radial")
    ax.set(xlabel="token position", ylabel="mean |error|", title="teacher-forced error: radial vs tangential")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=FIG_DPI)


# ---- definitions of every quantity the report names ----

EXTRACTOR_MODEL = {"classifier": "the in-project classifier of `train_classifier`",
                   "effnet": "ImageNet EfficientNet-Lite0", "inception": "Inception-v3 with the standard FID weights",
                   "inception_unverified": "Inception-v3 with weights that are not the verified FID ones"}
EXTRACTOR_LAYER = {"classifier": "penultimate-layer features", "effnet": "1280 pooled head features",
                   "inception": "2048 pool features", "inception_unverified": "2048 pool features"}
TAGGED = r"(?P<T>[a-z0-9_]+)"
NORM_GENERIC = "norm_rel_dev_<projection>_cfg<w>"
SPACE = "in the feature space of {ext} ({layer})"
DEFINITION_PATTERNS = (  # (name regex, text); {T} {ext} {layer}: the extractor; other fields: `definition_context`
    (r"psnr", "peak signal-to-noise ratio (dB) of reconstructions vs the originals, 10 log10(1 / MSE) per image "
              "on [0, 1] pixel values, mean over the `eval images` held-out test images (train_vae); higher is "
              "better."),
    (r"ssim", "structural similarity of reconstructions vs the originals (data range 1), mean over the "
              "`eval images`; 1 = identical."),
    (r"lpips_vgg", "LPIPS (VGG) perceptual distance of reconstructions vs the originals, mean over images; "
                   "lower is better."),
    (rf"rfi?d_{TAGGED}", "reconstruction Frechet distance between Gaussian fits of the reconstructions and of the "
                         "same `eval images` held-out originals " + SPACE + "; lower is better."),
    (rf"fi?d_{TAGGED}", "Frechet distance ||mu_g - mu_r||^2 + tr(S_g + S_r - 2 (S_g S_r)^(1/2)) between Gaussian "
                        "fits of the generated `samples` (g) and of {num_real} real reference "
                        "images (r; the `reference` stage's count) " + SPACE + "; lower is better; biased upward at small sample counts."),
    (rf"kid_{TAGGED}", "kernel distance: unbiased MMD^2 with kernel (x.y / D + 1)^3 between the samples and the "
                       "reals " + SPACE + ", mean over 100 random subsets of `evaluation.kid_subset_size` = {kid} "
                       "(at most the smaller set); lower is better."),
    (rf"precision_{TAGGED}", "fraction of generated samples inside the k-nearest-neighbour ball of some real image "
                             + SPACE + ", k = `evaluation.pr_neighbours` = {k}: sample quality; higher is better."),
    (rf"recall_{TAGGED}", "fraction of real images inside the k-nearest-neighbour ball of some generated sample "
                          + SPACE + ", same k: coverage; higher is better."),
    (rf"is_{TAGGED}", "exp E_x KL(p(y|x) || p(y)), p(y|x) = softmax of the logits of {ext} on a sample, mean over "
                      "splits of the samples; at most the number of classes; higher = sharp and diverse class "
                      "predictions (with the in-project classifier an analogue, not the Inception Score)."),
    (rf"class_consistency_{TAGGED}", "fraction of class-conditional samples whose argmax class under {ext} is "
                                     "their conditioning label; higher is better, bounded by that classifier's "
                                     "accuracy."),
    (re.escape(NORM_GENERIC), "evaluate's norm diagnostic: max over token positions k of |mean_n ||z_nk|| - R| / R, "
                              "z_nk = token k of sample n right after CFG and before any projection, sampled with "
                              "projection `<projection>` (none | sphere) at CFG scale w, "
                              "`evaluation.diagnostic_samples` = {ds} samples, {dsteps} sampler steps. It measures "
                              "drift of the *average* norm; above DRIFT_TOL = {drift} counts as drift."),
    (r"norm_rel_dev_max", "sweep trial: max over token positions k of |mean_n ||z_nk|| - R| / R (the formula of `"
                          + NORM_GENERIC + "` at the trial's settings, `sweep.num_per_class` samples per class): "
                          "drift of the *average* norm."),
    (r"norm_rel_dev_mean", "sweep trial: mean over samples n and positions k of | ||z_nk|| - R | / R, the typical "
                           "deviation of a *single* token's norm. Per position |mean_n ||z_nk|| - R| <= "
                           "mean_n | ||z_nk|| - R | (triangle inequality), so `norm_rel_dev_max` can be smaller "
                           "than `norm_rel_dev_mean`: single norms scatter on both sides of R while their average "
                           "stays near R (spread, not drift)."),
    (r"tf_radial_error", "teacher-forced error on {tf} held-out test images (evaluation info): "
                         "the generator predicts token k from the true tokens < k ({dsteps} sampler steps); error "
                         "e = prediction - true token z; radial part |<e, z/||z||>|, mean over images and "
                         "positions (latent units)."),
    (r"tf_tangential_error", "the part of the teacher-forced error e orthogonal to the true token z, "
                             "||e - <e, z/||z||> z/||z|| ||, mean over images and positions."),
    (r"tf_radial_fraction", "sum of radial^2 / sum of (radial^2 + tangential^2) over images and positions: the "
                            "share of squared teacher-forced error along the token's direction (what a sphere "
                            "removes)."),
    (r"test_accuracy", "accuracy of the in-project classifier on the test split."),
    (r"R", "radius of the token sphere: `tokenizer.radius`, or sqrt(latent_dim) when null; read from the sampling "
           "info (`settings.radius`), else the tokenizer export."),
    (r"eval images", "held-out test images train_vae reconstructed for psnr / ssim (tokenizer info "
                     "`eval_images`)."),
    (r"samples", "generated images scored by evaluate (evaluation info `num_samples`)."),
    (r"projection", "what sampling did to each token after CFG (sampling info `settings.projection`): sphere = "
                    "rescaled to norm R, none = left as is."),
    (r"images/s \(sample\)", "sampled images / (generate s + decode s) (sampling metrics `images_per_s`)."),
    (r"tokens/s \(sample, AR only\)", "generated tokens / generate s (sampling metrics `tokens_per_s`)."),
    (r"generate s", "wall-clock seconds of autoregressive generation of all samples, CFG included."),
    (r"decode s", "wall-clock seconds decoding the generated tokens to images."),
    (r"sampling device", "the device the sample stage ran on (sampling info `device`)."),
    (r"train tokens/s \(train_ar\)", "tokens per second in the generator's training (generator metrics "
                                     "`train_tokens_per_s`)."),
    (r"recon images/s \(train_vae\)", "tokenizer reconstruction throughput at its evaluation (tokenizer metrics "
                                      "`recon_images_per_s`)."),
    (r"generator params", "number of generator parameters (generator info `params`)."),
    (r"train|test", "images of that class in the split (data manifest `class_counts`)."),
    (r"train share", "the class's share of the train split's images."),
)
DEFINITIONS = tuple((re.compile(rf"^(?:{pattern})$"), text) for pattern, text in DEFINITION_PATTERNS)
TABLE_HEADER, HEADING, CODE = re.compile(r"^\|(.*)\|$"), re.compile(r"^#+ (\S+)$"), re.compile(r"`([^`]+)`")


def counted(infos: dict, key: str) -> str:
    """A count the evaluate stage recorded (its info files, one per posterior): the value if every posterior
    agrees, the distinct values joined by " / " if not, "an unrecorded number of" if none has it. A mapping
    (reference images per extractor) counts as its distinct values."""
    values = []
    for info in infos.values():
        value = (info or {}).get(key)
        for v in (value.values() if isinstance(value, dict) else [value]):
            if v is not None and v not in values:
                values.append(v)
    return " / ".join(fmt(v) for v in values) if values else MISSING_COUNT


def definition_context(params, eval_infos: dict) -> dict:
    """The numbers the definitions quote: image counts as the evaluate stage recorded them (its info files),
    settings (subset sizes, neighbours, sampler steps) from params."""
    ev = params.evaluation
    return {"num_real": counted(eval_infos, "reference_images"), "kid": fmt(ev.kid_subset_size),
            "k": fmt(ev.pr_neighbours), "ds": fmt(ev.diagnostic_samples), "dsteps": fmt(ev.diagnostic_steps),
            "tf": counted(eval_infos, "teacher_forced_images"), "drift": f"{DRIFT_TOL:.0%}"}


def canonical(name: str) -> str:
    """A concrete name's entry in the definitions: `norm_rel_dev_none_cfg6` -> NORM_GENERIC, others as is."""
    return NORM_GENERIC if NORM_KEY.match(name) else name


def define(name: str, context: dict) -> str | None:
    """The definition of a quantity the report names, or None for a name with none."""
    for pattern, text in DEFINITIONS:
        if m := pattern.match(canonical(name)):
            tag = m.groupdict().get("T")
            return text.format(**context, T=tag, ext=EXTRACTOR_MODEL.get(tag, f"the `{tag}` extractor"),
                               layer=EXTRACTOR_LAYER.get(tag, "its features"))
    return None


def named_quantities(text: str, context: dict) -> list[str]:
    """Defined names in markdown `text`: table headers (the line above a `|---|` line), headings and
    `code` spans, in order of first appearance (concrete norm keys as NORM_GENERIC)."""
    lines = text.splitlines()
    found: dict[str, None] = {}
    for line, below in zip(lines, [*lines[1:], ""]):
        candidates = CODE.findall(line) + [m[1] for m in (HEADING.match(line),) if m]
        if (header := TABLE_HEADER.match(line)) and below.startswith("|---"):
            candidates += [c.strip() for c in header[1].split("|")]
        found.update((canonical(c), None) for c in candidates if define(c, context))
    return list(found)


def section_definitions(text: str, context: dict) -> list[str]:
    """'## Definitions': the comparison rule, then every quantity named in `text` with its definition."""
    return (["## Definitions", "", COMPARISON_RULE, ""] +
            [f"- `{name}`: {define(name, context)}" for name in named_quantities(text, context)])
