"""DVC stage `prepare`: source images -> Parquet shards + manifest (sha256 per shard)."""

from __future__ import annotations

import logging

from pipelines._cli import stage_main
from sphereard.data import prepare_dataset

log = logging.getLogger("pipelines.prepare")


def run(params, args) -> None:
    manifest = prepare_dataset(params.data, params.data.out)
    counts = {split: info["rows"] for split, info in manifest["splits"].items()}
    log.info("prepared %s: %s images per split, %d classes -> %s",
             params.data.source, counts, manifest["num_classes"], params.data.out)


if __name__ == "__main__":
    stage_main(__doc__, run)
