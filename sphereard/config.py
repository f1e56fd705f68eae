"""Typed configuration: one pydantic model per params.yaml block, validated as a whole before any work.

`load_params(path)` reads params.yaml (or `--params FILE`), rejects unknown keys, wrong types,
NaN/Inf and out-of-range values with one line naming the key and value (`sphereard.config_errors`),
then checks the rules spanning fields and blocks (`model_validator`s).

    python -m sphereard.config schema                  # JSON Schema of params.yaml (for editors)
    python -m sphereard.config check --params FILE     # validate a file: exit 2 with the one line
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from sphereard.config_errors import check, reject_non_finite, validated
from sphereard.errors import UserError, first_lines
from sphereard.utils.io import read_text_file

DEFAULT_PARAMS_FILE = "params.yaml"

POSTERIORS: tuple[str, ...] = ("spherical", "gaussian_norm", "gaussian")
FLOAT32_MAX = 3.4028234663852886e38  # torch.finfo(torch.float32).max: optimizer scalars live in float32
MAX_SEED = 2**63 - 1  # numpy's SeedSequence takes no negative seed; torch.manual_seed none above 2**64 - 1


def _not_bool(value: Any) -> Any:
    check(not isinstance(value, bool), "", value, "expected an integer")  # YAML `true` is no channel count
    return value


Posterior = Literal["spherical", "gaussian_norm", "gaussian"]
Projection = Literal["auto", "sphere", "none"]
Flow = Literal["euclidean", "riemannian"]  # the diffusion head's flow (sphereard/ar/flow.py, ar/riemannian.py)
Magnitude = Literal["none", "predict"]  # a separate token-norm head (sphereard/ar/magnitude.py)
Sampler = Literal["euler", "euler_maruyama", "heun"]
SPHERE_POSTERIORS: tuple[str, ...] = ("spherical", "gaussian_norm")  # latents of constant norm R


def head_conflict(flow: str, magnitude: str, posterior: str, sampler: str) -> tuple[str, str] | None:
    """(key, reason) when a generator head with this flow / magnitude cannot model `posterior`'s latents or
    sample with `sampler`; None when they fit. key: `flow`, `magnitude` or `sampler` (callers add the block)."""
    if flow == "riemannian" and posterior not in SPHERE_POSTERIORS:
        return "flow", f"needs latents on the sphere (spherical, gaussian_norm); {posterior} latents are not"
    if flow == "riemannian" and sampler != "euler":
        return "sampler", "the riemannian head samples with exponential-map euler steps only (set euler)"
    if magnitude == "predict" and posterior in SPHERE_POSTERIORS:
        return "magnitude", f"predict needs latents of varying norm (gaussian); {posterior} latents have norm R"
    return None
Channels = Annotated[Literal[1, 3], BeforeValidator(_not_bool)]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED, description="numpy and torch seeds")]
PositiveInt = Annotated[int, Field(gt=0)]
Overrides = dict[str, Annotated[Any, AfterValidator(reject_non_finite)]]  # free-form, checked by the arch model


class StrictModel(BaseModel):
    """Base of every block: unknown keys, wrong types (a bool is no number, "1e-3" no float; an int
    is a float) and NaN/Inf are errors. An empty YAML block (`tracking:`) takes the defaults."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _empty_block(cls, data: Any) -> Any:
        return {} if data is None else data


class DataConfig(StrictModel):
    """Dataset preparation (`prepare` stage)."""

    source: Literal["fashion_mnist", "emoji", "imagefolder", "imagenet_tar"] = "fashion_mnist"
    path: str = "/usr/share/datasets/fashion-mnist"
    labels_path: str | None = None
    emoji_label: Literal["group", "subgroup"] = "group"
    image_size: int = Field(32, gt=0)
    resize: Literal["pad", "center_crop"] = "pad"
    channels: Channels = 1
    test_fraction: float = Field(0.1, gt=0, lt=1)
    max_per_class: int | None = Field(None, gt=0)
    shard_rows: int = Field(20_000, gt=0)
    row_group_rows: int = Field(1024, gt=0, description=(
        "rows per Parquet row group: the unit a training worker reads (sphereard/data/stream.py)"))
    store_size: int | None = Field(None, gt=0, description=(
        "side of the stored squares, > image_size to leave room for the paper's random crops (ImageNet: 320 "
        "for 256); null = image_size. Readers get image_size (the stored square resized whole) unless they crop"))
    workers: int = Field(0, ge=0, description=(
        "Ray tasks that decode and resize in parallel (0 = in this process); the output is identical"))
    interleave: int = Field(1, gt=0, description=(
        "shards written at once, each row to the shard of its key's hash: a row group then spans interleave x "
        "row_group_rows consecutive source rows, so sources stored class by class (ImageNet's tar, image "
        "folders) give row groups of many classes (the streaming shuffle mixes row groups, not whole splits)"))
    out: str = "data/shards"

    @model_validator(mode="after")
    def _store_size(self) -> DataConfig:
        check(self.store_size is None or self.store_size >= self.image_size, "data.store_size", self.store_size,
              f"must be >= data.image_size={self.image_size} (or null)")
        return self


class RayConfig(StrictModel):
    """Ray Train scaling: num_workers >= 1 starts that many workers on a private local Ray instance,
    or on the cluster at RAY_ADDRESS. The default 0 is Ray Train's local mode: the same loop runs
    in-process, with no Ray start-up (about 40 s a stage on the 2-core demo machine)."""

    num_workers: int = Field(0, ge=0, description="0 = in-process")
    use_gpu: bool = False
    cpus_per_worker: int = Field(2, ge=1, description="intra-op threads per CPU worker: the 2-core demo machine")
    max_failures: int = Field(0, ge=-1, description="-1 = unlimited")
    storage: str = "outputs/ray"


class OptimConfig(StrictModel):
    """AdamW with linear warmup then cosine decay to min_lr (paper Sec. 4.1)."""

    lr: float = Field(3e-4, gt=0)
    min_lr: float = Field(1e-5, ge=0, description="<= lr")
    betas: list[Annotated[float, Field(ge=0, lt=1)]] = Field(default_factory=lambda: [0.9, 0.95],
                                                             min_length=2, max_length=2)
    weight_decay: float = Field(0.05, ge=0)
    warmup_steps: int = Field(100, ge=0)
    schedule: Literal["cosine", "constant"] = "cosine"
    grad_clip: float = Field(1.0, gt=0)
    ema_decay: float = Field(0.999, ge=0, lt=1)

    @model_validator(mode="after")
    def _rules(self) -> OptimConfig:
        check(self.min_lr <= self.lr, "min_lr", self.min_lr, "must be in [0, lr]")
        check(self.lr / (1 - self.betas[0]) <= FLOAT32_MAX, "lr", self.lr,
              f"lr / (1 - betas[0]) must fit float32 (<= {FLOAT32_MAX:.3g}): AdamW's step size")
        return self


class CropConfig(StrictModel):
    """The paper's training crop (official code, `../shared/paper/reference-facts.md`): with probability p
    the stored square is resized to a random side in [image_size, ceil(image_size / min_fraction)], then
    randomly cropped to image_size; else resized whole. p is 1 until epoch decay_start_epoch, then falls
    linearly to 0 at decay_end_epoch (paper AR: 350 -> 375 of 400; tokenizer: always on). Needs
    data.store_size > data.image_size (sphereard/data/transforms.py)."""

    enabled: bool = False
    min_fraction: float = Field(0.8, gt=0, le=1)
    decay_start_epoch: int | None = Field(None, ge=0, description="null = crop probability 1 throughout")
    decay_end_epoch: int | None = Field(None, gt=0, description="> decay_start_epoch")

    @model_validator(mode="after")
    def _rules(self) -> CropConfig:
        check((self.decay_start_epoch is None) == (self.decay_end_epoch is None), "decay_end_epoch",
              self.decay_end_epoch, "set decay_start_epoch and decay_end_epoch together (or neither)")
        if self.decay_start_epoch is not None:
            check(self.decay_end_epoch > self.decay_start_epoch, "decay_end_epoch", self.decay_end_epoch,
                  f"must be > decay_start_epoch={self.decay_start_epoch}")
        return self


class TrainLoopConfig(StrictModel):
    """Fields every training stage shares."""

    steps: int = Field(1000, gt=0)
    batch_size: int = Field(128, gt=0, description="global batch, divisible by ray.num_workers")
    log_every: int = Field(25, gt=0)
    sample_every: int = Field(500, gt=0)
    ckpt_every: int = Field(250, gt=0)
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    num_loader_workers: int = Field(0, ge=0)
    shuffle_window: int = Field(8, gt=0, description=(
        "row groups a worker reads per shuffle window: rows shuffle within a window, groups and windows "
        "come in a random order per epoch; a worker holds at most this many row groups (sphereard/data/stream.py)"))
    crop: CropConfig = Field(default_factory=CropConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    ray: RayConfig = Field(default_factory=RayConfig)

    @model_validator(mode="after")
    def _batch_splits(self) -> TrainLoopConfig:
        check(self.batch_size % max(1, self.ray.num_workers) == 0, "batch_size", self.batch_size,
              f"must be divisible by ray.num_workers={self.ray.num_workers}")
        return self


class TokenizerTrainConfig(TrainLoopConfig):
    """The shared loop fields plus the tokenizer's losses: reconstruction, KL, LPIPS and the discriminator."""

    recon_loss: Literal["l1", "l2"] = "l1"
    kl_weight: float = Field(0.004, ge=0)
    lpips_weight: float = Field(1.0, ge=0, description="LPIPS-VGG loss (weights: the top-level lpips_weights_path)")
    disc_weight: float = Field(0.5, ge=0)
    disc_start: int = Field(20_000, ge=0)
    export: Literal["raw", "ema"] = Field("raw", description=(
        "weights the tokenizer export holds: raw (the optimised weights, as the official S-VAE) or ema"))
    kappa_init: float | None = Field(None, gt=1, description=(
        "spherical posterior only: initial concentration kappa, set through the bias of the kappa output "
        "(kappa = softplus(raw) + 1); null = the official default-initialised layer"))


# The demo's S-VAE starts near the concentration it moves to on this data (constant learning rate: from
# 30, kappa ends at 29-31 after 1500 steps; from 20 it rises, from 60 it falls; docs/tokenizer-convergence.md)
# instead of kappa ~1.7, from which its KL climbs for the whole 500-step run (29% in the second half; 3.6%
# from 30 under the demo's cosine schedule). The paper profiles set kappa_init: null (the official init).
DEMO_KAPPA_INIT = 30.0


class TokenizerConfig(StrictModel):
    """Hybrid VAE tokenizers, one per posterior (`train_vae@{posterior}-{seed}`, `encode@{posterior}-{seed}`)."""

    preset: str = "fmnist-s"
    posteriors: list[Posterior] = Field(default_factory=lambda: list(POSTERIORS), min_length=1)
    radius: float | None = Field(None, gt=0, description="null = sqrt(latent_dim)")
    overrides: Overrides = Field(default_factory=dict, description="TokenizerArch fields replacing the preset's")
    eval_images: int = Field(2000, gt=0)
    out: str = "outputs/tokenizer"
    train: TokenizerTrainConfig = Field(default_factory=lambda: TokenizerTrainConfig(
        steps=500, batch_size=32, sample_every=250, ckpt_every=250, disc_start=100_000,
        kappa_init=DEMO_KAPPA_INIT, optim=OptimConfig(lr=5e-4, min_lr=5e-5, warmup_steps=50, ema_decay=0.99)))

    @model_validator(mode="after")
    def _distinct(self) -> TokenizerConfig:
        check(len(set(self.posteriors)) == len(self.posteriors), "posteriors", self.posteriors,
              "must not repeat a posterior")
        return self


class EncodeConfig(StrictModel):
    """Latent cache of posterior parameters per train image (`encode@{posterior}-{seed}`).

    hflip also caches each image's horizontal flip, which AR training picks at random (the
    paper's augmentation). max_images caches a random subset (fixed by `seed`) of that many
    train images; null caches them all. The CPU default (no flips, 20k of 60k images) fits its
    AR budget, 500 steps x 32 = 16k samples; the paper profiles cache everything with flips."""

    batch_size: int = Field(256, gt=0)
    hflip: bool = False
    crops: int = Field(0, ge=0, description=(
        "random crops cached per image besides the centre view (generator.train.crop draws them and picks "
        "crop or centre by its schedule; needs data.store_size); 0 = the centre view only"))
    max_images: int | None = Field(20_000, gt=0, description="null = every train image")
    dtype: Literal["float16", "float32"] = "float16"
    workers: int = Field(0, ge=0, description=(
        "Ray tasks encoding contiguous parts in parallel, one GPU each when the Ray cluster has GPUs "
        "(sphereard/tokenizer/encode.py); 0 = in this process; the cache is identical"))
    out: str = "data/latents"


class GeneratorTrainConfig(TrainLoopConfig):
    """The generator's training loop; `latents` says where its tokens come from."""

    latents: Literal["cache", "online"] = Field("cache", description=(
        "cache = posterior moments from the encode stage (fresh sample per step); online = encode each batch "
        "with the frozen tokenizer in the step, after the crop and flip (the official code)"))


class GeneratorConfig(StrictModel):
    """SphereAR generator on top of each tokenizer (`train_ar@{posterior}-{seed}`)."""

    preset: str = "fmnist-s"
    overrides: Overrides = Field(default_factory=dict, description="GeneratorArch fields replacing the preset's")
    flow: Flow = Field("euclidean", description=(
        "the head's flow: euclidean = rectified flow in R^d (paper); riemannian = geodesic flow matching on the "
        "radius-R sphere (spherical / gaussian_norm tokenizers, sampler euler)"))
    magnitude: Magnitude = Field("none", description=(
        "none = the head models whole tokens (paper); predict = the head models directions on the sqrt(d) "
        "sphere and a Gaussian head the log-norm (the two-head check; gaussian tokenizer only)"))
    out: str = "outputs/generator"
    train: GeneratorTrainConfig = Field(default_factory=lambda: GeneratorTrainConfig(
        steps=500, batch_size=32, sample_every=250, ckpt_every=250,
        optim=OptimConfig(lr=1e-3, min_lr=1e-5, warmup_steps=50, ema_decay=0.99)))


class SamplingConfig(StrictModel):
    """Sampling (`sample` stage): CFG on the velocity and the projection after CFG (paper Sec. 3.3)."""

    num_per_class: int = Field(50, gt=0)
    batch_size: int = Field(250, gt=0)
    cfg_scale: float = Field(3.0, ge=0, description="1 = no guidance")
    cfg_schedule: Literal["constant", "linear"] = "linear"
    sampler: Sampler = "euler_maruyama"
    steps: int = Field(50, gt=0)
    final_step: float = Field(0.04, ge=0, lt=1)
    cfg_unit_weight: Literal["shared", "separate"] = Field("shared", description=(
        "with guidance, a token whose weight is exactly 1 (the first under the linear schedule): "
        "`shared` = one guided step whose token both streams read back; `separate` = both streams "
        "sample it unguided with their own noise and each keeps its own token (the official code)"))
    projection: Projection = "auto"
    use_ema: bool = True
    seed: Seed = 0
    out: str = "outputs/samples"


class ClassifierConfig(StrictModel):
    """In-project classifier: the `classifier` feature extractor for FD/KID/PR (`train_classifier`)."""

    steps: int = Field(600, gt=0)
    batch_size: int = Field(128, gt=0)
    lr: float = Field(2e-3, gt=0)
    width: int = Field(32, gt=0)
    feature_dim: int = Field(128, gt=0)
    out: str = "outputs/classifier"


class EvaluationConfig(StrictModel):
    """Generation and reconstruction metrics; metric names always carry the feature extractor.
    LPIPS uses the top-level `lpips_weights_path`."""

    extractors: list[Literal["classifier", "effnet", "inception"]] = Field(
        default_factory=lambda: ["classifier"], min_length=1)
    inception_weights: str | None = None
    adm_reference: str | None = None
    num_real: int = Field(10_000, gt=0)
    kid_subset_size: int = Field(500, gt=0)
    pr_neighbours: int = Field(3, gt=0)
    batch_size: int = Field(250, gt=0)
    diagnostic_cfg_scales: list[Annotated[float, Field(ge=0)]] = Field(default_factory=lambda: [1.0, 3.0, 6.0])
    diagnostic_samples: int = Field(50, gt=0)
    diagnostic_steps: int = Field(25, gt=0)
    teacher_forced_images: int = Field(500, gt=0)
    out: str = "outputs/metrics"

    @model_validator(mode="after")
    def _distinct(self) -> EvaluationConfig:
        check(len(set(self.extractors)) == len(self.extractors), "extractors", self.extractors, "must not repeat")
        return self


class SweepArm(StrictModel):
    """An extra grid of the sweep: each axis given replaces the main grid's (null: the main grid's);
    seeds, scheduler and budgets are the main grid's (sphereard/sweep/grid.py)."""

    cfg_scales: list[Annotated[float, Field(ge=0)]] | None = Field(None, min_length=1)
    radii: list[Annotated[float, Field(gt=0)] | None] | None = Field(None, min_length=1)
    posteriors: list[Posterior] | None = Field(None, min_length=1)
    projections: list[Projection] | None = Field(None, min_length=1)
    sampler_steps: list[PositiveInt] | None = Field(None, min_length=1)
    flows: list[Flow | None] | None = Field(None, min_length=1)
    magnitudes: list[Magnitude | None] | None = Field(None, min_length=1)
    samplers: list[Sampler | None] | None = Field(None, min_length=1)


class SweepConfig(StrictModel):
    """Ray Tune ablation grid (`sweep` stage). `enabled: false` runs no trial (the stage writes empty
    tables, the report says the sweep is off). Without `train`, posteriors that the DAG does not
    train (`tokenizer.posteriors`) are left out of the sweep, with one log line."""

    enabled: bool = True
    cfg_scales: list[Annotated[float, Field(ge=0)]] = Field(default_factory=lambda: [1.0, 3.0, 6.0], min_length=1)
    radii: list[Annotated[float, Field(gt=0)] | None] = Field(default_factory=lambda: [None], min_length=1)
    posteriors: list[Posterior] = Field(default_factory=lambda: list(POSTERIORS), min_length=1)
    projections: list[Projection] = Field(default_factory=lambda: ["auto"], min_length=1)
    sampler_steps: list[PositiveInt] = Field(default_factory=lambda: [25], min_length=1)
    flows: list[Flow | None] = Field(default_factory=lambda: [None], min_length=1, description=(
        "the head's flow per trial (null: generator.flow); another flow trains a generator in the trial"))
    magnitudes: list[Magnitude | None] = Field(default_factory=lambda: [None], min_length=1, description=(
        "the magnitude option per trial (null: generator.magnitude); another one trains a generator in the trial"))
    samplers: list[Sampler | None] = Field(default_factory=lambda: [None], min_length=1, description=(
        "the sampler per trial (null: sampling.sampler)"))
    arms: list[SweepArm] = Field(default_factory=list, description=(
        "extra grids, each replacing some axes of this one (e.g. a radius arm at one CFG scale)"))
    seeds: list[Seed] = Field(default_factory=lambda: [0], min_length=1)
    scheduler: Literal["grid", "asha"] = "grid"
    num_per_class: int = Field(20, gt=0)
    max_concurrent: int = Field(1, gt=0)
    train: bool = Field(
        False, description="train tokenizer + generator inside every trial (radius ablations always do)")
    train_steps_fraction: float = Field(
        1.0, gt=0, le=1, description="training trials: tokenizer/generator steps (and warmup) scaled by this")
    train_reports: int = Field(
        4, gt=0, description="asha: AR training in this many resumable segments, each reported to Tune")
    gpus_per_trial: float = Field(
        0.0, ge=0, description="GPUs Ray reserves per trial (sampling + metrics run on it when > 0)")
    out: str = "outputs/sweep"

    @model_validator(mode="after")
    def _rules(self) -> SweepConfig:
        check(self.gpus_per_trial <= 1 or self.gpus_per_trial.is_integer(), "gpus_per_trial", self.gpus_per_trial,
              "must be a fraction <= 1 or a whole number (Ray's rule for GPU requests)")
        check(self.scheduler != "asha" or self.train, "scheduler", self.scheduler,
              "asha stops trials on their AR training loss: set sweep.train: true")
        return self


class TrackingConfig(StrictModel):
    """MLflow: sqlite store inside the repo unless MLFLOW_TRACKING_URI is set."""

    enabled: bool = True
    experiment: str = "sphereard"
    store: str = "mlflow.db"
    artifacts: str = "mlartifacts"

    @model_validator(mode="after")
    def _named(self) -> TrackingConfig:
        for name in ("experiment", "store", "artifacts"):  # MLflow refuses empty names
            check(bool(getattr(self, name).strip()), name, getattr(self, name), "must not be empty")
        return self


class StepsStudyConfig(StrictModel):
    """FD against sampler steps (`steps` stage, issue 18): each sampler x steps x sampling seed draws
    `num_per_class` images per class from the generator of (`posterior`, the first of `seeds`) with the
    `sampling` block's other settings; the matched-quality target is `euler_maruyama` at the most steps.
    Samplers the generator's head cannot use (`head_conflict`: riemannian needs euler) are left out."""

    enabled: bool = True
    posterior: Posterior | None = Field(None, description="null: the first of tokenizer.posteriors")
    samplers: list[Sampler] = Field(default_factory=lambda: ["euler_maruyama", "euler", "heun"], min_length=1)
    steps: list[PositiveInt] = Field(default_factory=lambda: [10, 25, 50, 100], min_length=2)
    sampling_seeds: list[Seed] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    num_per_class: int = Field(50, gt=0)
    tolerance: float = Field(0.02, gt=0, lt=1, description=(
        "matched quality: mean FD <= (1 + tolerance) x the mean FD of euler_maruyama at the most steps"))
    out: str = "outputs/steps"

    @model_validator(mode="after")
    def _rules(self) -> StepsStudyConfig:
        for key in ("samplers", "steps", "sampling_seeds"):
            values = getattr(self, key)
            check(len(set(values)) == len(values), key, values, "must not repeat an entry")
        return self


class OfficialConfig(StrictModel):
    """The authors' released weights, imported instead of trained (the pretrained DAG,
    `pretrained/dvc.yaml`; docs/official-checkpoints.md). Unset (null) in the training profiles."""

    generator: str = Field(description="SphereAR_{B,L,H}.pt (its vae.* is checked equal to `vae`)")
    vae: str = Field(description="vae.pt, the released S-VAE")
    weights: Literal["auto", "ema", "model"] = Field(
        "auto", description="generator entry imported; auto: 'ema' if the file has it, else 'model'")


class Params(StrictModel):
    """The whole params.yaml: the blocks, then the rules spanning them (`validate_cross_block`)."""

    profile: str = "default"
    seed: Seed = Field(0, description=(
        "the shared stages' numpy and torch seed (train_classifier, reference); a run's stages use its `seeds` entry"))
    seeds: list[Seed] = Field(default_factory=lambda: [0], min_length=1, description=(
        "the seed axis: tokenizers and generators are trained, sampled and evaluated once per seed "
        "(DVC matrix posterior x seed; outputs under `<out>/<posterior>/seed<k>/`, `for_run`)"))
    # The small metrics files (`<metrics_dir>/<block>/<posterior>/seed<k>.json`): git-tracked, so `dvc exp`
    # commits them with each experiment (see sphereard/layout.py). Large outputs stay under `out`s.
    metrics_dir: str = "metrics"
    lpips_weights_path: str | None = Field(None, description=(
        "local torchvision VGG16 weights for LPIPS, the tokenizer's loss and the evaluation metric "
        "(null: the loss falls back to $SPHEREARD_LPIPS_VGG16, else is off; the metric is skipped)"))
    data: DataConfig = Field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    encode: EncodeConfig = Field(default_factory=EncodeConfig)
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    classifier: ClassifierConfig = Field(default_factory=ClassifierConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    sweep: SweepConfig = Field(default_factory=SweepConfig)
    steps_study: StepsStudyConfig = Field(default_factory=StepsStudyConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    official: OfficialConfig | None = Field(None, description=(
        "released SphereAR weights to import instead of training (pretrained/dvc.yaml); null: train"))

    @model_validator(mode="after")
    def _rules(self) -> Params:
        check(bool(self.metrics_dir.strip()), "metrics_dir", self.metrics_dir, "must not be empty")
        check(len(set(self.seeds)) == len(self.seeds), "seeds", self.seeds, "must not repeat a seed")
        check(self.sampling.seed + max(self.seeds) <= MAX_SEED, "sampling.seed", self.sampling.seed,
              f"plus the largest of `seeds` ({max(self.seeds)}) must not exceed {MAX_SEED} (run k samples with "
              "sampling.seed + k)")
        validate_cross_block(self)
        study = self.steps_study
        if study.enabled and study.posterior is not None:
            check(study.posterior in self.tokenizer.posteriors, "steps_study.posterior", study.posterior,
                  f"must be one of tokenizer.posteriors {self.tokenizer.posteriors} (its generator is sampled)")
        return self

    def for_run(self, seed: int) -> Params:
        """The params one run of the seed axis sees: `seed` = the run's seed (training, encoding,
        evaluation) and `sampling.seed` offset by it (sampling.seed + seed), so runs draw independent
        samples; `sphereard.layout` puts the run's outputs under `seed<k>/`. UserError naming `seeds`
        when the seed is not one of them."""
        if seed not in self.seeds:
            raise UserError(f"seeds: run seed {seed} is not one of {self.seeds}")
        sampling = self.sampling.model_copy(update={"seed": self.sampling.seed + seed})  # <= MAX_SEED: `_rules`
        return self.model_copy(update={"seed": seed, "sampling": sampling})

    def runs(self) -> list[Params]:
        """`for_run` of every entry of `seeds`, in order."""
        return [self.for_run(seed) for seed in self.seeds]


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    text = read_text_file(path, "params file", missing="not found")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML ({first_lines(err)})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of config blocks at the top level")
    return data


def parse_params(data: dict) -> Params:
    """Validate a whole params mapping (types, ranges, then the rules spanning fields and blocks)."""
    return validated(Params, data)


def load_params(path: str | Path = DEFAULT_PARAMS_FILE) -> Params:
    return parse_params(read_yaml(path))


def validate_cross_block(params: Params) -> None:
    """Rules spanning blocks: the tokenizer must fit the data, the generator the tokenizer."""
    from sphereard.ar.arch import resolve_generator_arch
    from sphereard.tokenizer.presets import tokenizer_arch

    tok = tokenizer_arch(params.tokenizer.preset, **params.tokenizer.overrides)
    check(tok.image_size == params.data.image_size, "tokenizer.preset", params.tokenizer.preset,
          f"image_size {tok.image_size} must equal data.image_size {params.data.image_size}")
    check(tok.in_channels == params.data.channels, "tokenizer.preset", params.tokenizer.preset,
          f"in_channels {tok.in_channels} must equal data.channels {params.data.channels}")
    gen = resolve_generator_arch(params.generator.preset, params.generator.overrides, "generator")
    grid = tok.image_size // tok.patch_size
    check(gen.grid_size == grid, "generator.preset", params.generator.preset,
          f"grid_size {gen.grid_size} must equal the tokenizer grid {grid}")
    check(gen.token_dim == tok.latent_dim, "generator.preset", params.generator.preset,
          f"token_dim {gen.token_dim} must equal the tokenizer latent_dim {tok.latent_dim}")
    g = params.generator
    for posterior in params.tokenizer.posteriors:
        conflict = head_conflict(g.flow, g.magnitude, posterior, params.sampling.sampler)
        if conflict is not None:
            key, why = conflict
            block = "sampling" if key == "sampler" else "generator"
            check(False, f"{block}.{key}", getattr(params.sampling if key == "sampler" else g, key), why)
    for key, crop in (("tokenizer.train.crop", params.tokenizer.train.crop),
                      ("generator.train.crop", params.generator.train.crop)):
        check(not crop.enabled or params.data.store_size not in (None, params.data.image_size), f"{key}.enabled",
              True, "needs data.store_size > data.image_size (stored squares to crop from)")
    check(params.encode.crops == 0 or params.generator.train.crop.enabled, "encode.crops", params.encode.crops,
          "needs generator.train.crop.enabled (its min_fraction and schedule)")
    gen_train = params.generator.train
    if gen_train.crop.enabled and gen_train.latents == "cache":
        check(params.encode.crops > 0, "generator.train.crop.enabled", True,
              "with latents: cache needs encode.crops > 0 (cached crop views to pick), or set latents: online")
    check(params.encode.crops == 0 or gen_train.latents == "cache", "encode.crops", params.encode.crops,
          "is unused with generator.train.latents: online (it encodes its own crops); set 0")
    for key, crop in (("tokenizer.train.crop", params.tokenizer.train.crop), ("generator.train.crop", gen_train.crop)):
        room = math.ceil(params.data.image_size / crop.min_fraction - 1e-9)
        check(not crop.enabled or (params.data.store_size or 0) >= room, f"{key}.min_fraction", crop.min_fraction,
              f"needs data.store_size >= ceil(image_size / min_fraction) = {room} (got {params.data.store_size})")
    sweep = params.sweep
    if sweep.enabled and not sweep.train:  # a sampling trial of seed k reads run k's exported models
        check(set(sweep.seeds) <= set(params.seeds), "sweep.seeds", sweep.seeds,
              f"must be a subset of seeds {params.seeds} (a trial samples run k's models), or set sweep.train: true")
    if params.official is not None:
        validate_official(params)


def validate_official(params: Params) -> None:
    """An imported model is one spherical S-VAE + generator pair with its EMA export: nothing to train
    (no classifier, no sweep), and the export is what `sampling.use_ema: true` reads."""
    check(params.tokenizer.posteriors == ["spherical"], "tokenizer.posteriors", params.tokenizer.posteriors,
          "must be [spherical] when `official` imports the released S-VAE")
    for key, default in (("flow", "euclidean"), ("magnitude", "none")):
        check(getattr(params.generator, key) == default, f"generator.{key}", getattr(params.generator, key),
              f"must be {default} when `official` is set (the released model)")
    check(params.seeds == [0], "seeds", params.seeds,
          "must be [0] when `official` is set (one imported model; pretrained/dvc.yaml reads run seed0)")
    check("classifier" not in params.evaluation.extractors, "evaluation.extractors", params.evaluation.extractors,
          "must not hold 'classifier' when `official` is set (the pretrained DAG trains no classifier)")
    check(not params.sweep.enabled, "sweep.enabled", params.sweep.enabled,
          "must be false when `official` is set (the pretrained DAG runs no sweep)")
    check(params.sampling.use_ema, "sampling.use_ema", params.sampling.use_ema,
          "must be true when `official` is set (the import is the export; there is no checkpoint)")
    ev = params.evaluation
    check("inception" in ev.extractors, "evaluation.extractors", ev.extractors,
          "must hold 'inception' when `official` is set (the paper's FID protocol)")
    for key in ("inception_weights", "adm_reference"):  # pretrained/dvc.yaml tracks both files
        check(getattr(ev, key) is not None, f"evaluation.{key}", None,
              "must name a local file when `official` is set (the pretrained DAG's ADM protocol)")


def absolute_paths(params: Params) -> Params:
    """A copy whose data/output paths are absolute: Ray workers may run in another directory."""
    blocks = ("data", "tokenizer", "encode", "generator", "sampling", "classifier", "evaluation", "sweep")
    resolved = {name: getattr(params, name).model_copy(update={"out": str(Path(getattr(params, name).out).resolve())})
                for name in blocks}
    return params.model_copy(update={"metrics_dir": str(Path(params.metrics_dir).resolve()), **resolved})


def main(argv: list[str] | None = None) -> None:
    """`python -m sphereard.config schema` prints the JSON Schema of params.yaml; `check` validates a file."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("schema", help="print the JSON Schema of params.yaml (indent 2)")
    check_cmd = sub.add_parser("check", help="validate a params file: exit 2 with one line on error")
    check_cmd.add_argument("--params", default=DEFAULT_PARAMS_FILE)
    args = parser.parse_args(argv)
    if args.command == "schema":
        print(json.dumps(Params.model_json_schema(), indent=2))
        return
    try:
        load_params(args.params)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"{args.params}: valid")


if __name__ == "__main__":
    main()
