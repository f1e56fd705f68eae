"""Where the stages' small result files live, from params: the one place that names them.

Per-run stages (train_vae, encode, train_ar, sample, evaluate) run once per posterior and seed of
`seeds` (a DVC matrix); `<run>` below is `<posterior>/seed<k>` with k = `params.seed`, the seed of the
params a run sees (`Params.for_run`). Two kinds of file per stage run (a "block" is the params block
the stage belongs to):
- **metrics** `<metrics_dir>/<block>/<run>.json` (classifier: `<metrics_dir>/classifier.json`):
  measured numbers only (flat `name -> float`), the files `dvc metrics show` and `dvc exp show`
  read. `metrics_dir` is git-tracked (DVC `cache: false`), so each `dvc exp run` commits its own.
- **info** `<block.out>/<run>/info.json` (classifier: `<classifier.out>/info.json`): the settings
  and counts behind those numbers (device, precision, number of images, resolved projection, ...),
  next to the stage's large outputs.

Large outputs stay under each block's `out`, one folder per run (`<block.out>/<run>/`):
  tokenizer   ckpt/ (resumable checkpoints), model/ (EMA export), reconstructions.png
  encode      the latent cache itself (sphereard/latents.py)
  generator   ckpt/, model/
  sampling    samples.npz, grids/ (class_XX.png, overview.png)
  evaluation  EVALUATION_FILES (plots and their CSVs); reference/<extractor>.npz (not per posterior)
  classifier  model/ (not per posterior)
  sweep       results.csv, summary.csv, fd_vs_cfg.csv, plots/, trials/<trial name>/ (a trial's
              TRIAL_FILES) and models/<model name>/ (not per posterior; what training trials train:
              stage outputs under TRIAL_OUTPUTS and TRIAL_METRICS_DIR, MODEL_FILES, shared by the
              trials that differ only in sampling settings)
Stages, the sweep and the library ask these functions instead of joining paths.
"""

from __future__ import annotations

import json
from pathlib import Path

from sphereard.config import Params
from sphereard.utils.io import atomic_write_text

METRICS_BLOCKS = ("tokenizer", "generator", "sampling", "evaluation", "classifier")
TRAINED_BLOCKS = ("tokenizer", "generator")  # blocks whose stages train a model: ckpt/ and model/
INFO_FILE = "info.json"
CKPT_DIR, MODEL_DIR = "ckpt", "model"
SAMPLES_FILE, GRIDS_DIR, OVERVIEW_FILE = "samples.npz", "grids", "overview.png"
RECONSTRUCTIONS_FILE = "reconstructions.png"
HISTORY_FILE = "history.csv"
EVALUATION_FILES = ("norm_trajectory.png", "norm_trajectory.csv", "error_split.png", "error_split.csv")
REFERENCE_DIR, TRIALS_DIR, SWEEP_MODELS_DIR = "reference", "trials", "models"
SWEEP_RESULTS_FILE, SWEEP_SUMMARY_FILE, SWEEP_FD_PLOT_FILE = "results.csv", "summary.csv", "fd_vs_cfg.csv"
SWEEP_PLOTS_DIR = "plots"
# a trial's own files: its metrics, its sample grid
TRIAL_FILES = {"metrics": "metrics.json", "grid": "samples.png"}
# a sweep model's own files: its AR segment reports (asha), its training settings
MODEL_FILES = {"reports": "ar_reports.json", "train_config": "train_config.json"}
# a training trial runs the stages with each block's `out` (and metrics_dir) moved into its trial dir
TRIAL_OUTPUTS = {"tokenizer": "tokenizer", "encode": "latents", "generator": "generator"}
TRIAL_METRICS_DIR = "metrics"


RUN_DIR_PREFIX = "seed"  # a run's folder under its posterior: seed<k>


def run_name(params: Params, posterior: str) -> str:
    """`spherical/seed0`: the run `params` belong to (`Params.for_run`), as a relative path."""
    return f"{posterior}/{RUN_DIR_PREFIX}{params.seed}"


def mlflow_run(params: Params, prefix: str, posterior: str, stage: str) -> tuple[str, dict[str, str]]:
    """(MLflow run name `<prefix>-<posterior>-seed<k>`, tags stage / posterior / seed / profile) of one
    per-run stage's run."""
    return (f"{prefix}-{posterior}-{RUN_DIR_PREFIX}{params.seed}",
            {"stage": stage, "posterior": posterior, "seed": str(params.seed), "profile": params.profile})


def _check(block: str, posterior: str | None) -> None:
    assert block in METRICS_BLOCKS, f"block must be one of {METRICS_BLOCKS}, got {block!r}"
    assert (posterior is None) == (block == "classifier"), \
        "the classifier has one metrics file; every other block has one per posterior"


def metrics_file(params: Params, block: str, posterior: str | None = None) -> Path:
    """The git-tracked metrics JSON of one stage run (`block` in METRICS_BLOCKS)."""
    _check(block, posterior)
    root = Path(params.metrics_dir)
    return root / "classifier.json" if posterior is None else root / block / f"{run_name(params, posterior)}.json"


def info_file(params: Params, block: str, posterior: str | None = None) -> Path:
    """The settings/counts JSON of one stage run, under the block's `out`."""
    _check(block, posterior)
    out = Path(getattr(params, block).out)
    return out / INFO_FILE if posterior is None else out / run_name(params, posterior) / INFO_FILE


def trained_dir(params: Params, block: str, posterior: str) -> Path:
    """`train_vae@posterior`'s (block `tokenizer`) or `train_ar@posterior`'s (block `generator`) folder:
    ckpt/, model/, info.json (and the tokenizer's reconstructions.png)."""
    assert block in TRAINED_BLOCKS, f"block must be one of {TRAINED_BLOCKS}, got {block!r}"
    return Path(getattr(params, block).out) / run_name(params, posterior)


def checkpoint_dir(params: Params, block: str, posterior: str) -> Path:
    """A trained model's resumable checkpoints (DVC `persist: true`)."""
    return trained_dir(params, block, posterior) / CKPT_DIR


def export_dir(params: Params, block: str, posterior: str) -> Path:
    """A trained model's export (`model/`: EMA or raw safetensors + model.json; sphereard/export.py)."""
    return trained_dir(params, block, posterior) / MODEL_DIR


def reconstructions_file(params: Params, posterior: str) -> Path:
    """`train_vae`'s input/reconstruction grid PNG."""
    return trained_dir(params, "tokenizer", posterior) / RECONSTRUCTIONS_FILE


def history_file(params: Params, posterior: str) -> Path:
    """`train_vae`'s logged training curves (CSV: step, kl, recon, posterior statistics, ...)."""
    return trained_dir(params, "tokenizer", posterior) / HISTORY_FILE


def latent_cache_dir(params: Params, posterior: str) -> Path:
    """`encode@posterior`'s latent cache (latents.parquet + its meta; sphereard/latents.py)."""
    return Path(params.encode.out) / run_name(params, posterior)


def samples_dir(params: Params, posterior: str) -> Path:
    """`sample@posterior`'s folder: samples.npz, grids/, info.json."""
    return Path(params.sampling.out) / run_name(params, posterior)


def samples_file(params: Params, posterior: str) -> Path:
    """The ADM-layout samples archive (sphereard/ar/sample_set.py)."""
    return samples_dir(params, posterior) / SAMPLES_FILE


def grids_dir(params: Params, posterior: str) -> Path:
    """The per-class sample grids (class_XX.png, overview.png)."""
    return samples_dir(params, posterior) / GRIDS_DIR


def overview_file(params: Params, posterior: str) -> Path:
    """The one-row-per-class sample overview (sphereard/ar/sample_set.py)."""
    return grids_dir(params, posterior) / OVERVIEW_FILE


def evaluation_dir(params: Params, posterior: str) -> Path:
    """`evaluate@posterior`'s folder: info.json and EVALUATION_FILES."""
    return Path(params.evaluation.out) / run_name(params, posterior)


def evaluation_file(params: Params, posterior: str, name: str) -> Path:
    """One of `evaluate`'s plots or CSVs (`name` in EVALUATION_FILES)."""
    assert name in EVALUATION_FILES, f"name must be one of {EVALUATION_FILES}, got {name!r}"
    return evaluation_dir(params, posterior) / name


def reference_dir(params: Params) -> Path:
    """`reference`'s folder: one statistics file per feature extractor."""
    return Path(params.evaluation.out) / REFERENCE_DIR


def reference_file(params: Params, extractor: str) -> Path:
    """The reference statistics (mu, sigma, features) of one feature extractor."""
    return reference_dir(params) / f"{extractor}.npz"


def classifier_model_dir(params: Params) -> Path:
    """`train_classifier`'s exported classifier."""
    return Path(params.classifier.out) / MODEL_DIR


def trials_dir(params: Params) -> Path:
    """The sweep's trial folders (`trials/<trial name>/`; DVC `persist: true`)."""
    return Path(params.sweep.out) / TRIALS_DIR


def write_results(params: Params, block: str, posterior: str | None, metrics: dict[str, float],
                  info: dict) -> tuple[Path, Path]:
    """Write one stage run's metrics and info files atomically; returns (metrics path, info path).

    Metrics must be a flat mapping of names to real numbers (bools and strings are settings: they
    belong in `info`, where DVC does not show them as metric columns)."""
    for key, value in metrics.items():
        assert isinstance(value, (int, float)) and not isinstance(value, bool), \
            f"metrics hold numbers only; {key}={value!r} is a setting: put it in info"
    paths = metrics_file(params, block, posterior), info_file(params, block, posterior)
    for path, record in zip(paths, (metrics, info), strict=True):
        atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    return paths


def trial_dir(params: Params, trial: str) -> Path:
    """One sweep trial's folder: TRIAL_FILES (sphereard/sweep/trial.py)."""
    return trials_dir(params) / trial


def trial_file(params: Params, trial: str, name: str) -> Path:
    """One of a trial's own files (`name` a key of TRIAL_FILES)."""
    assert name in TRIAL_FILES, f"name must be one of {sorted(TRIAL_FILES)}, got {name!r}"
    return trial_dir(params, trial) / TRIAL_FILES[name]


def sweep_models_dir(params: Params) -> Path:
    """The models training trials train (`models/<model name>/`; DVC `persist: true`)."""
    return Path(params.sweep.out) / SWEEP_MODELS_DIR


def sweep_model_dir(params: Params, model: str) -> Path:
    """One model training trials train (`sphereard.sweep.grid.model_name`): TRIAL_OUTPUTS, TRIAL_METRICS_DIR
    and MODEL_FILES."""
    return sweep_models_dir(params) / model


def sweep_model_file(params: Params, model: str, name: str) -> Path:
    """One of a sweep model's own files (`name` a key of MODEL_FILES)."""
    assert name in MODEL_FILES, f"name must be one of {sorted(MODEL_FILES)}, got {name!r}"
    return sweep_model_dir(params, model) / MODEL_FILES[name]


def sweep_dir(params: Params) -> Path:
    """The sweep stage's tables (SWEEP_*_FILE), plots/ and trials/ (sphereard/sweep/outputs.py)."""
    return Path(params.sweep.out)


REGENERATED_BLOCKS = ("tokenizer", "encode", "generator", "sampling", "evaluation", "classifier", "sweep")


def regenerated_outputs(params: Params) -> list[Path]:
    """The folders the pipeline rebuilds from the prepared data: every stage block's `out` (the latent
    cache included) and the Ray Train storage. Not `data.out` (the prepared data), not `metrics_dir`
    (git-tracked), not the DVC cache or the MLflow store. `make clean-outputs` deletes these."""
    outs = [Path(getattr(params, block).out) for block in REGENERATED_BLOCKS]
    outs += [Path(block.train.ray.storage) for block in (params.tokenizer, params.generator)]
    return list(dict.fromkeys(outs))


KEPT_BY_CLEAN = (".git", ".dvc", ".venv", "reports", "sphereard", "pipelines", "tests", "scripts", "notebooks",
                 "profiles", "docs")  # besides data.out, metrics_dir and the MLflow store from the params


def _tracked_by_git(path: Path, root: Path) -> bool:
    """Whether git tracks a file at or under `path` (False outside a git checkout or without git)."""
    import subprocess

    try:
        out = subprocess.run(["git", "ls-files", "--", str(path)], cwd=root, capture_output=True, text=True,
                             timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and bool(out.stdout.strip())


def check_deletable(paths: list[Path], params: Params, root: Path) -> None:
    """UserError naming the folder unless each path lies strictly inside `root`, is a plain folder name (no
    control characters), neither holds nor lies inside what a clean keeps (data.out, metrics_dir, the MLflow
    store, KEPT_BY_CLEAN) and holds no git-tracked file."""
    from sphereard.errors import UserError

    root = root.resolve()
    kept = [(root / p).resolve() for p in (params.data.out, params.metrics_dir, params.tracking.store,
                                            params.tracking.artifacts, *KEPT_BY_CLEAN)]
    for path in paths:
        if any(ord(c) < 32 for c in str(path)):
            raise UserError(f"{str(path)!r}: a control character in an output path; refusing to delete it")
        full = (root / path).resolve()
        if full == root or root not in full.parents:
            raise UserError(f"{path}: not a folder inside {root}; refusing to delete it (check the params' `out` keys)")
        for keep in kept:
            if full == keep or keep in full.parents or full in keep.parents:
                raise UserError(f"{path}: overlaps {keep}, which a clean keeps; refusing to delete it")
        if _tracked_by_git(full, root):
            raise UserError(f"{path}: holds files git tracks; refusing to delete it")


def main(argv: list[str] | None = None) -> None:
    """`python -m sphereard.layout outputs [--params FILE]`: print `regenerated_outputs`, each followed by a
    NUL byte, after `check_deletable` (exit 2 with one line otherwise)."""
    import argparse
    import sys

    from sphereard.config import DEFAULT_PARAMS_FILE, load_params
    from sphereard.errors import UserError, one_line

    parser = argparse.ArgumentParser(prog="python -m sphereard.layout", description=main.__doc__)
    parser.add_argument("what", choices=["outputs"])
    parser.add_argument("--params", default=DEFAULT_PARAMS_FILE, help="params file (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        outputs = regenerated_outputs(params)
        check_deletable(outputs, params, Path.cwd())
    except UserError as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        sys.exit(2)
    sys.stdout.write("".join(f"{path}\0" for path in outputs))  # NUL-separated: `xargs -0`


if __name__ == "__main__":
    main()
