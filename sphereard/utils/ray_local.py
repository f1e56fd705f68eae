"""Joining or starting Ray for this process: the one place that calls `ray.init`.

Local Ray by default (a fresh instance, loopback only, never someone else's cluster); with RAY_ADDRESS set,
the driver joins that cluster. Used by the training launcher (`train/launch.py`), the sweep and the data
stages' parallel map (`utils/parallel.py`), which is why it lives outside `train/`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import ray

from sphereard.errors import UserError

log = logging.getLogger(__name__)

RAY_ENV_DEFAULTS = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_CHDIR_TO_TRIAL_DIR": "0"}
# Ray's switch for single-machine instances (its default on macOS/Windows): the node IP is loopback,
# so every Ray server (GCS, raylet, workers, object manager, agents) listens on 127.0.0.1 only.
LOOPBACK_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
LOCAL_OBJECT_STORE_BYTES = 100 * 1024**2  # training data never goes through the object store
DATA_OBJECT_STORE_BYTES = 2 * 1024**3  # prepare / encode chunks in flight (utils/parallel.py)


@contextlib.contextmanager
def loopback_only() -> Iterator[None]:
    """Inside the block, a local Ray instance started here listens on loopback only (never on the
    machine's interfaces). Restored afterwards, so a later cluster join (RAY_ADDRESS, `ray start`)
    in this process or its children is unaffected.

    The Ray processes read the environment variable when they start; this process read it when
    `ray` was first imported, so its cached copy (a private constant) is switched too."""
    from ray._private import ray_constants

    saved_env, saved_flag = os.environ.get(LOOPBACK_ONLY_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[LOOPBACK_ONLY_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(LOOPBACK_ONLY_ENV, None)
        else:
            os.environ[LOOPBACK_ONLY_ENV] = saved_env


def init_ray(num_cpus_needed: int = 1, object_store_bytes: int = LOCAL_OBJECT_STORE_BYTES) -> None:
    """Join RAY_ADDRESS if set, else start a small local instance: loopback only, no dashboard, an object
    store of `object_store_bytes` (training: small; the data stages' chunks: DATA_OBJECT_STORE_BYTES).
    A running instance is kept as it is."""
    for key, value in RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
        log.info("joined Ray cluster at %s: %s", os.environ["RAY_ADDRESS"], ray.cluster_resources())
        return
    # Logical CPUs: never fewer than the workers ask for, or the trainer would wait forever.
    def quiet_state_api_warnings():  # runs in every Ray process of this job; pickled by value
        # Without a dashboard the state API is absent and Train V2's PlacementGroupCleaner warns
        # about it every few seconds; the cleaner only matters if the controller dies ungracefully.
        logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(logging.ERROR)

    with loopback_only():
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, num_cpus_needed), include_dashboard=False,
                 object_store_memory=object_store_bytes,
                 runtime_env={"worker_process_setup_hook": quiet_state_api_warnings})


def _unwrap(err: BaseException) -> BaseException:
    while (cause := getattr(err, "cause", None)) is not None and cause is not err:  # RayTaskError
        err = cause
    return err


def unwrap_task_error(err: BaseException) -> BaseException:
    """A Ray task's own exception inside its RayTaskError (a UserError comes back as one)."""
    cause = _unwrap(err)
    return UserError(str(cause)) if isinstance(cause, UserError) else cause
