"""The report's lines for imported weights (the pretrained DAG, `sphereard.convert.stage`): where the
weights came from, and the paper's number to compare with. A posterior is imported when its tokenizer
export's model.json names a `source` (`Inputs.imported`)."""

from __future__ import annotations

from sphereard.config import Params
from sphereard.report.tables import collapse, fmt

# The released generators' FID on ImageNet 256 (50,000 samples, ADM reference batch; arXiv 2509.24335 Table 2)
PAPER_FID = {"SphereAR-B": 1.92, "SphereAR-L": 1.54, "SphereAR-H": 1.34}
PAPER_SAMPLES = 50_000


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


def paper_line(params: Params, inp) -> list[str]:
    """The paper's FID for the imported preset, and whether this run used the paper's protocol."""
    paper = paper_fid(params.generator.preset)
    if paper is None:
        return [f"No published FID for generator preset {params.generator.preset!r} (the paper reports "
                f"{', '.join(f'{k} {v}' for k, v in PAPER_FID.items())})."]
    samples = {i.get("num_samples") for i in inp.info["evaluation"].values() if i}
    ours = [m.get("fid_inception") for m in inp.metrics["evaluation"].values() if m]
    protocol = (samples == {PAPER_SAMPLES} and params.evaluation.adm_reference is not None
                and any(v is not None for v in ours))
    if protocol:
        fid = collapse({p: (m or {}).get("fid_inception") for p, m in inp.metrics["evaluation"].items()})
        return [f"Paper: FID {paper} for {params.generator.preset} (arXiv 2509.24335 Table 2); this run: "
                f"`fid_inception` {fid} with the same protocol ({PAPER_SAMPLES:,} samples, ADM reference batch, "
                "standard Inception weights)."]
    return [f"Paper: FID {paper} for {params.generator.preset} with {PAPER_SAMPLES:,} samples against the ADM "
            "reference batch and the standard Inception weights; this run does not use that protocol "
            f"(samples: {', '.join(map(fmt, sorted(s for s in samples if s is not None))) or 'n/a'}; "
            f"`fid_inception` {'present' if any(v is not None for v in ours) else 'absent'}), so its numbers are not "
            "comparable with it."]
