"""The definition of every quantity the report names (`section_definitions`).

A quantity is named by a table header, a heading or a `code` span; `named_quantities` finds them in
the report text in order of first appearance and `define` looks each up in DEFINITION_PATTERNS (a
name regex and its text). Concrete norm keys (`norm_rel_dev_none_cfg6`) share one generic entry.
Numbers the definitions quote come from `definition_context`: image counts as the evaluate stage
recorded them, other settings from params.
"""

from __future__ import annotations

import re

from sphereard.eval.diagnostics import DRIFT_TOL
from sphereard.eval.names import ADM_FILE_STATS
from sphereard.report.compare import COMPARISON_RULE
from sphereard.report.keys import DECODES, NORM_GENERIC, NORM_KEY
from sphereard.report.tables import counted, fmt
from sphereard.train.convergence import PLATEAU_TOL

# FD's reals when the reference stage took an ADM batch's own statistics (`sphereard.eval.adm.adm_ref_stats`)
ADM_REF_TEXT = ("the ADM reference batch's own mu / sigma, statistics of the whole training set (`evaluation."
                "adm_reference`); its images serve KID, precision and recall only")

EXTRACTOR_MODEL = {"classifier": "the in-project classifier of `train_classifier`",
                   "effnet": "ImageNet EfficientNet-Lite0", "inception": "Inception-v3 with the standard FID weights",
                   "inception_unverified": "Inception-v3 with weights that are not the verified FID ones"}
EXTRACTOR_LAYER = {"classifier": "penultimate-layer features", "effnet": "1280 pooled head features",
                   "inception": "2048 pool features", "inception_unverified": "2048 pool features"}
TAGGED = r"(?P<T>[a-z0-9_]+)"
DECODE = rf"(?P<D>{'|'.join(DECODES)})"
PART = r"(?P<P>radial|tangential)"
DECODE_TEXT = {"mode": "on decode(posterior mode): the decoder applied to the posterior's mode (deterministic)",
               "sample": "on decode(posterior sample): the decoder applied to one posterior sample per token, drawn "
                         "from the run's seed ({seed}) (the latents the generator learns; the findings rank on it)"}
SPACE = "in the feature space of {ext} ({layer})"
DEFINITION_PATTERNS = (  # (name regex, text); {T} {ext} {layer}: the extractor; {decode}: DECODE_TEXT; {part}: PART;
    # other fields: `definition_context`
    (rf"psnr_{DECODE}", "peak signal-to-noise ratio (dB) of reconstructions vs the originals, 10 log10(1 / MSE) per "
                        "image on [0, 1] pixel values, mean over the `eval images` held-out test images (train_vae), "
                        "{decode}; higher is better."),
    (rf"ssim_{DECODE}", "structural similarity of reconstructions vs the originals (data range 1), mean over the "
                        "`eval images`, {decode}; 1 = identical."),
    (rf"lpips_vgg_{DECODE}", "LPIPS (VGG) perceptual distance of reconstructions vs the originals, mean over "
                             "images, {decode}; lower is better."),
    (rf"rfi?d_{TAGGED}_{DECODE}", "reconstruction Frechet distance between Gaussian fits of the reconstructions and "
                                  "of the same `eval images` held-out originals " + SPACE + ", {decode}; lower is "
                                  "better."),
    (rf"fi?d_{TAGGED}", "Frechet distance ||mu_g - mu_r||^2 + tr(S_g + S_r - 2 (S_g S_r)^(1/2)) between Gaussian "
                        "fits of the generated `samples` (g) and of the reals (r: {ref}) " + SPACE + "; lower is "
                        "better; biased upward at small sample counts."),
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
    (r"plateaued", "train_vae's convergence verdict: yes when the smoothed KL and reconstruction-loss curves "
                   "each changed by less than {plateau} of their final value over the second half of training "
                   "(`<curve>_second_half_change`; sphereard/train/convergence.py)."),
    (r"(kl|recon)_second_half_change", "largest |s(t) - s(T)| / |s(T)| over the logged steps t in the second half "
                                       "of training, s = the training curve (window means every `log_every` "
                                       "steps) smoothed by a trailing moving average over 10% of its points, "
                                       "T = the last step; below {plateau} counts as a plateau."),
    (r"recon_loglog_slope", "least-squares slope of log(recon) on log(step) over the second half of each run's "
                            "`history.csv`, averaged over the runs (the report computes it); a power law step^-a has "
                            "slope -a and a second-half change of 2^a - 1 at every training length."),
    (r"kl_final", "KL divergence of the posterior to the prior in nats per token (averaged over tokens, summed "
                  "over dimensions), smoothed training value at the last step."),
    (r"recon_final", "reconstruction loss (`tokenizer.train.recon_loss`, on [-1, 1] pixels) of posterior-sample "
                     "decodes, smoothed training value at the last step."),
    (r"kappa_(mean|p05|p95)_final", "spherical posterior: concentration kappa of the Power Spherical posterior over "
                                    "a training batch's tokens (mean, 5th or 95th percentile), smoothed value at "
                                    "the last step; higher = less posterior noise."),
    (r"cos_sample_mode_final", "mean cosine between a posterior sample and the posterior mode of the same token, "
                               "over a training batch, smoothed value at the last step: 1 = the generator sees "
                               "the mode, near 0 = mostly posterior noise."),
    (r"std_(mean|min_dim|max_dim)_final", "Gaussian posteriors: posterior std per latent dimension (mean over a "
                                          "batch's tokens), then its mean over dimensions or the smallest / "
                                          "largest dimension's; smoothed value at the last step."),
    (r"norm_rel_dev_max", "sweep trial: max over token positions k of |mean_n ||z_nk|| - R| / R (the formula of `"
                          + NORM_GENERIC + "` at the trial's settings, `sweep.num_per_class` samples per class): "
                          "drift of the *average* norm."),
    (r"norm_rel_dev_mean", "sweep trial: mean over samples n and positions k of | ||z_nk|| - R | / R, the typical "
                           "deviation of a *single* token's norm. Per position |mean_n ||z_nk|| - R| <= "
                           "mean_n | ||z_nk|| - R | (triangle inequality), so `norm_rel_dev_max` can be smaller "
                           "than `norm_rel_dev_mean`: single norms scatter on both sides of R while their average "
                           "stays near R (spread, not drift)."),
    (r"tf_radial_error", "teacher-forced error on {tf} held-out test images (evaluation info), measured as training "
                         "sees it: the generator predicts token k from a posterior sample of the tokens < k ({dsteps} "
                         "sampler steps, no CFG) and is scored against an independent posterior sample z of token k "
                         "(samples drawn from the run's seed, {seed}); error e = prediction - z; radial part "
                         "|<e, z/||z||>|, mean over images and positions (latent units)."),
    (r"tf_tangential_error", "the part of the teacher-forced error e orthogonal to the target sample z, "
                             "||e - <e, z/||z||> z/||z|| ||, mean over images and positions."),
    (rf"tf_{PART}_floor", "the floor of `tf_{part}_error`: the same {part} split of z_a - z_b w.r.t. z_b for two "
                          "further independent posterior samples z_a, z_b of each token, mean over images and "
                          "positions; what a generator that predicts exact posterior samples scores, from the "
                          "posterior's spread alone."),
    (rf"tf_{PART}_excess", "`tf_{part}_error` - `tf_{part}_floor`: the {part} teacher-forced error the model adds "
                           "over its floor (0 = as good as exact posterior samples)."),
    (r"tf_radial_fraction", "sum of radial^2 / sum of (radial^2 + tangential^2) of the teacher-forced error over "
                            "images and positions (posterior-sample targets, floor included): the share of squared "
                            "error along the token's direction (what a sphere removes)."),
    (r"test_accuracy", "accuracy of the in-project classifier on the test split."),
    (r"R", "radius of the token sphere: `tokenizer.radius`, or sqrt(latent_dim) when null; read from the sampling "
           "info (`settings.radius`), else the tokenizer export."),
    (r"eval images", "held-out test images train_vae reconstructed for psnr / ssim on both decodes (tokenizer "
                     "info `eval_images`)."),
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


def definition_context(params, eval_infos: dict) -> dict:
    """The numbers the definitions quote: image counts as the evaluate stage recorded them (its info files),
    settings (subset sizes, neighbours, sampler steps) from params."""
    ev = params.evaluation
    adm = {tag for info in eval_infos.values() if info
           for tag, source in (info.get("reference_sources") or {}).items() if source == ADM_FILE_STATS}
    return {"num_real": counted(eval_infos, "reference_images"), "kid": fmt(ev.kid_subset_size),
            "fd_ref_images": f"{counted(eval_infos, 'reference_images')} real reference images, the `reference` "
                             "stage's count",
            "fd_refs": {tag: ADM_REF_TEXT for tag in adm},
            "k": fmt(ev.pr_neighbours), "ds": fmt(ev.diagnostic_samples), "dsteps": fmt(ev.diagnostic_steps),
            "tf": counted(eval_infos, "teacher_forced_images"), "drift": f"{DRIFT_TOL:.0%}",
            "seed": "seeds " + ", ".join(map(str, params.seeds)),
            "plateau": f"{PLATEAU_TOL:.0%}"}


def canonical(name: str) -> str:
    """A concrete name's entry in the definitions: `norm_rel_dev_none_cfg6` -> NORM_GENERIC, others as is."""
    return NORM_GENERIC if NORM_KEY.match(name) else name


def define(name: str, context: dict) -> str | None:
    """The definition of a quantity the report names, or None for a name with none."""
    for pattern, text in DEFINITIONS:
        if m := pattern.match(canonical(name)):
            tag, decode = m.groupdict().get("T"), m.groupdict().get("D")
            ref = context["fd_refs"].get(tag, context["fd_ref_images"])
            return text.format(**context, T=tag, ref=ref, ext=EXTRACTOR_MODEL.get(tag, f"the `{tag}` extractor"),
                               layer=EXTRACTOR_LAYER.get(tag, "its features"), part=m.groupdict().get("P"),
                               decode=DECODE_TEXT[decode].format(**context) if decode else None)
    return None


def named_quantities(text: str, context: dict) -> list[str]:
    """Defined names in markdown `text`: table headers (the line above a `|---|` line), headings and
    `code` spans, in order of first appearance (concrete norm keys as NORM_GENERIC)."""
    lines = text.splitlines()
    found: dict[str, None] = {}
    for line, below in zip(lines, [*lines[1:], ""], strict=True):
        candidates = CODE.findall(line) + [m[1] for m in (HEADING.match(line),) if m]
        if (header := TABLE_HEADER.match(line)) and below.startswith("|---"):
            candidates += [c.strip() for c in header[1].split("|")]
        found.update((canonical(c), None) for c in candidates if define(c, context))
    return list(found)


def section_definitions(text: str, context: dict) -> list[str]:
    """'## Definitions': the comparison rule, then every quantity named in `text` with its definition."""
    return (["## Definitions", "", COMPARISON_RULE, ""] +
            [f"- `{name}`: {define(name, context)}" for name in named_quantities(text, context)])
