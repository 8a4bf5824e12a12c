"""One loader module per public dataset; each exposes `DATASET` (its key) and `load(root) -> LoadedDataset`.

The registry imports lazily so that listing the supported datasets costs nothing and one broken optional
dependency cannot stop the others from loading.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from skinr1_pipeline.data.schema import LoadedDataset

LOADER_MODULES: dict[str, str] = {
    "ham10000": "skinr1_pipeline.data.loaders.ham10000",
    "bcn20000": "skinr1_pipeline.data.loaders.bcn20000",
    "isic2019": "skinr1_pipeline.data.loaders.isic2019",
    "pad_ufes_20": "skinr1_pipeline.data.loaders.pad_ufes_20",
    "derm7pt": "skinr1_pipeline.data.loaders.derm7pt",
    "derm12345": "skinr1_pipeline.data.loaders.derm12345",
    "dermnet": "skinr1_pipeline.data.loaders.dermnet",
    "fitzpatrick17k": "skinr1_pipeline.data.loaders.fitzpatrick17k",
    "omnimedvqa": "skinr1_pipeline.data.loaders.omnimedvqa",
}
SUPPORTED_DATASETS: tuple[str, ...] = tuple(LOADER_MODULES)


def get_loader(dataset: str) -> Callable[[Path], LoadedDataset]:
    try:
        module_name = LOADER_MODULES[dataset]
    except KeyError:
        raise ValueError(f"unknown dataset {dataset!r}; supported: {', '.join(SUPPORTED_DATASETS)}") from None
    return importlib.import_module(module_name).load


def load_dataset(dataset: str, root: Path) -> LoadedDataset:
    return get_loader(dataset)(Path(root))
