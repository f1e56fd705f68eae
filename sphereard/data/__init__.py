"""Data layer: raw sources -> Parquet shards + manifest (the `prepare` stage) -> torch Dataset."""

from sphereard.utils.lazy import lazy_exports

_EXPORTS = {  # public name -> submodule defining it (imported on first use)
    "MANIFEST_FILE": "shards", "ShardDataset": "shards", "decode_png": "shards", "images_as_uint8": "shards",
    "load_manifest": "shards", "manifest_path": "shards", "prepare_dataset": "shards",
    "SOURCES": "sources", "SPLITS": "sources", "hash_split": "sources", "open_source": "sources",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
