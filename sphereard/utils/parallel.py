"""Order-preserving parallel map over Ray tasks, for the `prepare` and `encode` stages.

`ordered_map(fn, chunks, workers)` yields `fn(chunk)` for each chunk in input order. With
workers = 0 it runs in this process (no Ray); otherwise each chunk is a Ray task (`num_cpus`,
`num_gpus` each) on the local instance or the cluster at RAY_ADDRESS (`utils.ray_local.init_ray`), with
at most 2 x workers chunks in flight, so memory holds a bounded number of chunks whatever the
input size. The results come back in order, so a writer fed from it writes the same bytes as the
single-process path.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

IN_FLIGHT_PER_WORKER = 2


def ordered_map(fn: Callable[[Any], Any], chunks: Iterable[Any], workers: int, num_cpus: float = 1,
                num_gpus: float = 0) -> Iterator[Any]:
    """fn(chunk) for each chunk, in order; `fn` must be a picklable module-level function.

    Raises what `fn` raised (a Ray task's exception unwrapped: a UserError stays one line)."""
    if workers == 0:
        yield from map(fn, chunks)
        return
    import ray

    from sphereard.utils.ray_local import DATA_OBJECT_STORE_BYTES, init_ray, unwrap_task_error

    init_ray(workers * max(1, int(num_cpus)), DATA_OBJECT_STORE_BYTES)
    task = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus)(fn)
    pending: deque = deque()

    def result(ref):
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as err:
            raise unwrap_task_error(err) from None

    for chunk in chunks:
        pending.append(task.remote(chunk))
        if len(pending) >= IN_FLIGHT_PER_WORKER * workers:
            yield result(pending.popleft())
    while pending:
        yield result(pending.popleft())
