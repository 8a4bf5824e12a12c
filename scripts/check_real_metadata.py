"""Dev-only check: map every label of real public metadata files through the packaged label maps.

Not a test (the files are not part of the project). Usage:
    python scripts/check_real_metadata.py [--dir /work/shared/real-metadata]
Prints per-dataset coverage and the node/bucket of every label; exits 1 unless every dataset reaches 100 %.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from skinr1_pipeline.knowledge.label_maps import UnmappedLabelsError, load_label_maps
from skinr1_pipeline.knowledge.taxonomy import Taxonomy

# file name -> (dataset key, label column)
FILES = {
    "HAM10000_metadata.csv": ("ham10000", "dx"),
    "fitzpatrick17k.csv": ("fitzpatrick17k", "label"),
    "derm7pt_meta_reduced_columns.csv": ("derm7pt", "diagnosis"),
}


def check(folder: Path) -> bool:
    taxonomy = Taxonomy.load()
    maps = load_label_maps(taxonomy)
    all_ok = True
    for name, (dataset, column) in FILES.items():
        path = folder / name
        if not path.is_file():
            print(f"[skip] {path} not found")
            continue
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
        records = pd.DataFrame({"raw_label": table[column].str.strip(), "metadata_file": str(path)})
        try:
            mapped, report = maps[dataset].map_frame(records, taxonomy)
        except UnmappedLabelsError as exc:
            all_ok = False
            unmapped_rows = sum(u["count"] for u in exc.unmapped)
            coverage = 1 - unmapped_rows / max(len(records), 1)
            print(f"[FAIL] {dataset} ({name}, column {column}): coverage {coverage:.2%}\n{exc}")
            continue
        labels = report["labels"]
        print(
            f"[ok]   {dataset} ({name}, column {column}): {report['rows']} rows, {len(labels)} distinct labels, "
            f"coverage {report['coverage']:.0%}"
        )
        for raw, info in sorted(labels.items()):
            node = taxonomy[info["node"]]
            print(f"         {raw!r:<58} {info['count']:>6}  -> {node.id} (depth {node.level}, bucket {node.bucket})")
        buckets = mapped["bucket"].fillna("none").value_counts().to_dict()
        print(f"         rows per bucket: {buckets}")
    return all_ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/work/shared/real-metadata"))
    args = parser.parse_args()
    return 0 if check(args.dir) else 1


if __name__ == "__main__":
    sys.exit(main())
