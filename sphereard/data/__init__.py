"""Data layer: raw sources -> Parquet shards + manifest (the `prepare` stage) -> torch Dataset."""

from sphereard.data.shards import (MANIFEST_NAME, ShardDataset, decode_png, images_as_uint8,
                                   load_manifest, prepare_dataset)
from sphereard.data.sources import SOURCES, SPLITS, hash_split, open_source

__all__ = ["MANIFEST_NAME", "SOURCES", "SPLITS", "ShardDataset", "decode_png", "hash_split",
           "images_as_uint8", "load_manifest", "open_source", "prepare_dataset"]
