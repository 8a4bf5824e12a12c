"""Loaders for HAM10000 (+ISIC 2018 Task 3), ISIC 2019, BCN20000, PAD-UFES-20 and Derm7pt on their real layouts.

Every fixture is written in tmp_path with the real headers; the cases mirror what real copies do to loaders
(Dataverse `.tab`, extension-less names, Kaggle nesting and duplicated folders, one-hot vs metadata ground
truth, the Derm7pt index files and a reduced meta.csv) and what broken copies do (missing columns or images,
empty files, ambiguous one-hot rows, inconsistent split files).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from skinr1_pipeline.data.loaders import bcn20000, derm7pt, get_loader, ham10000, isic2019, pad_ufes_20
from skinr1_pipeline.data.loaders.common import RowChecks
from skinr1_pipeline.data.schema import QUARANTINE_COLUMNS, RECORD_COLUMNS, DatasetFormatError, LoadedDataset
from skinr1_pipeline_tests import loader_fixtures_a as fx

LOADERS = (ham10000, bcn20000, isic2019, pad_ufes_20, derm7pt)


def check_contract(loaded: LoadedDataset, dataset: str) -> pd.DataFrame:
    """Schema invariants every loader output must satisfy; returns the records for further checks."""
    records = loaded.records
    assert list(records.columns) == list(RECORD_COLUMNS)
    assert list(loaded.quarantine.columns) == list(QUARANTINE_COLUMNS)
    assert (records["source_dataset"] == dataset).all()
    assert records["sample_id"].str.startswith(f"{dataset}/").all()
    assert records["sample_id"].is_unique
    for path in records["image_path"]:
        assert Path(path).is_absolute() and Path(path).is_file()
    assert records["modality"].isin(["dermoscopic", "clinical"]).all()
    assert records["official_split"].map(lambda s: s in (None, "train", "valid", "test")).all()
    assert records["sex"].map(lambda s: s in (None, "male", "female")).all()
    assert records["age"].map(lambda a: a is None or isinstance(a, float)).all()  # NaN (a float) when unknown
    assert records["fitzpatrick"].dropna().isin(range(1, 7)).all()
    assert records["metadata_row"].map(lambda r: int(r) >= 1).all()
    assert (records["raw_label"] == records["raw_label"].str.strip()).all() and (records["raw_label"] != "").all()
    assert loaded.notes
    return records


def quarantined(loaded: LoadedDataset, reason: str) -> pd.DataFrame:
    return loaded.quarantine[loaded.quarantine["reason"] == reason]


@pytest.mark.parametrize("module", LOADERS, ids=lambda m: m.DATASET)
def test_registry_key_matches_module(module) -> None:
    assert get_loader(module.DATASET) is module.load


# ---- HAM10000 ---------------------------------------------------------------------------------------------
def test_ham_dataverse_layout(tmp_path: Path) -> None:
    loaded = ham10000.load(fx.build_ham(tmp_path))
    records = check_contract(loaded, "ham10000")
    assert loaded.class_counts() == fx.HAM_COUNTS
    assert loaded.quarantine.empty
    assert (records["official_split"] == "train").all() and (records["modality"] == "dermoscopic").all()
    first = records.set_index("sample_id").loc["ham10000/ISIC_0027419"]
    assert (first["lesion_id"], first["age"], first["sex"], first["site"]) == ("HAM_0000118", 80.0, "male", "scalp")
    assert first["metadata_row"] == 1 and first["patient_id"] is None
    assert Path(first["image_path"]).parent.name == "HAM10000_images_part_1"
    unknown = records.set_index("sample_id").loc["ham10000/ISIC_0026769"]
    assert pd.isna(unknown["age"]) and unknown["sex"] is None
    assert Path(records.set_index("sample_id").loc["ham10000/ISIC_0025030", "image_path"]).parent.name.endswith(
        "part_2"
    )


@pytest.mark.parametrize(
    ("name", "sep"),
    [("HAM10000_metadata.tab", "\t"), ("HAM10000_metadata", ","), ("HAM10000_metadata", "\t")],
    ids=["tab", "no-extension-csv", "no-extension-tsv"],
)
def test_ham_metadata_file_variants(tmp_path: Path, name: str, sep: str) -> None:
    loaded = ham10000.load(fx.build_ham(tmp_path, metadata_name=name, sep=sep))
    check_contract(loaded, "ham10000")
    assert loaded.class_counts() == fx.HAM_COUNTS
    assert loaded.metadata_files == [tmp_path / name]


def test_ham_kaggle_nesting_with_duplicate_folders(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    fx.build_ham(archive, folders=("HAM10000_images_part_1", "HAM10000_images_part_2"))
    for part in ("HAM10000_images_part_1", "HAM10000_images_part_2"):  # Kaggle ships every image twice
        shutil.copytree(archive / part, archive / part.lower())
    loaded = ham10000.load(tmp_path)
    records = check_contract(loaded, "ham10000")
    assert len(records) == len(fx.HAM_ROWS) and loaded.class_counts() == fx.HAM_COUNTS
    assert loaded.quarantine.empty
    assert records["image_path"].map(lambda p: Path(p).parent.name.startswith("HAM10000_images_part_")).all()
    assert any("several files" in note for note in loaded.notes)


def test_ham_kaggle_folder_names_only(tmp_path: Path) -> None:
    folders = ("ham10000_images_part_1/ham10000_images_part_1", "ham10000_images_part_2")
    loaded = ham10000.load(fx.build_ham(tmp_path, folders=folders))
    assert loaded.class_counts() == fx.HAM_COUNTS and loaded.quarantine.empty


def test_ham_with_isic2018_one_hot_test_set(tmp_path: Path) -> None:
    fx.build_ham(tmp_path)
    fx.build_isic2018_test(tmp_path, one_hot=True)
    loaded = ham10000.load(tmp_path)
    records = check_contract(loaded, "ham10000")
    test = records[records["official_split"] == "test"]
    assert dict(zip(test["sample_id"], test["raw_label"])) == {
        "ham10000/ISIC_0034524": "nv",
        "ham10000/ISIC_0034525": "mel",
        "ham10000/ISIC_0034526": "bkl",
        "ham10000/ISIC_0034527": "vasc",
    }
    assert test["lesion_id"].isna().all() and test["age"].isna().all()
    assert (records["official_split"] == "train").sum() == len(fx.HAM_ROWS)
    assert loaded.class_counts() == {**fx.HAM_COUNTS, "nv": 3, "mel": 2, "bkl": 3, "vasc": 2}
    assert len(loaded.metadata_files) == 2 and any("one-hot" in note for note in loaded.notes)


def test_ham_with_isic2018_metadata_style_test_set(tmp_path: Path) -> None:
    fx.build_ham(tmp_path)
    fx.build_isic2018_test(tmp_path, one_hot=False)
    loaded = ham10000.load(tmp_path)
    records = check_contract(loaded, "ham10000")
    test = records[records["official_split"] == "test"].set_index("sample_id")
    assert test["raw_label"].to_dict() == {
        "ham10000/ISIC_0034524": "nv",
        "ham10000/ISIC_0034525": "mel",
        "ham10000/ISIC_0034526": "bkl",
        "ham10000/ISIC_0034527": "vasc",
    }
    assert test.loc["ham10000/ISIC_0034524", "lesion_id"] == "HAM_9000000"
    assert test["metadata_file"].str.endswith(".tab").all()


def test_ham_one_hot_rows_without_exactly_one_class_are_quarantined(tmp_path: Path) -> None:
    fx.build_ham(tmp_path)
    fx.write_image(tmp_path / "ISIC2018_Task3_Test_Images" / "ISIC_0099998.jpg")
    fx.write_image(tmp_path / "ISIC2018_Task3_Test_Images" / "ISIC_0099999.jpg")
    two = ["ISIC_0099998", "1.0", "1.0", "0.0", "0.0", "0.0", "0.0", "0.0"]
    none = ["ISIC_0099999", "0.0", "0.0", "0.0", "0.0", "0.0", "0.0", "0.0"]
    fx.build_isic2018_test(tmp_path, one_hot=True, extra_rows=[two, none])
    loaded = ham10000.load(tmp_path)
    records = check_contract(loaded, "ham10000")
    bad = quarantined(loaded, "bad_label").set_index("sample_id")
    assert set(bad.index) == {"ham10000/ISIC_0099998", "ham10000/ISIC_0099999"}
    several = bad.loc["ham10000/ISIC_0099998", "detail"]
    assert "ISIC2018_Task3_Test_GroundTruth.csv row 5" in several and "MEL, NV" in several and "exactly one" in several
    assert (
        "row 6" in bad.loc["ham10000/ISIC_0099999", "detail"]
        and "no class column is 1" in bad.loc["ham10000/ISIC_0099999", "detail"]
    )
    assert (records["official_split"] == "test").sum() == len(fx.ISIC2018_TEST)
    assert any("bad_label: 2" in note for note in loaded.notes)


def test_ham_missing_image_is_quarantined_not_dropped(tmp_path: Path) -> None:
    fx.build_ham(tmp_path)
    (tmp_path / "HAM10000_images_part_1" / "ISIC_0026769.jpg").unlink()
    loaded = ham10000.load(tmp_path)
    check_contract(loaded, "ham10000")
    missing = quarantined(loaded, "missing_file")
    assert missing["sample_id"].tolist() == ["ham10000/ISIC_0026769"]
    assert "HAM10000_metadata.csv row 3" in missing["detail"].iloc[0]
    assert len(loaded.records) + len(loaded.quarantine) == len(fx.HAM_ROWS)
    assert loaded.class_counts() == {**fx.HAM_COUNTS, "nv": 1}
    assert any("missing_file: 1" in note for note in loaded.notes)


def test_ham_empty_label_is_quarantined(tmp_path: Path) -> None:
    rows = fx.ham_rows()
    rows[0]["dx"] = "  "
    fx.build_ham(tmp_path)
    fx.write_table(tmp_path / "HAM10000_metadata.csv", fx.HAM_COLUMNS, rows)
    loaded = ham10000.load(tmp_path)
    entry = quarantined(loaded, "missing_label").iloc[0]
    assert entry["sample_id"] == "ham10000/ISIC_0027419"
    assert "row 1" in entry["detail"] and "'dx'" in entry["detail"] and "expected one of" in entry["detail"]


def test_ham_missing_column_names_file_and_column(tmp_path: Path) -> None:
    columns = tuple(c for c in fx.HAM_COLUMNS if c != "dx")
    fx.write_table(tmp_path / "HAM10000_metadata.csv", columns, [{"image_id": "ISIC_0027419"}])
    with pytest.raises(DatasetFormatError) as err:
        ham10000.load(tmp_path)
    message = str(err.value)
    assert "HAM10000_metadata.csv" in message and "'dx'" in message and "lesion_id" in message


def test_ham_empty_metadata_file(tmp_path: Path) -> None:
    (tmp_path / "HAM10000_metadata.csv").write_text("")
    with pytest.raises(DatasetFormatError, match="HAM10000_metadata.csv is empty"):
        ham10000.load(tmp_path)


def test_ham_without_metadata_names_what_was_looked_for(tmp_path: Path) -> None:
    fx.write_image(tmp_path / "HAM10000_images_part_1" / "ISIC_0027419.jpg")
    with pytest.raises(DatasetFormatError, match="HAM10000_metadata"):
        ham10000.load(tmp_path)


def test_ham_ground_truth_in_neither_layout(tmp_path: Path) -> None:
    fx.build_ham(tmp_path)
    fx.write_table(
        tmp_path / "ISIC2018_Task3_Test_GroundTruth.csv", ("image", "MEL", "NV"), [["ISIC_0034524", "1", "0"]]
    )
    with pytest.raises(DatasetFormatError, match="ISIC2018_Task3_Test_GroundTruth.csv.*AKIEC"):
        ham10000.load(tmp_path)


@pytest.mark.slow  # writes 10,015 image files
def test_ham_full_size_loads_completely(tmp_path: Path) -> None:
    """10,015 rows (the real size) split over both image parts: every row resolves, none is quarantined.
    Load time is measured by benchmarks/bench_ingest.py, not asserted here."""
    rows = [fx.HAM_ROWS[i % len(fx.HAM_ROWS)] for i in range(10_015)]
    rows = [(f"HAM_{i:07d}", f"ISIC_{i:07d}", dx, age, sex, site) for i, (_, _, dx, age, sex, site) in enumerate(rows)]
    fx.write_table(tmp_path / "HAM10000_metadata.csv", fx.HAM_COLUMNS, fx.ham_rows(rows))
    for i, (_, image, *_rest) in enumerate(rows):
        folder = tmp_path / f"HAM10000_images_part_{1 + i // 5000}"
        folder.mkdir(exist_ok=True)
        (folder / f"{image}.jpg").write_bytes(b"")
    loaded = ham10000.load(tmp_path)
    assert len(loaded.records) == 10_015 and loaded.quarantine.empty
    assert loaded.records["image_path"].str.contains("HAM10000_images_part_3").sum() == 15


# ---- ISIC 2019 --------------------------------------------------------------------------------------------
def test_isic2019_training_layout(tmp_path: Path) -> None:
    loaded = isic2019.load(fx.build_isic2019(tmp_path))
    records = check_contract(loaded, "isic2019")
    assert loaded.class_counts() == {"AK": 1, "BCC": 1, "BKL": 1, "DF": 1, "MEL": 2, "NV": 2, "SCC": 1, "VASC": 1}
    assert loaded.quarantine.empty and (records["official_split"] == "train").all()
    by_id = records.set_index("sample_id")
    msk = by_id.loc["isic2019/ISIC_0000013_downsampled"]
    assert Path(msk["image_path"]).name == "ISIC_0000013_downsampled.jpg" and msk["lesion_id"] == "MSK4_0011169"
    assert by_id.loc["isic2019/ISIC_0000000", "lesion_id"] is None
    ak = by_id.loc["isic2019/ISIC_0024468"]
    assert (ak["age"], ak["sex"], ak["site"], ak["metadata_row"]) == (75.0, "male", "head/neck", 5)
    assert by_id.loc["isic2019/ISIC_0024470", "sex"] is None and pd.isna(by_id.loc["isic2019/ISIC_0024470", "age"])
    assert [p.name for p in loaded.metadata_files] == [
        "ISIC_2019_Training_GroundTruth.csv",
        "ISIC_2019_Training_Metadata.csv",
    ]


def test_isic2019_test_ground_truth_with_unk(tmp_path: Path) -> None:
    fx.build_isic2019(tmp_path)
    test_rows = [fx.one_hot_row("ISIC_0034321", "UNK"), fx.one_hot_row("ISIC_0034322", "MEL")]
    folder = tmp_path / "ISIC_2019_Test_GroundTruth"
    fx.write_table(
        folder / "ISIC_2019_Test_GroundTruth.csv", (*fx.ISIC2019_GT, "score_weight"), [r + ["1.0"] for r in test_rows]
    )
    fx.write_table(
        tmp_path / "ISIC_2019_Test_Metadata.csv",
        ("image", "age_approx", "anatom_site_general", "sex"),
        [["ISIC_0034321", "40.0", "palms/soles", "male"]],
    )
    for image in ("ISIC_0034321", "ISIC_0034322"):
        fx.write_image(tmp_path / "ISIC_2019_Test_Input" / f"{image}.jpg")
    loaded = isic2019.load(tmp_path)
    records = check_contract(loaded, "isic2019")
    test = records[records["official_split"] == "test"].set_index("sample_id")
    assert test["raw_label"].to_dict() == {"isic2019/ISIC_0034321": "UNK", "isic2019/ISIC_0034322": "MEL"}
    assert test.loc["isic2019/ISIC_0034321", "site"] == "palms/soles" and test["lesion_id"].isna().all()
    assert (records["official_split"] == "train").sum() == len(fx.ISIC2019_ROWS)


def test_isic2019_bad_one_hot_rows_are_quarantined(tmp_path: Path) -> None:
    two = fx.one_hot_row("ISIC_9000001", "MEL")
    two[2] = "1.0"  # NV too
    odd = fx.one_hot_row("ISIC_9000002", "NV")
    odd[3] = "0.5"
    blank = ["ISIC_9000003"] + [""] * 9
    zero = fx.one_hot_row("ISIC_9000004", None)
    fx.build_isic2019(tmp_path, extra_gt=[two, odd, blank, zero])
    for image in ("ISIC_9000001", "ISIC_9000002", "ISIC_9000003", "ISIC_9000004"):
        fx.write_image(tmp_path / "ISIC_2019_Training_Input" / f"{image}.jpg")
    loaded = isic2019.load(tmp_path)
    check_contract(loaded, "isic2019")
    q = loaded.quarantine.set_index("sample_id")
    assert q["reason"].to_dict() == {
        "isic2019/ISIC_9000001": "bad_label",
        "isic2019/ISIC_9000002": "bad_label",
        "isic2019/ISIC_9000003": "missing_label",
        "isic2019/ISIC_9000004": "bad_label",
    }
    assert "several class columns are 1 (MEL, NV)" in q.loc["isic2019/ISIC_9000001", "detail"]
    assert "ISIC_2019_Training_GroundTruth.csv row 11" in q.loc["isic2019/ISIC_9000001", "detail"]
    assert "column BCC holds '0.5'" in q.loc["isic2019/ISIC_9000002", "detail"]
    assert "no class column is 1" in q.loc["isic2019/ISIC_9000004", "detail"]
    assert len(loaded.records) == len(fx.ISIC2019_ROWS)


def test_isic2019_without_metadata(tmp_path: Path) -> None:
    loaded = isic2019.load(fx.build_isic2019(tmp_path, metadata=False))
    records = check_contract(loaded, "isic2019")
    assert len(records) == len(fx.ISIC2019_ROWS)
    assert records[["age", "sex", "site", "lesion_id"]].isna().all().all()
    assert any("no ISIC_2019_Training_Metadata" in note for note in loaded.notes)


def test_isic2019_missing_image_and_missing_column(tmp_path: Path) -> None:
    fx.build_isic2019(tmp_path)
    (tmp_path / "ISIC_2019_Training_Input" / "BCN_0000001.jpg").unlink()
    loaded = isic2019.load(tmp_path)
    assert quarantined(loaded, "missing_file")["sample_id"].tolist() == ["isic2019/BCN_0000001"]
    assert "SCC" not in loaded.class_counts()

    columns = tuple(c for c in fx.ISIC2019_GT if c != "SCC")
    fx.write_table(tmp_path / "ISIC_2019_Training_GroundTruth.csv", columns, [["ISIC_0000000"] + ["0.0"] * 8])
    with pytest.raises(DatasetFormatError) as err:
        isic2019.load(tmp_path)
    assert "ISIC_2019_Training_GroundTruth.csv" in str(err.value) and "'SCC'" in str(err.value)


# ---- BCN20000 ---------------------------------------------------------------------------------------------
def test_bcn_skin_r1_layout(tmp_path: Path) -> None:
    loaded = bcn20000.load(fx.build_bcn(tmp_path))
    records = check_contract(loaded, "bcn20000")
    assert loaded.class_counts() == {"AK": 1, "BCC": 1, "BKL": 1, "DF": 1, "MEL": 1, "NV": 2, "SCC": 1, "VASC": 1}
    splits = records.set_index("sample_id")["official_split"].to_dict()
    assert splits["bcn20000/BCN_0000000001"] == "train" and splits["bcn20000/BCN_0000000007"] == "train"
    assert splits["bcn20000/BCN_0000000003"] == "valid" and splits["bcn20000/BCN_0000000004"] == "valid"
    assert splits["bcn20000/BCN_0000000005"] == "test"
    first = records.iloc[0]
    assert (first["lesion_id"], first["age"], first["sex"], first["site"]) == (
        "BCN_lesion_0",
        55.0,
        "male",
        "anterior torso",
    )
    assert first["patient_id"] is None and first["modality"] == "dermoscopic"


def test_bcn_images_elsewhere_and_column_aliases(tmp_path: Path) -> None:
    fx.build_bcn(tmp_path, image_folder="download/ISIC-images/BCN20000")
    frame = pd.read_csv(tmp_path / "bcn_20k_train.csv", dtype=str, keep_default_na=False)
    frame = frame.rename(columns={"anatom_site_general": "anatom_site_general_challenge", "age_approx": "age"})
    frame.drop(columns=["split", "lesion_id"]).to_csv(tmp_path / "bcn_20k_train.csv", index=False)
    loaded = bcn20000.load(tmp_path)
    records = check_contract(loaded, "bcn20000")
    assert len(records) == len(fx.BCN_ROWS) and records["official_split"].isna().all()
    assert (records["site"] == "anterior torso").all() and (records["age"] == 55.0).all()
    assert any("['lesion_id', 'split']" in note for note in loaded.notes)


def test_bcn_unknown_split_value_becomes_none_with_note(tmp_path: Path) -> None:
    fx.build_bcn(tmp_path)
    rows = fx.bcn_rows()
    rows[0]["split"] = "fold3"
    fx.write_table(tmp_path / "bcn_20k_train.csv", fx.BCN_COLUMNS, rows)
    loaded = bcn20000.load(tmp_path)
    records = check_contract(loaded, "bcn20000").set_index("sample_id")
    assert records.loc["bcn20000/BCN_0000000001", "official_split"] is None
    assert records.loc["bcn20000/BCN_0000000002", "official_split"] == "train"
    assert any("'fold3': 1" in note for note in loaded.notes)


def test_bcn_missing_image_label_and_column(tmp_path: Path) -> None:
    fx.build_bcn(tmp_path)
    (tmp_path / "bcn_20k_train" / "BCN_0000000002.jpg").unlink()
    rows = fx.bcn_rows()
    rows[2]["diagnosis"] = ""
    fx.write_table(tmp_path / "bcn_20k_train.csv", fx.BCN_COLUMNS, rows)
    loaded = bcn20000.load(tmp_path)
    check_contract(loaded, "bcn20000")
    assert loaded.quarantine.set_index("sample_id")["reason"].to_dict() == {
        "bcn20000/BCN_0000000002": "missing_file",
        "bcn20000/BCN_0000000003": "missing_label",
    }
    assert "bcn_20k_train.csv row 3" in quarantined(loaded, "missing_label")["detail"].iloc[0]
    assert len(loaded.records) == len(fx.BCN_ROWS) - 2

    columns = tuple(c for c in fx.BCN_COLUMNS if c != "diagnosis")
    fx.write_table(tmp_path / "bcn_20k_train.csv", columns, [{"bcn_filename": "BCN_0000000001.jpg"}])
    with pytest.raises(DatasetFormatError) as err:
        bcn20000.load(tmp_path)
    assert "bcn_20k_train.csv" in str(err.value) and "'diagnosis'" in str(err.value)


# ---- PAD-UFES-20 ------------------------------------------------------------------------------------------
def test_pad_official_layout(tmp_path: Path) -> None:
    loaded = pad_ufes_20.load(fx.build_pad(tmp_path))
    records = check_contract(loaded, "pad_ufes_20")
    assert loaded.class_counts() == fx.PAD_COUNTS and loaded.quarantine.empty
    assert (records["modality"] == "clinical").all() and records["official_split"].isna().all()
    nev = records.set_index("sample_id").loc["pad_ufes_20/PAT_1516_1765_530"]
    assert (nev["patient_id"], nev["lesion_id"], nev["fitzpatrick"]) == ("PAT_1516", "PAT_1516_1765", 3)
    assert (nev["age"], nev["sex"], nev["site"]) == (8.0, "female", "ARM")
    ack = records.set_index("sample_id").loc["pad_ufes_20/PAT_1545_1867_547"]
    assert pd.isna(ack["fitzpatrick"]) and ack["sex"] is None
    bcc = records[records["raw_label"] == "BCC"]
    assert bcc["lesion_id"].nunique() == 1 and bcc["patient_id"].nunique() == 1


def test_pad_kaggle_nesting_and_corrected_spelling(tmp_path: Path) -> None:
    columns = tuple("fitzpatrick" if c == "fitspatrick" else c for c in fx.PAD_COLUMNS)
    loaded = pad_ufes_20.load(fx.build_pad(tmp_path, nested=True, columns=columns))
    records = check_contract(loaded, "pad_ufes_20")
    assert loaded.class_counts() == fx.PAD_COUNTS
    assert records["image_path"].map(lambda p: Path(p).parent.name == Path(p).parent.parent.name).all()
    assert records["fitzpatrick"].dropna().tolist() == [3, 3, 3, 2, 1, 4]


def test_pad_missing_image_and_column(tmp_path: Path) -> None:
    fx.build_pad(tmp_path)
    (tmp_path / "images" / "imgs_part_2" / "PAT_46_881_939.png").unlink()
    loaded = pad_ufes_20.load(tmp_path)
    check_contract(loaded, "pad_ufes_20")
    missing = quarantined(loaded, "missing_file")
    assert missing["sample_id"].tolist() == ["pad_ufes_20/PAT_46_881_939"]
    assert "metadata.csv row 2" in missing["detail"].iloc[0]
    assert loaded.class_counts() == {**fx.PAD_COUNTS, "BCC": 1}

    columns = tuple(c for c in fx.PAD_COLUMNS if c != "diagnostic")
    fx.write_table(tmp_path / "metadata.csv", columns, fx.pad_rows(columns))
    with pytest.raises(DatasetFormatError) as err:
        pad_ufes_20.load(tmp_path)
    assert "metadata.csv" in str(err.value) and "'diagnostic'" in str(err.value) and "img_id" in str(err.value)


# ---- Derm7pt ----------------------------------------------------------------------------------------------
def test_derm7pt_official_layout_two_samples_per_case(tmp_path: Path) -> None:
    fx.build_derm7pt(tmp_path)
    loaded = derm7pt.load(tmp_path)
    records = check_contract(loaded, "derm7pt")
    assert len(records) == 2 * len(fx.DERM7PT_ROWS) and loaded.quarantine.empty
    assert loaded.class_counts() == {
        "basal cell carcinoma": 2,
        "clark nevus": 4,
        "melanoma (in situ)": 2,
        "melanoma (less than 0.76 mm)": 2,
        "seborrheic keratosis": 2,
    }
    assert records["sample_id"].tolist()[:2] == ["derm7pt/case1/clinic", "derm7pt/case1/derm"]
    by_id = records.set_index("sample_id")
    assert by_id.loc["derm7pt/case1/clinic", "modality"] == "clinical"
    assert by_id.loc["derm7pt/case1/derm", "modality"] == "dermoscopic"
    assert by_id.loc["derm7pt/case1/derm", "image_path"].endswith("images/NEL/Nel026.jpg")
    pair = by_id.loc[["derm7pt/case3/clinic", "derm7pt/case3/derm"]]
    assert set(pair["lesion_id"]) == set(pair["patient_id"]) == {"derm7pt/case3"}
    assert set(pair["site"]) == {"head neck"} and set(pair["sex"]) == {"female"}
    assert set(pair["metadata_row"]) == {3}
    # positions are 0-based rows: index 0 is case_num 1 (matching on case_num would shift every case by one)
    split = records.groupby(records["lesion_id"])["official_split"].first().to_dict()
    assert split == {
        "derm7pt/case1": "train",
        "derm7pt/case2": "train",
        "derm7pt/case3": "train",
        "derm7pt/case4": "valid",
        "derm7pt/case5": "test",
        "derm7pt/case6": "test",
    }
    assert len(loaded.metadata_files) == 4


def test_derm7pt_case_different_folders_resolve_by_exact_path(tmp_path: Path) -> None:
    top = fx.build_derm7pt(tmp_path, base="")
    fx.write_image(top / "images" / "FCl" / "Fcl002.jpg", colour=(0, 0, 0))  # the real release has FCL and FCl
    loaded = derm7pt.load(tmp_path)
    path = loaded.records.set_index("sample_id").loc["derm7pt/case3/derm", "image_path"]
    assert Path(path).parent.name == "FCL"


def test_derm7pt_reduced_columns_without_split_files(tmp_path: Path) -> None:
    rows = [dict(zip(fx.DERM7PT_REDUCED, (dx, *["absent"] * 7, derm))) for dx, _, _, _, derm in fx.DERM7PT_ROWS]
    fx.write_table(tmp_path / "meta" / "meta.csv", fx.DERM7PT_REDUCED, rows)
    for *_, derm in fx.DERM7PT_ROWS:
        fx.write_image(tmp_path / "images" / derm)
    loaded = derm7pt.load(tmp_path)
    records = check_contract(loaded, "derm7pt")
    assert records["sample_id"].tolist() == [f"derm7pt/case{i}/derm" for i in range(1, 7)]
    assert (records["modality"] == "dermoscopic").all() and records["official_split"].isna().all()
    assert records["site"].isna().all() and records["sex"].isna().all()
    assert loaded.class_counts()["clark nevus"] == 2
    assert any("row number is used as case id" in note for note in loaded.notes)
    assert any("no split index files" in note for note in loaded.notes)


def test_derm7pt_case_in_no_split_file(tmp_path: Path) -> None:
    fx.build_derm7pt(tmp_path, splits={"train": [0, 1], "valid": [2], "test": [3]})
    loaded = derm7pt.load(tmp_path)
    records = check_contract(loaded, "derm7pt")
    none = records[records["official_split"].isna()]
    assert sorted(set(none["lesion_id"])) == ["derm7pt/case5", "derm7pt/case6"]
    assert any("2 cases are in no split index file" in note for note in loaded.notes)


def test_derm7pt_case_in_two_split_files_is_an_error(tmp_path: Path) -> None:
    fx.build_derm7pt(tmp_path, splits={"train": [0, 1, 2], "valid": [2, 3], "test": [4, 5]})
    with pytest.raises(DatasetFormatError, match=r"valid_indexes.csv and \['train_indexes.csv'\] both list .*\[2\]"):
        derm7pt.load(tmp_path)


def test_derm7pt_index_out_of_range_is_an_error(tmp_path: Path) -> None:
    fx.build_derm7pt(tmp_path, splits={"train": [0, 1, 2], "valid": [3], "test": [4, 6]})
    with pytest.raises(DatasetFormatError) as err:
        derm7pt.load(tmp_path)
    message = str(err.value)
    assert "test_indexes.csv row 2" in message and "index 6" in message and "0..5" in message


def test_derm7pt_non_numeric_index_is_an_error(tmp_path: Path) -> None:
    fx.build_derm7pt(tmp_path, splits={"train": [0], "valid": [1], "test": [2]})
    fx.write_table(tmp_path / "release_v0" / "meta" / "test_indexes.csv", ("indexes",), [["2"], ["NEL025"]])
    with pytest.raises(DatasetFormatError, match="test_indexes.csv row 2 column 'indexes' holds 'NEL025'"):
        derm7pt.load(tmp_path)


def test_derm7pt_missing_image_quarantines_only_that_view(tmp_path: Path) -> None:
    top = fx.build_derm7pt(tmp_path)
    (top / "images" / "NEL" / "Nel028.jpg").unlink()
    loaded = derm7pt.load(tmp_path)
    check_contract(loaded, "derm7pt")
    missing = quarantined(loaded, "missing_file")
    assert missing["sample_id"].tolist() == ["derm7pt/case2/derm"]
    assert "meta.csv row 2" in missing["detail"].iloc[0] and "NEL/Nel028.jpg" in missing["detail"].iloc[0]
    assert "derm7pt/case2/clinic" in set(loaded.records["sample_id"])
    assert len(loaded.records) + len(loaded.quarantine) == 2 * len(fx.DERM7PT_ROWS)


def test_derm7pt_missing_columns(tmp_path: Path) -> None:
    fx.write_table(tmp_path / "meta" / "meta.csv", ("case_num", "diagnosis", "location"), [["1", "lentigo", "back"]])
    with pytest.raises(DatasetFormatError) as err:
        derm7pt.load(tmp_path)
    assert "meta.csv" in str(err.value) and "'clinic', 'derm'" in str(err.value) and "location" in str(err.value)
    fx.write_table(tmp_path / "meta" / "meta.csv", ("case_num", "clinic", "derm"), [["1", "a.jpg", "b.jpg"]])
    with pytest.raises(DatasetFormatError, match=r"meta.csv lacks required column\(s\) \['diagnosis'\]"):
        derm7pt.load(tmp_path)


# ---- shared failure modes -----------------------------------------------------------------------------------
MAIN_TABLES = [
    (ham10000, "HAM10000_metadata.csv", fx.HAM_COLUMNS),
    (isic2019, "ISIC_2019_Training_GroundTruth.csv", fx.ISIC2019_GT),
    (bcn20000, "bcn_20k_train.csv", fx.BCN_COLUMNS),
    (pad_ufes_20, "metadata.csv", fx.PAD_COLUMNS),
    (derm7pt, "meta/meta.csv", fx.DERM7PT_COLUMNS),
]


@pytest.mark.parametrize(("module", "name", "columns"), MAIN_TABLES, ids=[m.DATASET for m, *_ in MAIN_TABLES])
def test_empty_and_header_only_tables_fail_clearly(tmp_path: Path, module, name: str, columns) -> None:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")
    with pytest.raises(DatasetFormatError, match=f"{Path(name).name} is empty"):
        module.load(tmp_path)
    fx.write_table(path, columns, [])
    with pytest.raises(DatasetFormatError, match=f"{Path(name).name} has a header but no data rows"):
        module.load(tmp_path)


def test_repeated_image_id_is_quarantined_as_duplicate(tmp_path: Path) -> None:
    fx.build_ham(tmp_path)
    rows = fx.ham_rows()
    fx.write_table(tmp_path / "HAM10000_metadata.csv", fx.HAM_COLUMNS, [*rows, rows[3]])
    loaded = ham10000.load(tmp_path)
    dup = quarantined(loaded, "duplicate_id")
    assert dup["sample_id"].tolist() == ["ham10000/ISIC_0031633"] and "row 10" in dup["detail"].iloc[0]
    assert loaded.class_counts() == fx.HAM_COUNTS


def test_derm7pt_meta_csv_at_root_with_images_beside_it(tmp_path: Path) -> None:
    fx.write_table(tmp_path / "meta.csv", fx.DERM7PT_COLUMNS, fx.derm7pt_rows())
    for *_, clinic, derm in fx.DERM7PT_ROWS:
        fx.write_image(tmp_path / "images" / clinic)
        fx.write_image(tmp_path / "images" / derm)
    loaded = derm7pt.load(tmp_path)
    assert len(check_contract(loaded, "derm7pt")) == 2 * len(fx.DERM7PT_ROWS) and loaded.quarantine.empty


def test_blank_filename_rows_get_a_file_row_sample_id_and_the_first_failure(tmp_path: Path) -> None:
    fx.build_bcn(tmp_path)
    rows = fx.bcn_rows()
    both = {**rows[0], "bcn_filename": "", "diagnosis": ""}
    no_name = {**rows[1], "bcn_filename": ""}
    fx.write_table(tmp_path / "bcn_20k_train.csv", fx.BCN_COLUMNS, [*rows, both, no_name])
    loaded = bcn20000.load(tmp_path)
    check_contract(loaded, "bcn20000")
    n = len(rows)
    q = loaded.quarantine.set_index("sample_id")
    assert q["reason"].to_dict() == {
        f"bcn20000/bcn_20k_train.csv#row{n + 1}": "missing_label",
        f"bcn20000/bcn_20k_train.csv#row{n + 2}": "missing_file",
    }
    assert q.loc[f"bcn20000/bcn_20k_train.csv#row{n + 2}", "detail"] == (
        f"bcn_20k_train.csv row {n + 2}: field 'bcn_filename' is empty, so no image can be matched"
    )
    assert len(loaded.records) == n


def test_row_checks_keep_earlier_reasons_and_fill_absent_record_fields() -> None:
    native = pd.Series(["a", "", "a", "b"], index=[10, 11, 12, 13])
    preset = pd.Series([None, None, None, "bad_label"], index=native.index, dtype="object")
    detail = pd.Series([None, None, None, "t.csv row 4: decoded"], index=native.index, dtype="object")
    checks = RowChecks.for_rows(
        "ds", native, "t.csv", pd.Series([1, 2, 3, 4], index=native.index), reason=preset, detail=detail
    )
    assert checks.sample_id.tolist() == ["ds/a", "ds/t.csv#row2", "ds/a", "ds/b"]
    checks.flag(native == "b", "missing_file", ": never reached")
    checks.repeated_id("id", native)
    assert preset.iloc[3] == "bad_label" and preset.iloc[:3].isna().all()  # the caller's series is not modified
    assert checks.reason.tolist() == [None, None, "duplicate_id", "bad_label"]
    assert checks.detail.tolist()[2:] == ["t.csv row 3: id 'a' repeats an earlier row", "t.csv row 4: decoded"]

    records = checks.records(pd.Series(["/x/a.jpg", "/x/n.jpg", None, None], index=native.index), {"raw_label": "L"})
    assert list(records.columns) == list(RECORD_COLUMNS) and records.index.tolist() == [10, 11]
    assert records["age"].isna().all() and (records["source_dataset"] == "ds").all()
    quarantine = checks.quarantine(pd.Series(["p0", "p1", "p2", "p3"], index=native.index))
    assert quarantine.index.tolist() == [0, 1] and quarantine["image_path"].tolist() == ["p2", "p3"]


@pytest.mark.parametrize(
    "edit, line",
    [
        (lambda rows: [rows[0] + ",extra", *rows[1:]], 2),  # pandas: silent shift
        (lambda rows: [rows[0], rows[1].rsplit(",", 2)[0], *rows[2:]], 3),
    ],
)
def test_ragged_metadata_row_is_an_error_naming_file_and_line(tmp_path: Path, edit, line) -> None:
    """A stray delimiter in the first data row made pandas take column 1 as the index: every column shifted, every
    image 'missing', no error. Long and short rows are now refused with the file and line."""
    root = fx.build_ham(tmp_path)
    metadata = root / "HAM10000_metadata.csv"
    header, *rows = metadata.read_text().splitlines()
    metadata.write_text("\n".join([header, *edit(rows)]) + "\n")
    with pytest.raises(DatasetFormatError, match=rf"HAM10000_metadata\.csv line {line} has \d+ fields, the header has"):
        ham10000.load(root)
