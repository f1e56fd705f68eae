"""The report's measured sections: what was run, data, reconstruction, generation, the CFG sweep, token
norms, sample grids and timing. Each `section_*` returns markdown lines; every count is read from the
stage outputs (`Inputs`), and a value taken from params instead is labelled as a setting. Sections that
show a figure write it into `fig_dir` (linked as FIGURES_DIR/<name>).
"""

from __future__ import annotations

import os
import platform
from datetime import UTC, datetime
from pathlib import Path

import torch

from sphereard.config import Params
from sphereard.eval.diagnostics import DRIFT_TOL
from sphereard.eval.names import DECODES, LPIPS_KEY, decode_key
from sphereard.latents import META_FILE as LATENT_META
from sphereard.layout import TRAINED_BLOCKS
from sphereard.report.compare import CONFIDENCE
from sphereard.report.figures import plot_norm_overview, plot_split_overview
from sphereard.report.imported import imported_rows, paper_line
from sphereard.report.inputs import Inputs
from sphereard.report.keys import TF_KEYS, generation_keys, norm_devs, recon_fd_keys, recon_value
from sphereard.report.sweep import fixed_settings, sweep_metrics, sweep_table
from sphereard.report.tables import CLASS_TABLE_MAX, class_table, collapse, fmt, md_table
from sphereard.sweep.plots import plot_sweep
from sphereard.tracking import git_commit
from sphereard.utils.device import default_device

FIGURES_DIR, CLASS_COUNTS_FILE = "figures", "class_counts.csv"
RECON_COLUMNS = ("psnr", "ssim")
TIMING_COLUMNS = (("sampling device", "info", "sampling", "device"),
                  ("images/s (sample)", "metrics", "sampling", "images_per_s"),
                  ("tokens/s (sample, AR only)", "metrics", "sampling", "tokens_per_s"),
                  ("generate s", "metrics", "sampling", "generate_s"), ("decode s", "metrics", "sampling", "decode_s"),
                  ("train tokens/s (train_ar)", "metrics", "generator", "train_tokens_per_s"),
                  ("recon images/s (train_vae)", "metrics", "tokenizer", "recon_images_per_s"),
                  ("generator params", "info", "generator", "params"))


def machine() -> str:
    return (f"{platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} CPUs, "
            f"torch {torch.__version__} (report device: {default_device()})")


def data_text(params: Params, inp: Inputs) -> str:
    """The data row: from the manifest (classes, images per split), else the params' source, marked."""
    m = inp.manifest
    if m is None:
        return f"{params.data.source} (setting; data manifest absent: no counts)"
    splits = " / ".join(f"{fmt(info['rows'])} {split}" for split, info in m["splits"].items())
    return (f"{m.get('source', params.data.source)}, {m['image_size']}x{m['image_size']}x{m['channels']}, "
            f"{fmt(m['num_classes'])} classes, {splits} images (data manifest)")


def cache_text(params: Params, inp: Inputs) -> str:
    """The latent-cache row: images cached of the train images and views, from each cache's cache.json."""
    def one(meta: dict) -> str:
        rows, total = meta.get("rows"), meta.get("train_images")
        of = "" if total is None else (" (every train image)" if rows == total else f" of {fmt(total)} train images")
        centre = meta.get("center_views", meta.get("views"))
        flips = {1: "horizontal flips not cached", 2: "horizontal flips cached"}.get(centre, "views n/a")
        crops = f", {meta['crops']} random crops per image" if meta.get("crops") else ""
        return f"{fmt(rows)} images{of}, {flips}{crops}"

    if not any(inp.latents.values()):
        return (f"cache meta absent (`{params.encode.out}/<posterior>/seed<k>/{LATENT_META}`): no count; setting "
                f"`encode.max_images` = {fmt(params.encode.max_images)}")
    return collapse({p: m for p, m in inp.latents.items()}, show=lambda m: one(m)) + " (latent cache meta)"


def sampling_text(params: Params, inp: Inputs) -> str:
    """The sampling row: images, classes and settings from each sampling info file (per tokenizer where they differ)."""
    infos = inp.info["sampling"]
    if not any(infos.values()):
        sp = params.sampling
        return (f"settings {sp.num_per_class}/class, cfg_scale {sp.cfg_scale:g} ({sp.cfg_schedule}), {sp.sampler} "
                f"{sp.steps} steps, projection {sp.projection} (sampling info absent: no counts)")

    def field_(key: str, setting: bool = True) -> str:
        found = {p: (i or {}).get("settings", {}) if setting else (i or {}) for p, i in infos.items()}
        return collapse({p: values.get(key) for p, values in found.items()})

    return (f"{field_('num_images', False)} images = {field_('num_classes', False)} classes x "
            f"{field_('num_per_class')}, cfg_scale {field_('cfg_scale')} ({field_('cfg_schedule')}), "
            f"{field_('sampler')} {field_('steps')} steps, projection {field_('projection')}, seed {field_('seed')} "
            "(sampling info of the first run; run k samples with sampling.seed + k)")


def section_run(params: Params, inp: Inputs) -> list[str]:
    tok, gen = params.tokenizer, params.generator
    steps = collapse({p: (m or {}).get("step") for p, m in inp.exports.items()})
    gen_steps = collapse({p: (i or {}).get("steps") for p, i in inp.info["generator"].items()})
    tokens = collapse({p: (i or {}).get("tokens_seen") for p, i in inp.info["generator"].items()})
    classifier_steps = (inp.classifier_info or {}).get("steps")
    runs = ", ".join(map(str, params.seeds))
    rows = [("profile", params.profile),
            ("seeds", f"{runs}: one run per seed (tokenizer, latents, generator, samples, evaluation; sampling seed "
                      f"= sampling.seed {params.sampling.seed} + run seed); shared stages seed {params.seed}" +
             (f". Every per-tokenizer number below is the mean over these n = {len(params.seeds)} runs ± the "
              "half-width of its 95% Student t-interval (t(0.975, n - 1) * std / sqrt(n))"
              if len(params.seeds) > 1 else "")),
            ("data", data_text(params, inp)),
            ("tokenizers", f"preset {tok.preset}, posteriors {', '.join(inp.posteriors)}, trained {steps} steps "
                           f"(export meta) at batch {tok.train.batch_size}"),
            ("latent cache", cache_text(params, inp)),
            ("generators", f"preset {collapse({p: (i or {}).get('preset') for p, i in inp.info['generator'].items()})}"
                           f", trained {gen_steps} steps, {tokens} tokens seen (generator info) at batch "
                           f"{gen.train.batch_size}"),
            ("sampling", sampling_text(params, inp)),
            ("classifier", f"trained {fmt(classifier_steps)} steps (classifier info)" if classifier_steps is not None
             else f"setting {params.classifier.steps} steps (classifier info absent)"),
            ("extractors", ", ".join(params.evaluation.extractors)),
            ("sampling device", collapse({p: (i or {}).get("device") for p, i in inp.info["sampling"].items()})),
            ("report machine", machine()),
            ("git commit", git_commit(".") or "unknown"),
            ("generated", datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"))]
    if inp.any_imported():  # the pretrained DAG: sources replace the training rows, no latent cache
        replaced = dict(imported_rows(params, inp))
        rows = [(k, replaced.get(k, v)) for k, v in rows if k != "latent cache"]
    return ["## What was run", "", md_table(["item", "value"], rows)]


def section_data(inp: Inputs, out_dir: Path) -> list[str]:
    out = ["## Data", ""]
    if inp.classes is None:
        return out + ["Data manifest absent: images per class unknown."]
    classes = inp.classes.assign(share=inp.classes["train"] / inp.classes["train"].sum())
    classes.rename(columns={"share": "train share"}).to_csv(out_dir / CLASS_COUNTS_FILE, index=False)
    shown = class_table(classes)
    rows = [[int(r["class"]), r["name"], int(r["train"]), r["test"], f"{r['share']:.1%}"] for _, r in shown.iterrows()]
    note = ("" if len(shown) == len(classes) else
            f" ({len(classes)} classes: the {CLASS_TABLE_MAX // 2} largest and smallest by train count are listed)")
    return out + [f"Images per class in the prepared data (data manifest `class_counts`){note}; all classes in "
                  f"[{CLASS_COUNTS_FILE}]({CLASS_COUNTS_FILE}).", "",
                  md_table(["class", "name", "train", "test", "train share"], rows)]


def recon_columns(inp: Inputs) -> list[str]:
    """The reconstruction table's metric columns: psnr, ssim, rfd_<tag>s and (where measured) lpips_vgg, each
    on decode(mode) and decode(sample) (`<metric>_<decode>`)."""
    tok, ev = inp.metrics["tokenizer"], inp.metrics["evaluation"]
    lpips = any(recon_value(tok[p], ev[p], decode_key(LPIPS_KEY, d)) is not None
                for p in inp.posteriors for d in DECODES)
    return [decode_key(k, d) for k in (*RECON_COLUMNS, *recon_fd_keys(ev), *([LPIPS_KEY] if lpips else []))
            for d in DECODES]


def section_recon(inp: Inputs) -> list[str]:
    tok, ev = inp.metrics["tokenizer"], inp.metrics["evaluation"]
    columns = recon_columns(inp)
    rows = [[p, *[recon_value(tok[p], ev[p], k) for k in columns],
             inp.get("info", "evaluation" if inp.imported.get(p) else "tokenizer", p,
                     "recon_images" if inp.imported.get(p) else "eval_images")] for p in inp.posteriors]
    source = "`evaluate` (imported tokenizer)" if inp.any_imported() else "`train_vae`"
    notes = ["", "Each metric on two decodes of the same held-out images: `_mode` = decode(posterior mode), "
                 "`_sample` = decode(one posterior sample per token), the latents the generator learns; the "
                 f"findings rank tokenizers on `_sample`. PSNR / SSIM from {source}; `rfd_*` from `evaluate` in that "
                 "extractor's feature space; `eval images` from the tokenizer info."]
    if not any(c.startswith(LPIPS_KEY) for c in columns):
        notes.append(f"`{LPIPS_KEY}` absent: LPIPS weights were not configured (`lpips_weights_path`).")
    return ["## Reconstruction (tokenizers)", "", md_table(["tokenizer", *columns, "eval images"], rows), *notes]


def section_generation(params: Params, inp: Inputs) -> list[str]:
    ev = inp.metrics["evaluation"]
    keys = generation_keys(ev)
    rows = [[p, *[ev[p].get(k) for k in keys], inp.get("info", "evaluation", p, "num_samples"),
             (inp.get("info", "sampling", p, "settings") or {}).get("projection")] for p in inp.posteriors]
    acc = (f"in-project classifier `test_accuracy`: {fmt(inp.classifier['test_accuracy'])}"
           if inp.classifier and "test_accuracy" in inp.classifier else "classifier metrics absent")
    table = md_table(["tokenizer", *keys, "samples", "projection"], rows)
    is_note = (" `is_classifier` is an Inception-Score analogue computed from the in-project classifier's logits, "
               "not the Inception Score." if "classifier" in params.evaluation.extractors else "")
    out = ["## Generation (one generator per tokenizer)", "", table, "",
           f"`samples` from the evaluation info, `projection` from the sampling info (settings in \"What was run\"); "
           f"{acc}.{is_note}"]
    return out + (["", *paper_line(params, inp)] if inp.any_imported() else [])


def section_sweep(inp: Inputs, fig_dir: Path) -> list[str]:
    out = ["## Metric vs CFG scale (sweep)", ""]
    if inp.sweep is None:
        return out + [inp.sweep_note]
    fixed = fixed_settings(inp.sweep)
    out += [inp.sweep_note + (f" Settings per tokenizer: {fixed}." if fixed else "") +
            f" Table cells and figure bands: mean ± the {CONFIDENCE:.0%} "
            "t-interval of the mean (none for n = 1).", ""]
    for metric in sweep_metrics(inp.sweep):
        name = f"sweep_{metric}_vs_cfg.png"
        plot_sweep(inp.sweep, metric, fig_dir / name)
        out += [f"### {metric}", "", f"![{metric} vs CFG scale]({FIGURES_DIR}/{name})", "",
                sweep_table(inp.sweep, metric), ""]
    return out


def section_norms(inp: Inputs, fig_dir: Path) -> list[str]:
    ev = inp.metrics["evaluation"]
    out = ["## Token norms and teacher-forced error split", ""]
    devs = {p: norm_devs(ev[p]) for p in inp.posteriors}
    cols = sorted({k for d in devs.values() for k in d}, key=lambda k: (k[0], k[1]))
    radii = {p: inp.radius(p) for p in inp.posteriors}
    if cols:
        out += [f"`norm_rel_dev_<projection>_cfg<w>` per tokenizer (column: projection and CFG scale w), radius `R` "
                f"{collapse(radii)}; drift threshold {DRIFT_TOL:.0%}:", "",
                md_table(["tokenizer", *[f"{proj} w={w:g}" for proj, w in cols]],
                         [[p, *[devs[p].get(c) for c in cols]] for p in inp.posteriors]), ""]
    if inp.frames["norm_csv"]:
        plot_norm_overview(inp.frames["norm_csv"], radii, fig_dir / "norm_trajectories.png")
        out += [f"![token norm along the sequence]({FIGURES_DIR}/norm_trajectories.png)", "",
                "Mean pre-projection token norm per position; dotted line: `R`; dashed: sampled without projection; "
                "more opaque: higher CFG scale.", ""]
    tf_keys = [k for k in TF_KEYS if any(k in (ev[p] or {}) for p in inp.posteriors)]
    if tf_keys:
        out += ["Teacher-forced prediction error on held-out images, split into radial and tangential parts, next "
                "to its floor (the same split between two independent posterior samples of a token: what a model "
                "predicting exact posterior samples scores) and the excess over it; contexts and targets are "
                "posterior samples, as in training:", "",
                md_table(["tokenizer", *tf_keys], [[p, *[(ev[p] or {}).get(k) for k in tf_keys]]
                                                   for p in inp.posteriors]), ""]
    if inp.frames["split_csv"]:
        plot_split_overview(inp.frames["split_csv"], fig_dir / "error_split.png")
        out += [f"![teacher-forced error split]({FIGURES_DIR}/error_split.png)", "",
                "Mean teacher-forced error per position; solid: error, dashed: its floor; faint: radial.", ""]
    links = [f"[{p} {kind}]({FIGURES_DIR}/{kind}_{p}.png)" for p, f in inp.files.items()
             for kind, key in (("norm_trajectory", "norm_png"), ("error_split", "split_png")) if key in f]
    return out + (["Per-tokenizer figures from `evaluate`: " + ", ".join(links)] if links else [])


def section_grids(inp: Inputs) -> list[str]:
    out = ["## Samples and reconstructions", ""]
    for p in inp.posteriors:
        for kind, key in (("samples", "overview"), ("reconstructions", "reconstructions"))[:1 if inp.imported.get(p)
                                                                                          else 2]:
            shown = f"![{p} {kind}]({FIGURES_DIR}/{kind}_{p}.png)" if key in inp.files[p] else "(absent)"
            out += [f"**{p}, {kind}** (" + ("one row per class, class name left of the row" if kind == "samples"
                                            else "top: inputs, bottom: decode(posterior mode)") + f"): {shown}", ""]
    return out


def section_timing(inp: Inputs) -> list[str]:
    columns = [c for c in TIMING_COLUMNS if not (inp.any_imported() and c[1] == "metrics" and c[2] in TRAINED_BLOCKS)]
    rows = [[p, *[inp.get(kind, block, p, key) for _, kind, block, key in columns]] for p in inp.posteriors]
    return ["## Timing", "", md_table(["tokenizer", *[c[0] for c in columns]], rows), "",
            "Sampling throughput includes CFG (2 forward passes per token when w != 1); images/s includes decoding."]
