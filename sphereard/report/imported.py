"""The report's lines for imported weights (the pretrained DAG, `sphereard.convert.stage`): where the
weights came from, and the paper's number to compare with. A posterior is imported when its tokenizer
export's model.json names a `source` (`Inputs.imported`)."""

from __future__ import annotations

from sphereard.config import Params
from sphereard.eval.names import ADM_FILE_STATS
from sphereard.report.tables import collapse, fmt

# The released generators' FID on ImageNet 256 (50,000 samples, ADM reference batch; arXiv 2509.24335 Table 2)
PAPER_FID = {"SphereAR-B": 1.92, "SphereAR-L": 1.54, "SphereAR-H": 1.34}
PAPER_SAMPLES = 50_000
PAPER_CFG = {"SphereAR-B": 4.5, "SphereAR-L": 4.6, "SphereAR-H": 4.5}  # the released models' CFG scales
# the paper's sampler (Sec. 4.1; official sampling defaults), as the sample stage's info records it
PAPER_SAMPLING = {"cfg_schedule": "linear", "sampler": "euler_maruyama", "steps": 100, "final_step": 0.04,
                  "projection": "sphere", "cfg_unit_weight": "separate"}


def source_text(info: dict | None) -> str:
    """`file` (entry, N epochs, sha256 prefix, P params) of one import info file."""
    if not info:
        return "import info absent"
    return (f"{info.get('source', 'n/a')}, {fmt(info.get('epochs'))} epochs, sha256 {str(info.get('sha256'))[:12]}, "
            f"{fmt(info.get('params'))} parameters")


def imported_rows(params: Params, inp) -> list[tuple[str, str]]:
    """'What was run' rows replacing the training ones: the tokenizer and generator sources."""
    tok = collapse({p: source_text(i) for p, i in inp.info["tokenizer"].items()})
    gen = collapse({p: source_text(i) for p, i in inp.info["generator"].items()})
    return [("tokenizers", f"preset {params.tokenizer.preset}, posteriors {', '.join(inp.posteriors)}, "
                           f"imported (not trained) from {tok} (import info)"),
            ("generators", f"preset {params.generator.preset}, imported (not trained) from {gen} (import info)"),
            ("classifier", "none (the pretrained DAG trains nothing)")]


def paper_fid(preset: str) -> float | None:
    return PAPER_FID.get(preset)


def protocol_differences(params: Params, inp) -> list[str]:
    """How this run differs from the paper's evaluation of the imported preset (empty: the same protocol):
    the sampling settings it recorded, the sample count, FD against the ADM batch's own statistics with the
    verified Inception weights, and the EMA weights imported."""
    wanted = {**PAPER_SAMPLING, "cfg_scale": PAPER_CFG[params.generator.preset]}
    out = []
    for p in inp.posteriors:
        settings = (inp.info["sampling"].get(p) or {}).get("settings") or {}
        out += [f"{key} {fmt(settings.get(key))} (paper {fmt(value)})" for key, value in wanted.items()
                if settings.get(key) != value]
        info = inp.info["evaluation"].get(p) or {}
        if info.get("num_samples") != PAPER_SAMPLES:
            out.append(f"{fmt(info.get('num_samples'))} samples (paper {PAPER_SAMPLES:,})")
        if (info.get("reference_sources") or {}).get("inception") != ADM_FILE_STATS:
            out.append("FD not against the ADM batch's own statistics with the verified Inception weights")
        if "'ema'" not in str((inp.info["generator"].get(p) or {}).get("source", "")):
            out.append("generator weights other than the released EMA")
    return list(dict.fromkeys(out))


def paper_line(params: Params, inp) -> list[str]:
    """The paper's FID for the imported preset, and whether this run used the paper's protocol."""
    paper = paper_fid(params.generator.preset)
    if paper is None:
        return [f"No published FID for generator preset {params.generator.preset!r} (the paper reports "
                f"{', '.join(f'{k} {v}' for k, v in PAPER_FID.items())})."]
    differences = protocol_differences(params, inp)
    if not differences:
        fid = collapse({p: (m or {}).get("fid_inception") for p, m in inp.metrics["evaluation"].items()})
        return [f"Paper: FID {paper} for {params.generator.preset} (arXiv 2509.24335 Table 2); this run: "
                f"`fid_inception` {fid} with the same protocol ({PAPER_SAMPLES:,} samples, the paper's sampling "
                "settings, FD against the ADM reference batch's statistics, standard Inception weights)."]
    return [f"Paper: FID {paper} for {params.generator.preset} (arXiv 2509.24335 Table 2). This run differs from "
            f"that protocol ({'; '.join(differences)}), so its numbers are not comparable with it."]
