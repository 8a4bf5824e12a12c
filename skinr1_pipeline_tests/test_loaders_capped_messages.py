"""Messages quote values from a user's files capped: a 20 MB label once became a 20 MB exception in the Dagster log.

Each case plants one huge value in an otherwise valid copy and checks that what reaches a person (error message,
quarantine detail, note) stays short yet still says where the value is: file, row and field.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from skinr1_pipeline.data.loaders import ham10000, omnimedvqa
from skinr1_pipeline.data.schema import DatasetFormatError
from skinr1_pipeline.knowledge.label_maps import LabelMapError, UnmappedLabelsError, load_label_maps
from skinr1_pipeline.messages import capped, capped_list
from skinr1_pipeline_tests import loader_fixtures_a as fx
from skinr1_pipeline_tests import loader_fixtures_b as fxb

SHORT = 1024  # what "short" means for one message
HUGE = 20 * 1024 * 1024  # over the csv module's field limit (131072)
LONG = 100_000  # under it: the value gets past the table reader and into label mapping and quarantine details


def ham_with(tmp_path: Path, row: int, **fields: str) -> Path:
    """A HAM10000 copy whose data row `row` (1-based) has `fields` replaced."""
    root = fx.build_ham(tmp_path)
    rows = fx.ham_rows()
    rows[row - 1].update(fields)
    fx.write_table(root / "HAM10000_metadata.csv", fx.HAM_COLUMNS, rows)
    return root


def test_capped_keeps_short_values_and_says_how_long_a_cut_one_was() -> None:
    assert capped("mel") == "mel"
    assert capped("x" * 81) == "x" * 80 + "... (81 chars)"
    assert capped_list(["a"] * 40, items=2) == "['a', 'a'] (+38 more)"


def test_a_20_mb_label_fails_with_a_short_message_naming_file_row_and_field(tmp_path: Path) -> None:
    assert csv.field_size_limit() < HUGE
    root = ham_with(tmp_path, 3, dx="m" * HUGE)
    with pytest.raises(DatasetFormatError) as err:
        ham10000.load(root)
    message = str(err.value)
    assert len(message) < SHORT
    assert "HAM10000_metadata.csv line 4" in message and "data row 3, field 'dx'" in message
    assert f"({HUGE} chars)" in message


def test_a_long_unmapped_label_is_reported_short_with_file_row_and_field(tmp_path: Path, tax) -> None:
    root = ham_with(tmp_path, 5, dx="q" * LONG)
    loaded = ham10000.load(root)
    assert all(len(note) < SHORT for note in loaded.notes)
    assert any(f"({LONG} chars)" in note for note in loaded.notes)  # the undocumented-code note, capped
    with pytest.raises(UnmappedLabelsError) as err:
        load_label_maps(tax)["ham10000"].map_frame(loaded.records, tax)
    message = str(err.value)
    assert len(message) < SHORT
    assert "HAM10000_metadata.csv (first: row 5)" in message and "(field: dx)" in message
    assert err.value.unmapped[0]["label"] == "q" * LONG  # the full value stays available to code


def test_long_image_ids_are_capped_in_quarantine_details(tmp_path: Path) -> None:
    long_id = "ISIC_" + "9" * LONG
    root = fx.build_ham(tmp_path)
    rows = fx.ham_rows()
    rows[1]["image_id"] = rows[2]["image_id"] = long_id  # missing file, then a repeat of it
    fx.write_table(root / "HAM10000_metadata.csv", fx.HAM_COLUMNS, rows)
    quarantine = ham10000.load(root).quarantine.set_index("reason")
    missing, repeated = quarantine.loc["missing_file", "detail"], quarantine.loc["duplicate_id", "detail"]
    for detail, row in ((missing, 2), (repeated, 3)):
        assert len(detail) < SHORT and f"HAM10000_metadata.csv row {row}: " in detail
        assert f"({len(long_id)} chars)" in detail
    assert "image_id '" in repeated


def test_a_long_column_name_is_capped_in_the_missing_column_error(tmp_path: Path) -> None:
    root = fx.build_ham(tmp_path)
    columns = ["c" * LONG if c == "dx" else c for c in fx.HAM_COLUMNS]
    fx.write_table(root / "HAM10000_metadata.csv", columns, [[r[c] for c in fx.HAM_COLUMNS] for r in fx.ham_rows()])
    with pytest.raises(DatasetFormatError) as err:
        ham10000.load(root)
    message = str(err.value)
    assert len(message) < SHORT and "HAM10000_metadata.csv lacks required column(s) ['dx']" in message


def test_a_20_mb_answer_in_a_question_file_is_capped_in_its_quarantine_detail(tmp_path: Path) -> None:
    options = ["Melanoma", "Melanocytic nevus", "o" * LONG]
    items = [
        fxb.omni_item("q1", "ISIC2018", "Images/ISIC2018/a.jpg", "a" * HUGE, options),
        fxb.omni_item("q2", "ISIC2018", "Images/ISIC2018/b.jpg", "Melanoma", options),
    ]
    fxb.build_omnimedvqa(tmp_path, {"Open-access/ISIC2018.json": items})
    loaded = omnimedvqa.load(tmp_path)
    detail = loaded.quarantine.set_index("sample_id").loc["omnimedvqa/q1", "detail"]
    assert len(detail) < SHORT
    assert detail.startswith("ISIC2018.json item 1: field 'gt_answer' 'aaa") and f"({HUGE} chars)" in detail
    assert f"({LONG} chars)" in detail  # the listed options are capped too


def test_label_map_override_problems_cap_the_labels_they_quote(tmp_path: Path, tax) -> None:
    # An explicit key ('? '): YAML refuses implicit keys over 1024 characters.
    (tmp_path / "ham.yaml").write_text(f"dataset: ham10000\nlabels:\n  ? {'z' * LONG}\n  : no_such_node\n")
    with pytest.raises(LabelMapError) as err:
        load_label_maps(tax, tmp_path)
    message = str(err.value)
    assert len(message) < SHORT and "ham.yaml" in message and "'no_such_node' is not a taxonomy node id" in message


def test_duplicate_sample_ids_are_counted_and_quoted_short() -> None:
    import pandas as pd

    from skinr1_pipeline.data.schema import RECORD_COLUMNS, LoadedDataset

    long_id = "x" * 5_000_000
    records = pd.DataFrame(
        [{c: None for c in RECORD_COLUMNS} | {"sample_id": sid} for sid in [long_id, long_id, "a", "a"]]
    )
    with pytest.raises(DatasetFormatError) as err:
        LoadedDataset(name="toy", root=Path("toy"), records=records)
    assert "2 duplicate sample ids" in str(err.value) and len(str(err.value)) < 1000
