"""The IO manager: Dagster's pickled-file layout, written atomically.

Why not `dg.FilesystemIOManager`: it pickles straight into the asset's file, so a run killed mid-write leaves a
torn pickle where the last good value was, and two concurrent runs can interleave bytes. Same file names as
FilesystemIOManager (`<base_dir>/<asset key>[/<partition>]`), so an existing storage folder keeps loading.
"""

from __future__ import annotations

import pickle
from typing import Any

import dagster as dg

from skinr1_pipeline.storage.atomic import atomic_path


class AtomicPickleIOManager(dg.UPathIOManager):
    extension: str = ""

    def __init__(self, base_dir: str) -> None:
        from upath import UPath

        super().__init__(base_path=UPath(base_dir))

    def dump_to_path(self, context: dg.OutputContext, obj: Any, path) -> None:
        with atomic_path(str(path)) as tmp:
            with open(tmp, "wb") as fh:
                pickle.dump(obj, fh, pickle.HIGHEST_PROTOCOL)

    def load_from_path(self, context: dg.InputContext, path) -> Any:
        with open(str(path), "rb") as fh:
            return pickle.load(fh)


class AtomicFilesystemIOManager(dg.ConfigurableIOManagerFactory):
    """Asset values as pickles under `base_dir`, each replaced atomically (temp file, fsync, rename)."""

    base_dir: str

    def create_io_manager(self, context: dg.InitResourceContext) -> AtomicPickleIOManager:
        return AtomicPickleIOManager(self.base_dir)
