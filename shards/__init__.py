"""GOTURN shard format v1: reading (`open_dataset`), checking (``python -m shards.verify``) and summarising
(``python -m shards.stats``) the WebDataset shards written by ``python -m pipeline.build_shards``.

The format itself is documented in ``shards/SCHEMA.md``; names and rules shared by writer and readers live in
`shards.format`. The reader is imported lazily, so the writer side (`shards.format`, `shards.tarwriter`) needs
neither webdataset nor braceexpand.
"""

from __future__ import annotations

from typing import Any

__all__ = ["decode_sample", "open_dataset", "shard_paths"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from shards import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module 'shards' has no attribute {name!r}")
