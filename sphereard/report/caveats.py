"""The report's "What they do not show": fixed caveats filled in with this run's budget, extractor,
sample count, seeds and class balance (every number read from the stage outputs, or named a setting)."""

from __future__ import annotations

from sphereard.config import Params
from sphereard.eval.names import ADM_FILE_STATS
from sphereard.report.compare import CONFIDENCE, REL_TOL, finite
from sphereard.report.tables import IMBALANCE_RATIO, MISSING_COUNT, collapse, counted, fmt

PAPER_BEST = "1.34 for SphereAR-H on ImageNet 256x256"
IMAGENET = "imagenet_tar"


def seeds_caveat(params: Params, inp) -> str:
    """How many runs the main tables average, and what a difference in them is worth."""
    if len(inp.seeds) == 1:
        return (f"Single seed (run seed {inp.seeds[0]}, sampling.seed {params.sampling.seed + inp.seeds[0]}) and one "
                f"{'imported model' if inp.any_imported() else 'training run'} per tokenizer for the main tables: a "
                f"difference beyond the {REL_TOL:.0%} tolerance may still be noise.")
    return (f"The main tables average {len(inp.seeds)} runs per tokenizer (seeds {', '.join(map(str, inp.seeds))}; "
            "each trains its own tokenizer and generator, encodes, samples and evaluates with its seed): cells are "
            f"mean ± the {CONFIDENCE:.0%} Student t-interval half-width over the runs, and a difference counts only "
            "beyond both the tolerance and the intervals. Figures of single runs (grids, per-run plots) show the "
            f"first run, seed {inp.seeds[0]}.")


def caveats(params: Params, inp) -> list[str]:
    tok, gen, ev = params.tokenizer.train, params.generator.train, inp.metrics["evaluation"]
    has_fid = any(finite(m.get("fid_inception")) for m in ev.values())
    acc = inp.classifier.get("test_accuracy") if inp.classifier else None
    samples = sorted({i["num_samples"] for i in inp.info["evaluation"].values() if i and "num_samples" in i})
    devices = ", ".join(sorted({i["device"] for i in inp.info["sampling"].values() if i and "device" in i})) or \
        "an unrecorded device"
    tok_steps = collapse({p: (m or {}).get("step") for p, m in inp.exports.items()})
    gen_steps = collapse({p: (i or {}).get("steps") for p, i in inp.info["generator"].items()})
    budget = (f"tokenizers trained {tok_steps} steps (batch {tok.batch_size}), generators {gen_steps} steps (batch "
              f"{gen.batch_size}) on {params.data.source} {params.data.image_size}x{params.data.image_size}, "
              f"sampled on {devices}")
    if inp.any_imported():
        epochs = collapse({p: (i or {}).get("epochs") for p, i in inp.info["generator"].items()})
        budget = (f"weights imported, trained by the authors ({epochs} epochs recorded in the generator checkpoint), "
                  f"sampled on {devices}")
    out = [f"Imported weights: {budget}. Every score below measures the released model under this run's "
           "settings; only a run with the paper's protocol (50,000 samples, ADM reference batch, standard "
           "Inception weights) is comparable with the paper's FID."
           if inp.any_imported() else
           f"Small budget: {budget}. The paper trains for hundreds of epochs on ImageNet 256x256; these numbers "
           "test the pipeline and the relative behaviour at this budget, not the paper's results."
           if params.data.source != IMAGENET else f"Budget: {budget}; check it against the paper's training length "
           "before comparing."]
    if any("fd_classifier" in m for m in ev.values()):
        out.append("`fd_classifier` is a Frechet distance in the feature space of the small in-project classifier "
                   f"(test accuracy {fmt(acc)}): it is only as meaningful as that classifier and is not the "
                   f"Inception-feature metric the paper reports (best {PAPER_BEST}); it is not comparable with the "
                   "paper's numbers.")
    adm = any(ADM_FILE_STATS in (i.get("reference_sources") or {}).values() for i in inp.info["evaluation"].values()
              if i)
    reals = (f"the ADM reference batch's whole-dataset statistics (FD) and its "
             f"{counted(inp.info['evaluation'], 'reference_images')} images (KID, precision, recall)" if adm else
             f"{counted(inp.info['evaluation'], 'reference_images')} real images")
    out += [f"Sample sizes: generation metrics from {', '.join(map(fmt, samples)) or MISSING_COUNT} samples per "
            f"tokenizer against {reals}; Frechet distances "
            "are biased upward at small N, so compare only numbers computed with the same N.",
            seeds_caveat(params, inp)]
    if "classifier" in params.evaluation.extractors:
        out.append("`is_classifier` is an Inception-Score analogue on the in-project classifier's logits, not the IS.")
    if inp.classes is not None and len(inp.classes) and inp.classes["train"].min() > 0 and \
            inp.classes["train"].max() / inp.classes["train"].min() > IMBALANCE_RATIO:
        out.append("Class mix: sampling draws the same number of images per class, while the real reference "
                   "images are drawn from the imbalanced train split, so `fd_*`, `kid_*`, precision and recall "
                   "also measure that class-mix mismatch.")
    if has_fid and not (inp.any_imported() and params.data.source == IMAGENET):
        out.append("`fid_inception` uses the standard FID Inception weights, but on this dataset and sample "
                   "count; it is still not the paper's 50k-sample ImageNet FID.")
    if inp.sweep is not None:
        n = inp.sweep["n"].dropna()
        if not len(n):
            out.append("The sweep summary does not record how many seeds each point averages: its differences are "
                       f"judged by the {REL_TOL:.0%} tolerance alone.")
        elif int(n.min()) <= 1:
            out.append("The sweep has 1 trial per point: a single seed, so the CFG curves have no error bars and "
                       f"differences beyond the {REL_TOL:.0%} tolerance may still be noise.")
        else:
            out.append(f"The sweep has {int(n.min())} trial(s) per point: sweep differences count only beyond the "
                       f"{CONFIDENCE:.0%} t-intervals of the means (wide for few seeds).")
    out.append(f"Norm diagnostics use {params.evaluation.diagnostic_samples} samples and "
               f"{params.evaluation.diagnostic_steps} sampler steps per setting.")
    return out
