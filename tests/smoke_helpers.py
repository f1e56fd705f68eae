"""Smoke-profile params for two-worker TokenizerTask runs (multi-node and fault-tolerance tests)."""


from sphereard.config import Params, absolute_paths, parse_params
from sphereard.data import prepare_dataset
from sphereard.profiles import materialise

IMAGES_PER_CLASS = 8
LOCAL_BATCH = 16


def two_worker_tokenizer_params(root, steps: int, ckpt_every: int, **ray_changes) -> Params:
    """Smoke data prepared under `root`; a 2-worker, 1-CPU-each tokenizer run without LPIPS or GAN."""
    data = materialise("smoke")
    data["data"]["out"] = str(root / "shards")
    data["data"]["max_per_class"] = IMAGES_PER_CLASS
    data["tokenizer"]["out"] = str(root / "tokenizer")
    params = absolute_paths(parse_params(data))
    prepare_dataset(params.data, params.data.out)
    tok = params.tokenizer
    ray = tok.train.ray.model_copy(update=dict(num_workers=2, cpus_per_worker=1, storage=str(root / "ray"),
                                               **ray_changes))
    train = tok.train.model_copy(update=dict(steps=steps, batch_size=LOCAL_BATCH, ckpt_every=ckpt_every,
                                             log_every=ckpt_every, sample_every=steps, lpips_weight=0.0,
                                             disc_weight=0.0, ray=ray))
    return params.model_copy(update={"tokenizer": tok.model_copy(update={"train": train})})
