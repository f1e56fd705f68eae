"""What a training run is made of, as one hash: its settings, its seed and the code it runs.

Checkpoint folders are DVC `persist: true` outputs, so a rerun resumes from them. That is right
after an interruption, and wrong after DVC reruns the stage because its code or params changed:
the finished checkpoint of the old code would be exported as the new result. Every checkpoint
records the run's fingerprint; `launch.fit` discards a checkpoint folder whose fingerprint differs
before training (one warning naming it), so a changed run starts from step 0.

Code = the source files of the task's module and the training loop's, with everything they can
import from this repo (`sphereard.utils.imports.code_closure`, the same analysis as the DVC code
deps): a fixed set, whatever a process happens to have imported.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

from sphereard.utils.imports import REPO, code_closure

LOOP_MODULE = "sphereard.train.launch"  # the launcher, the generic loop, checkpoints, optim


def code_fingerprint(modules: Iterable[str]) -> str:
    """sha256 over (path, source bytes) of the repo files `modules` can run, in path order."""
    files = sorted({f for m in modules for f in code_closure(m)})
    digest = hashlib.sha256()
    for rel in files:
        digest.update(rel.encode() + b"\0" + (REPO / rel).read_bytes() + b"\0")
    return digest.hexdigest()


def task_module(task_factory) -> str:
    """The module defining a task class or a `functools.partial` of one."""
    return getattr(getattr(task_factory, "func", task_factory), "__module__", "") or ""


def run_fingerprint(config: dict, seed: int, task_factory=None) -> str:
    """sha256 of the run's declared settings (JSON, sorted keys), its seed and the code of its task
    and of the training loop (`code_fingerprint`)."""
    settings = json.dumps({"config": config, "seed": seed}, sort_keys=True, default=str)
    code = code_fingerprint([LOOP_MODULE, task_module(task_factory)])
    return hashlib.sha256((settings + "\0" + code).encode()).hexdigest()
