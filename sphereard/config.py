"""Typed configuration: one dataclass per params.yaml block, validated as a whole before any work.

`load_params(path)` reads params.yaml (or `--params FILE`), rejects unknown keys, wrong types and
out-of-range values with one line naming the key and value, then checks cross-block consistency.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from sphereard.config_schema import from_dict, require
from sphereard.errors import UserError, first_lines

DEFAULT_PARAMS_FILE = "params.yaml"

Posterior = Literal["spherical", "gaussian_norm", "gaussian"]
Projection = Literal["auto", "sphere", "none"]
POSTERIORS: tuple[str, ...] = ("spherical", "gaussian_norm", "gaussian")
FLOAT32_MAX = 3.4028234663852886e38  # torch.finfo(torch.float32).max: optimizer scalars live in float32
MAX_SEED = 2**63 - 1  # numpy's SeedSequence takes no negative seed; torch.manual_seed none above 2**64 - 1


@dataclass
class DataConfig:
    """Dataset preparation (`prepare` stage)."""

    source: Literal["fashion_mnist", "emoji", "imagefolder", "imagenet_tar"] = "fashion_mnist"
    path: str = "/usr/share/datasets/fashion-mnist"
    labels_path: str | None = None
    emoji_label: Literal["group", "subgroup"] = "group"
    image_size: int = 32
    resize: Literal["pad", "center_crop"] = "pad"
    channels: Literal[1, 3] = 1
    test_fraction: float = 0.1
    max_per_class: int | None = None
    shard_rows: int = 20_000
    out: str = "data/shards"

    def __post_init__(self):
        require(self.image_size > 0, "image_size", self.image_size, "must be positive")
        require(0.0 < self.test_fraction < 1.0, "test_fraction", self.test_fraction, "must be in (0, 1)")
        require(self.max_per_class is None or self.max_per_class > 0, "max_per_class",
                self.max_per_class, "must be positive or null")
        require(self.shard_rows > 0, "shard_rows", self.shard_rows, "must be positive")


@dataclass
class RayConfig:
    """Ray Train scaling: num_workers >= 1 starts that many workers on a private local Ray instance,
    or on the cluster at RAY_ADDRESS. The default 0 is Ray Train's local mode: the same loop runs
    in-process, with no Ray start-up (about 40 s a stage on the 2-core demo machine)."""

    num_workers: int = 0
    use_gpu: bool = False
    cpus_per_worker: int = 2  # intra-op threads per CPU worker: the 2-core demo machine
    max_failures: int = 0
    storage: str = "outputs/ray"

    def __post_init__(self):
        require(self.num_workers >= 0, "num_workers", self.num_workers, "must be >= 0 (0 = in-process)")
        require(self.cpus_per_worker >= 1, "cpus_per_worker", self.cpus_per_worker, "must be >= 1")
        require(self.max_failures >= -1, "max_failures", self.max_failures, "must be >= -1 (-1 = unlimited)")


@dataclass
class OptimConfig:
    """AdamW with linear warmup then cosine decay to min_lr (paper Sec. 4.1)."""

    lr: float = 3e-4
    min_lr: float = 1e-5
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 0.05
    warmup_steps: int = 100
    schedule: Literal["cosine", "constant"] = "cosine"
    grad_clip: float = 1.0
    ema_decay: float = 0.999

    def __post_init__(self):
        require(self.lr > 0, "lr", self.lr, "must be positive")
        require(0 <= self.min_lr <= self.lr, "min_lr", self.min_lr, "must be in [0, lr]")
        require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas", self.betas,
                "must be two numbers in [0, 1)")
        require(self.weight_decay >= 0, "weight_decay", self.weight_decay, "must be >= 0")
        require(self.warmup_steps >= 0, "warmup_steps", self.warmup_steps, "must be >= 0")
        require(self.grad_clip > 0, "grad_clip", self.grad_clip, "must be positive")
        require(self.lr / (1 - self.betas[0]) <= FLOAT32_MAX, "lr", self.lr,
                f"lr / (1 - betas[0]) must fit float32 (<= {FLOAT32_MAX:.3g}): AdamW's step size")
        require(0 <= self.ema_decay < 1, "ema_decay", self.ema_decay, "must be in [0, 1)")


@dataclass
class TrainLoopConfig:
    """Fields every training stage shares."""

    steps: int = 1000
    batch_size: int = 128
    log_every: int = 25
    sample_every: int = 500
    ckpt_every: int = 250
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    num_loader_workers: int = 0
    optim: OptimConfig = field(default_factory=OptimConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def __post_init__(self):
        for name in ("steps", "batch_size", "log_every", "sample_every", "ckpt_every"):
            require(getattr(self, name) > 0, name, getattr(self, name), "must be positive")
        require(self.num_loader_workers >= 0, "num_loader_workers", self.num_loader_workers, "must be >= 0")
        require(self.batch_size % max(1, self.ray.num_workers) == 0, "batch_size", self.batch_size,
                f"must be divisible by ray.num_workers={self.ray.num_workers}")


@dataclass
class TokenizerTrainConfig(TrainLoopConfig):
    recon_loss: Literal["l1", "l2"] = "l1"
    kl_weight: float = 0.004
    lpips_weight: float = 1.0
    lpips_weights_path: str | None = None
    disc_weight: float = 0.5
    disc_start: int = 20_000

    def __post_init__(self):
        super().__post_init__()
        for name in ("kl_weight", "lpips_weight", "disc_weight"):
            require(getattr(self, name) >= 0, name, getattr(self, name), "must be >= 0")
        require(self.disc_start >= 0, "disc_start", self.disc_start, "must be >= 0")


@dataclass
class TokenizerConfig:
    """Hybrid VAE tokenizers, one per posterior (`train_vae@{posterior}`, `encode@{posterior}`)."""

    preset: str = "fmnist-s"
    posteriors: list[Posterior] = field(default_factory=lambda: list(POSTERIORS))
    radius: float | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    eval_images: int = 2000
    out: str = "outputs/tokenizer"
    train: TokenizerTrainConfig = field(default_factory=lambda: TokenizerTrainConfig(
        steps=500, batch_size=32, sample_every=250, ckpt_every=250, disc_start=100_000,
        optim=OptimConfig(lr=5e-4, min_lr=5e-5, warmup_steps=50, ema_decay=0.99)))

    def __post_init__(self):
        require(len(self.posteriors) > 0, "posteriors", self.posteriors, "list at least one posterior")
        require(len(set(self.posteriors)) == len(self.posteriors), "posteriors", self.posteriors,
                "must not repeat a posterior")
        require(self.radius is None or self.radius > 0, "radius", self.radius,
                "must be positive (or null = sqrt(latent_dim))")
        require(self.eval_images > 0, "eval_images", self.eval_images, "must be positive")


@dataclass
class EncodeConfig:
    """Latent cache of posterior parameters per train image (`encode@{posterior}`).

    hflip also caches each image's horizontal flip, which AR training picks at random (the
    paper's augmentation). max_images caches a random subset (fixed by `seed`) of that many
    train images; null caches them all. The CPU default (no flips, 20k of 60k images) fits its
    AR budget, 500 steps x 32 = 16k samples; the paper profiles cache everything with flips."""

    batch_size: int = 256
    hflip: bool = False
    max_images: int | None = 20_000
    dtype: Literal["float16", "float32"] = "float16"
    out: str = "data/latents"

    def __post_init__(self):
        require(self.batch_size > 0, "batch_size", self.batch_size, "must be positive")
        require(self.max_images is None or self.max_images > 0, "max_images", self.max_images,
                "must be positive (or null = every train image)")


@dataclass
class GeneratorConfig:
    """SphereAR generator on top of each tokenizer (`train_ar@{posterior}`)."""

    preset: str = "fmnist-s"
    overrides: dict[str, Any] = field(default_factory=dict)
    out: str = "outputs/generator"
    train: TrainLoopConfig = field(default_factory=lambda: TrainLoopConfig(
        steps=500, batch_size=32, sample_every=250, ckpt_every=250,
        optim=OptimConfig(lr=1e-3, min_lr=1e-5, warmup_steps=50, ema_decay=0.99)))


@dataclass
class SamplingConfig:
    """Sampling (`sample` stage): CFG on the velocity and the projection after CFG (paper Sec. 3.3)."""

    num_per_class: int = 50
    batch_size: int = 250
    cfg_scale: float = 3.0
    cfg_schedule: Literal["constant", "linear"] = "linear"
    sampler: Literal["euler", "euler_maruyama"] = "euler_maruyama"
    steps: int = 50
    final_step: float = 0.04
    projection: Projection = "auto"
    use_ema: bool = True
    seed: int = 0
    out: str = "outputs/samples"

    def __post_init__(self):
        require(self.num_per_class > 0, "num_per_class", self.num_per_class, "must be positive")
        require(self.batch_size > 0, "batch_size", self.batch_size, "must be positive")
        require(self.cfg_scale >= 0, "cfg_scale", self.cfg_scale, "must be >= 0 (1 = no guidance)")
        require(self.steps > 0, "steps", self.steps, "must be positive")
        require(0 <= self.final_step < 1, "final_step", self.final_step, "must be in [0, 1)")
        require(0 <= self.seed <= MAX_SEED, "seed", self.seed, f"must be in [0, {MAX_SEED}]")


@dataclass
class ClassifierConfig:
    """In-project classifier: the `classifier` feature extractor for FD/KID/PR (`train_classifier`)."""

    steps: int = 600
    batch_size: int = 128
    lr: float = 2e-3
    width: int = 32
    feature_dim: int = 128
    out: str = "outputs/classifier"

    def __post_init__(self):
        for name in ("steps", "batch_size", "width", "feature_dim"):
            require(getattr(self, name) > 0, name, getattr(self, name), "must be positive")
        require(self.lr > 0, "lr", self.lr, "must be positive")


@dataclass
class EvaluationConfig:
    """Generation and reconstruction metrics; metric names always carry the feature extractor."""

    extractors: list[Literal["classifier", "effnet", "inception"]] = field(default_factory=lambda: ["classifier"])
    inception_weights: str | None = None
    adm_reference: str | None = None
    lpips_weights_path: str | None = None
    num_real: int = 10_000
    kid_subset_size: int = 500
    pr_neighbours: int = 3
    batch_size: int = 250
    diagnostic_cfg_scales: list[float] = field(default_factory=lambda: [1.0, 3.0, 6.0])
    diagnostic_samples: int = 50
    diagnostic_steps: int = 25
    teacher_forced_images: int = 500
    out: str = "outputs/metrics"

    def __post_init__(self):
        require(len(self.extractors) > 0, "extractors", self.extractors, "list at least one extractor")
        require(len(set(self.extractors)) == len(self.extractors), "extractors", self.extractors, "must not repeat")
        for name in ("num_real", "kid_subset_size", "pr_neighbours", "batch_size", "diagnostic_samples",
                     "diagnostic_steps", "teacher_forced_images"):
            require(getattr(self, name) > 0, name, getattr(self, name), "must be positive")
        require(all(w >= 0 for w in self.diagnostic_cfg_scales), "diagnostic_cfg_scales",
                self.diagnostic_cfg_scales, "must all be >= 0")


@dataclass
class SweepConfig:
    """Ray Tune ablation grid (`sweep` stage). `enabled: false` runs no trial (the stage writes empty
    tables, the report says the sweep is off). Without `train`, posteriors that the DAG does not
    train (`tokenizer.posteriors`) are left out of the sweep, with one log line."""

    enabled: bool = True
    cfg_scales: list[float] = field(default_factory=lambda: [1.0, 3.0, 6.0])
    radii: list[float | None] = field(default_factory=lambda: [None])
    posteriors: list[Posterior] = field(default_factory=lambda: list(POSTERIORS))
    projections: list[Projection] = field(default_factory=lambda: ["auto"])
    sampler_steps: list[int] = field(default_factory=lambda: [25])
    seeds: list[int] = field(default_factory=lambda: [0])
    scheduler: Literal["grid", "asha"] = "grid"
    num_per_class: int = 20
    max_concurrent: int = 1
    train: bool = False  # train tokenizer + generator inside every trial (radius ablations always do)
    train_steps_fraction: float = 1.0  # training trials: tokenizer/generator steps (and warmup) scaled by this
    train_reports: int = 4  # asha: AR training in this many resumable segments, each reported to Tune
    gpus_per_trial: float = 0.0  # GPUs Ray reserves per trial (sampling + metrics run on it when > 0)
    out: str = "outputs/sweep"

    def __post_init__(self):
        require(all(w >= 0 for w in self.cfg_scales), "cfg_scales", self.cfg_scales, "must all be >= 0")
        require(all(r is None or r > 0 for r in self.radii), "radii", self.radii, "must all be positive or null")
        require(all(s > 0 for s in self.sampler_steps), "sampler_steps", self.sampler_steps, "must all be positive")
        require(self.num_per_class > 0, "num_per_class", self.num_per_class, "must be positive")
        require(self.max_concurrent > 0, "max_concurrent", self.max_concurrent, "must be positive")
        require(0 < self.train_steps_fraction <= 1, "train_steps_fraction", self.train_steps_fraction,
                "must be in (0, 1]")
        require(self.train_reports > 0, "train_reports", self.train_reports, "must be positive")
        require(self.gpus_per_trial >= 0, "gpus_per_trial", self.gpus_per_trial, "must be >= 0")
        require(self.gpus_per_trial <= 1 or self.gpus_per_trial.is_integer(), "gpus_per_trial",
                self.gpus_per_trial, "must be a fraction <= 1 or a whole number (Ray's rule for GPU requests)")
        require(self.scheduler != "asha" or self.train, "scheduler", self.scheduler,
                "asha stops trials on their AR training loss: set sweep.train: true")
        require(all(0 <= s <= MAX_SEED for s in self.seeds), "seeds", self.seeds, f"must all be in [0, {MAX_SEED}]")
        for name in ("cfg_scales", "radii", "posteriors", "projections", "sampler_steps", "seeds"):
            require(len(getattr(self, name)) > 0, name, getattr(self, name), "list at least one value")


@dataclass
class TrackingConfig:
    """MLflow: sqlite store inside the repo unless MLFLOW_TRACKING_URI is set."""

    enabled: bool = True
    experiment: str = "sphereard"
    store: str = "mlflow.db"
    artifacts: str = "mlartifacts"

    def __post_init__(self):
        for name in ("experiment", "store", "artifacts"):  # MLflow refuses empty names
            require(bool(getattr(self, name).strip()), name, getattr(self, name), "must not be empty")


@dataclass
class Params:
    profile: str = "default"
    seed: int = 0
    # The small metrics files (`<metrics_dir>/<block>/<posterior>.json`): git-tracked, so `dvc exp`
    # commits them with each experiment (see sphereard/layout.py). Large outputs stay under `out`s.
    metrics_dir: str = "metrics"
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self):
        require(0 <= self.seed <= MAX_SEED, "seed", self.seed, f"must be in [0, {MAX_SEED}] (numpy and torch seeds)")
        require(bool(self.metrics_dir.strip()), "metrics_dir", self.metrics_dir, "must not be empty")


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: params file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: params file unreadable ({type(err).__name__}: {err})") from None
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML ({first_lines(err)})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of config blocks at the top level")
    return data


def parse_params(data: dict) -> Params:
    """Validate a whole params mapping (types, ranges, then cross-block rules)."""
    params = from_dict(Params, data)
    validate_cross_block(params)
    return params


def load_params(path: str | Path = DEFAULT_PARAMS_FILE) -> Params:
    return parse_params(read_yaml(path))


def validate_cross_block(params: Params) -> None:
    """Rules spanning blocks: the tokenizer must fit the data, the generator the tokenizer."""
    from sphereard.ar.arch import resolve_generator_arch
    from sphereard.tokenizer.presets import tokenizer_arch

    tok = tokenizer_arch(params.tokenizer.preset, **params.tokenizer.overrides)
    require(tok.image_size == params.data.image_size, "tokenizer.preset", params.tokenizer.preset,
            f"image_size {tok.image_size} must equal data.image_size {params.data.image_size}")
    require(tok.in_channels == params.data.channels, "tokenizer.preset", params.tokenizer.preset,
            f"in_channels {tok.in_channels} must equal data.channels {params.data.channels}")
    gen = resolve_generator_arch(params.generator.preset, params.generator.overrides, "generator")
    grid = tok.image_size // tok.patch_size
    require(gen.grid_size == grid, "generator.preset", params.generator.preset,
            f"grid_size {gen.grid_size} must equal the tokenizer grid {grid}")
    require(gen.token_dim == tok.latent_dim, "generator.preset", params.generator.preset,
            f"token_dim {gen.token_dim} must equal the tokenizer latent_dim {tok.latent_dim}")


def absolute_paths(params: Params) -> Params:
    """A copy whose data/output paths are absolute: Ray workers may run in another directory."""
    def resolve(block):
        return dataclasses.replace(block, out=str(Path(block.out).resolve()))

    return dataclasses.replace(
        params, metrics_dir=str(Path(params.metrics_dir).resolve()), data=resolve(params.data),
        tokenizer=resolve(params.tokenizer), encode=resolve(params.encode),
        generator=resolve(params.generator), sampling=resolve(params.sampling), classifier=resolve(params.classifier),
        evaluation=resolve(params.evaluation), sweep=resolve(params.sweep))


def as_dict(params: Any) -> dict:
    return dataclasses.asdict(params)
