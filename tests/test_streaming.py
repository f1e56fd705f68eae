"""Streaming: training workers read row groups on demand (`sphereard/data/stream.py`).

The data order (`window_order`) is a pure function of (seed, epoch, rank), covers every row once per epoch,
deals disjoint row groups to the workers and touches one window of groups at a time; the readers hold at
most `cache_groups` groups. Measured, not assumed: a fresh process reads a full training epoch through the
tokenizer task's dataset and the trainer's loader, and its peak RSS on a 10x larger split stays within a
fixed margin of the smaller one's, while the same harness holding the split (the old reader) grows by
the split's size. The same for the latent cache."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from sphereard.config import DataConfig
from sphereard.data import prepare_dataset
from sphereard.data.stream import RowGroupReader, window_order
from sphereard.data.synthetic import write_image_folder
from sphereard.latents import LatentCacheWriter

SIZES = np.array([5, 7, 3, 8, 6, 4, 9, 2])  # rows per row group


def test_window_order_is_a_permutation_per_epoch_deterministic_per_seed():
    n = SIZES.sum()
    a = window_order(SIZES, seed=3, epoch=0, window=2)
    assert sorted(a.tolist()) == list(range(n))
    assert np.array_equal(a, window_order(SIZES, seed=3, epoch=0, window=2))
    assert not np.array_equal(a, window_order(SIZES, seed=3, epoch=1, window=2))
    assert not np.array_equal(a, window_order(SIZES, seed=4, epoch=0, window=2))


def _group_of(rows: np.ndarray) -> np.ndarray:
    return np.searchsorted(np.cumsum(SIZES), rows, side="right")


def test_window_order_reads_one_window_of_groups_at_a_time():
    """An LRU of `window` groups fed this order reads every group exactly once per epoch (a uniform
    permutation would need every group held); each window's rows come from `window` groups."""
    for window in (1, 3, 8):
        groups = _group_of(window_order(SIZES, seed=0, epoch=5, window=window))
        cache, reads = [], 0
        for g in groups:
            if g not in cache:
                reads += 1
                cache = (cache + [g])[-window:]
        assert reads == len(SIZES), (window, reads)
    uniform = _group_of(np.random.default_rng(0).permutation(SIZES.sum()))
    cache, reads = [], 0
    for g in uniform:
        if g not in cache:
            reads, cache = reads + 1, (cache + [g])[-3:]
    assert reads > 3 * len(SIZES)  # the control: a global shuffle re-reads groups many times


@pytest.mark.parametrize("world_size", [2, 3, 8, 16])
def test_window_order_gives_every_row_to_exactly_one_worker(world_size):
    """Equal epochs on every worker (DDP), no row read twice, only the last N mod W rows left out; each
    worker reads its groups a window at a time (an LRU of `window` groups reads each at most once)."""
    sizes = np.concatenate([SIZES, [1], [13]])  # uneven groups, one tiny
    n = sizes.sum()
    parts = [window_order(sizes, seed=1, epoch=2, window=2, rank=r, world_size=world_size) for r in range(world_size)]
    assert {len(p) for p in parts} == {n // world_size}
    rows = np.concatenate(parts)
    assert len(set(rows.tolist())) == len(rows) == n - n % world_size
    bounds = np.cumsum(sizes)
    for part in parts:
        groups, cache, reads = np.searchsorted(bounds, part, side="right"), [], 0
        for g in groups:
            if g not in cache:
                reads, cache = reads + 1, (cache + [g])[-2:]
        assert reads == len(set(groups.tolist()))


def test_row_group_reader_holds_at_most_its_capacity(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"x": np.arange(100)})
    pq.write_table(table, tmp_path / "a.parquet", row_group_size=10)
    held = []
    reader = RowGroupReader([tmp_path / "a.parquet"], ["x"], 2, lambda t, g: held.append(g) or t.column("x"))
    order = window_order(reader.sizes, seed=0, epoch=0, window=2)
    values = [reader.item(int(i))[0][reader.item(int(i))[1]].as_py() for i in order]
    assert sorted(values) == list(range(100))
    assert reader.reads == 10 and len(reader._cache) <= 2  # each group read once per epoch


# --- peak memory of a training worker's data path, in a fresh process ---------------------------------

HARNESS = textwrap.dedent("""
    import json, sys
    import pyarrow.parquet as pq
    from sphereard.config import Params
    from sphereard.train.sampler import make_loader
    from sphereard.tokenizer.task import TokenizerTask
    from sphereard.latents import LatentDataset
    kind, root, window, hold = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "hold"
    def rss_mb(key):  # VmRSS (now) or VmHWM (peak since the reset) of this process, MiB
        line = next(l for l in open("/proc/self/status") if l.startswith(key + ":"))
        return int(line.split()[1]) / 1024
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak: imports are not the data path
    start = rss_mb("VmRSS")
    if kind == "images":
        params = Params.model_validate({"data": {"out": root, "image_size": 64, "channels": 3},
                                        "tokenizer": {"overrides": {"image_size": 64, "in_channels": 3},
                                                      "train": {"shuffle_window": window}},
                                        "generator": {"overrides": {"grid_size": 16}}})
        dataset = TokenizerTask(params, "spherical").dataset()  # what every training worker builds
    else:
        dataset = LatentDataset(root, verify=False, cache_groups=window)
    held = [pq.read_table(f) for f in dataset.reader.files] if hold else None  # the old reader: whole split
    loader, sampler, per_epoch = make_loader(dataset, 64, 0, 1, 0, 0, False, window)
    sampler.set_epoch(0)
    batches = sum(1 for _ in loader)
    print(json.dumps({"peak_mb": rss_mb("VmHWM") - start, "batches": batches,
                      "reads": dataset.reader.reads, "groups": len(dataset.reader.sizes)}))
""")
MARGIN_MB = 20  # streaming: a 10x larger split may cost at most this much more peak memory


def _peak(kind: str, root, window: int = 4, hold: bool = False) -> dict:
    out = subprocess.run([sys.executable, "-c", HARNESS, kind, str(root), str(window), "hold" if hold else "stream"],
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def image_splits(tmp_path_factory):
    """Two prepared splits of 64x64 RGB noise (PNG ~12 kB each): 1,000 and 10,000 train images."""
    root = tmp_path_factory.mktemp("stream")
    out = {}
    for name, per_class in (("small", 100), ("large", 1000)):
        write_image_folder(root / f"src-{name}", num_classes=10, per_class=per_class, size=64, seed=1)
        cfg = DataConfig(source="imagefolder", path=str(root / f"src-{name}"), image_size=64, channels=3,
                         test_fraction=0.01, shard_rows=2048, row_group_rows=256)
        prepare_dataset(cfg, root / name)
        out[name] = root / name
    return out


@pytest.mark.slow
def test_training_worker_memory_does_not_grow_with_the_split(image_splits):
    small, large = _peak("images", image_splits["small"]), _peak("images", image_splits["large"])
    split_mb = sum(f.stat().st_size for f in image_splits["large"].glob("train-*.parquet")) / 2**20
    assert split_mb > 100  # holding the large split would show
    assert large["batches"] == 9900 // 64 and large["reads"] == large["groups"]  # one full epoch, each group once
    assert large["peak_mb"] - small["peak_mb"] < MARGIN_MB, (small, large)
    held = _peak("images", image_splits["large"], hold=True)  # the harness can see a held split
    assert held["peak_mb"] - large["peak_mb"] > 0.8 * split_mb, (large, held)


@pytest.mark.slow
def test_latent_cache_reader_memory_does_not_grow_with_the_cache(tmp_path):
    rng = np.random.default_rng(0)
    roots = {}
    for name, rows in (("small", 2048), ("large", 20480)):
        meta = {"posterior": "spherical", "radius": 4.0, "on_sphere": True, "latent_dim": 16, "grid_size": 8,
                "num_classes": 10, "tokenizer": {}}
        with LatentCacheWriter(tmp_path / name, meta, "float32") as cache:
            for _ in range(rows // 256):
                moments = rng.standard_normal((256, 64, 17)).astype(np.float32)
                moments[..., -1] = 30.0  # kappa
                cache.write(moments, rng.integers(0, 10, 256))
        roots[name] = tmp_path / name
    small, large = _peak("latents", roots["small"]), _peak("latents", roots["large"])
    cache_mb = (tmp_path / "large" / "latents.parquet").stat().st_size / 2**20
    assert cache_mb > 70 and large["reads"] == large["groups"] == 80
    assert large["peak_mb"] - small["peak_mb"] < MARGIN_MB, (small, large)
