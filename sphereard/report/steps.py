"""The report's "FD vs sampler steps" section from the `steps` stage's outputs (sphereard/eval/steps_study.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd

from sphereard.config import Params
from sphereard.eval.steps_study import STEPS_FILES, steps_file, study_posterior
from sphereard.report.tables import md_table


def section_steps(params: Params, fig_dir: Path) -> list[str]:
    """Heading, the figure, the per-point table and the matched-quality lines; a note when disabled or absent."""
    study = params.steps_study
    head = ["## FD vs sampler steps (steps stage)", ""]
    if not study.enabled:
        return head + ["**Steps study disabled** (`steps_study.enabled: false`)."]
    summary_file, table_file, figure = (steps_file(params, name) for name in ("summary", "table", "figure"))
    if not (summary_file.is_file() and table_file.is_file() and figure.is_file()):
        return head + [f"Absent: `{summary_file}` / `{table_file}` (run `dvc repro steps`)."]
    summary = json.loads(summary_file.read_text())
    matched, fd_key, rates = summary["matched"], summary["fd_key"], summary["rates"]
    name = f"steps_{STEPS_FILES['figure']}"
    shutil.copyfile(figure, fig_dir / name)
    table = pd.read_csv(table_file)
    rows = [[r.series, int(r.steps), int(r.nfe), f"{r.fd_mean:.4g} ± {r.fd_ci:.2g}", f"{r.images_per_s:.3g}"]
            for r in table.itertuples()]
    posterior = study_posterior(params)
    lines = head + [
        f"Generator `{posterior}` (run seed {params.seeds[0]}), {study.num_per_class} images per class per "
        f"point, sampling seeds {study.sampling_seeds}, CFG {params.sampling.cfg_scale:g} "
        f"({params.sampling.cfg_schedule}), fast sampler. Cells: mean ± the 95% t-interval over the seeds; "
        "images/s: generation only (no decoding), median over seeds, on the machine that ran the stage.", "",
        f"![{fd_key} vs sampler steps](figures/{name})", "",
        md_table(["sampler", "steps", "NFE", fd_key, "images/s"], rows), "",
        f"Matched quality: the fewest steps from which on the mean {fd_key} stays <= "
        f"{1 + matched['tolerance']:.2f} x {matched['target_fd']:.4g} ± {matched['target_fd_ci']:.2g} "
        f"({matched['target_sampler']} at {matched['target_steps']} steps). Speed-up over the reference sampler at "
        f"that setting = the implementation ratio {matched['implementation_ratio']:.2f}x (reference "
        f"{rates['reference']:.3g}, fast {rates['fast']:.3g} images/s, one batch each, back to back) x the step "
        "ratio (the fast path's images/s at the matched point over at the target). With 3 seeds the intervals "
        "are wide: a matched point whose interval overlaps the bar is a tie, not a win.", ""]
    for sampler, best in matched["samplers"].items():
        lines.append(f"- {sampler}: " + ("no step count within tolerance" if best is None else
                     f"{best['steps']} steps (NFE {best['nfe']}), "
                     f"{fd_key} {best['fd_mean']:.4g} ± {best['fd_ci']:.2g}, "
                     f"{best['images_per_s']:.3g} images/s, step ratio {best['step_ratio']:.2f}x: "
                     f"**{best['speedup_vs_reference']:.2f}x** the reference"))
    return lines
