"""A one-asset code location for the kill tests, written with the pipeline's own storage: a run folder from
`PipelineHome`, an atomic Parquet export, and the atomic IO manager. Run as
`python -m skinr1_pipeline_tests.kill_target <home> <rows> <value_items>` (materializes once, in this process)."""

import sys

import dagster as dg
import numpy as np
import pandas as pd

from skinr1_pipeline.defs.io_manager import AtomicFilesystemIOManager
from skinr1_pipeline.defs.resources import PipelineHome
from skinr1_pipeline.storage.atomic import write_parquet


class ExportConfig(dg.Config):
    rows: int = 1000
    value_items: int = 10
    tag: str = "first"


@dg.asset
def big_export(context: dg.AssetExecutionContext, config: ExportConfig, home: PipelineHome) -> dict:
    folder = home.run_dir(context, "outputs", "big_export")
    frame = pd.DataFrame({"i": np.arange(config.rows), "tag": config.tag})
    # Small row groups make a large write take long enough to be killed in the middle.
    path = write_parquet(frame, folder / "export.parquet", row_group_size=5_000)
    home.seal(context, folder)
    return {"path": str(path), "tag": config.tag, "payload": [(i, config.tag) for i in range(config.value_items)]}


def materialize(home: str, rows: int, value_items: int, tag: str) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [big_export],
        resources={
            "home": PipelineHome(home=home),
            "io_manager": AtomicFilesystemIOManager(base_dir=f"{home}/dagster_storage"),
        },
        run_config={"ops": {"big_export": {"config": {"rows": rows, "value_items": value_items, "tag": tag}}}},
    )


if __name__ == "__main__":
    result = materialize(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    sys.exit(0 if result.success else 1)
