"""Loaders for DERM12345, DermNet, Fitzpatrick17k and OmniMedVQA on tiny copies of their real layouts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from skinr1_pipeline.data.loaders import derm12345, dermnet, fitzpatrick17k, get_loader, load_dataset, omnimedvqa
from skinr1_pipeline.data.schema import QUARANTINE_COLUMNS, RECORD_COLUMNS, DatasetFormatError, LoadedDataset
from skinr1_pipeline_tests import loader_fixtures_b as fx


def check_contract(loaded: LoadedDataset, rows_seen: int) -> None:
    """Every input row is a record or a quarantine entry, and records carry the full schema."""
    assert list(loaded.records.columns) == list(RECORD_COLUMNS)
    assert list(loaded.quarantine.columns) == list(QUARANTINE_COLUMNS)
    assert len(loaded.records) + len(loaded.quarantine) == rows_seen
    recs = loaded.records
    assert recs["sample_id"].str.startswith(loaded.name + "/").all()
    assert (recs["source_dataset"] == loaded.name).all()
    assert recs["image_path"].map(lambda p: Path(p).is_absolute() and Path(p).is_file()).all()
    assert recs["modality"].isin(["dermoscopic", "clinical"]).all()
    assert recs["official_split"].isin(["train", "valid", "test"]).all() or recs["official_split"].isna().all()
    assert (recs["raw_label"] == recs["raw_label"].str.strip()).all() and (recs["raw_label"] != "").all()
    assert loaded.quarantine["detail"].map(bool).all()


# ------------------------------------------------------------------------------------------------ DERM12345
def test_derm12345_skin_r1_layout(tmp_path: Path) -> None:
    loaded = derm12345.load(fx.build_derm12345(tmp_path))
    check_contract(loaded, 6)
    assert loaded.class_counts() == {"alm": 1, "bcc": 3, "cb": 1, "sk": 1}
    recs = loaded.records.set_index("sample_id")
    assert recs.loc["derm12345/d_0003", "official_split"] == "train"
    assert recs.loc["derm12345/d_0101", "official_split"] == "test"
    assert "derm12345_train_part_2" in recs.loc["derm12345/d_0002", "image_path"]
    assert recs.loc["derm12345/d_0102", "metadata_row"] == 2
    assert recs.loc["derm12345/d_0102", "metadata_file"].endswith("derm12345_metadata_test.csv")
    assert (recs["modality"] == "dermoscopic").all() and recs["patient_id"].isna().all()
    assert loaded.quarantine.empty
    assert get_loader("derm12345") is derm12345.load and derm12345.DATASET == "derm12345"


def test_derm12345_dataverse_tab_in_wrapper_folder(tmp_path: Path) -> None:
    fx.build_derm12345(tmp_path / "DERM12345" / "dataverse_files", suffix=".tab", with_patient=True)
    loaded = load_dataset("derm12345", tmp_path)
    check_contract(loaded, 6)
    assert loaded.class_counts() == {"alm": 1, "bcc": 3, "cb": 1, "sk": 1}
    assert loaded.records.set_index("sample_id").loc["derm12345/d_0001", "patient_id"] == "p_01"
    assert all(p.suffix == ".tab" for p in loaded.metadata_files)


def test_derm12345_missing_image_blank_label_and_repeat_are_quarantined(tmp_path: Path) -> None:
    train = (("d_0001", "bcc"), ("d_0002", ""), ("d_0003", "alm"), ("d_0001", "bcc"))
    loaded = derm12345.load(fx.build_derm12345(tmp_path, train=train, skip_images=["d_0003"]))
    check_contract(loaded, 6)
    assert loaded.class_counts() == {"bcc": 2, "sk": 1}
    q = loaded.quarantine.set_index("reason")
    assert set(q.index) == {"missing_label", "missing_file", "duplicate_id"}
    assert "derm12345_metadata_train.csv row 2" in q.loc["missing_label", "detail"]
    assert "'label'" in q.loc["missing_label", "detail"]
    assert q.loc["missing_file", "sample_id"] == "derm12345/d_0003"
    assert "row 3" in q.loc["missing_file", "detail"]
    assert "row 4" in q.loc["duplicate_id", "detail"]
    assert any("quarantined" in n and "3" in n for n in loaded.notes)


def test_derm12345_split_column_wins_over_file(tmp_path: Path) -> None:
    fx.build_derm12345(tmp_path)
    path = tmp_path / "derm12345_metadata_train.csv"
    table = pd.read_csv(path, dtype=str)
    table.loc[0, "split"] = "test"
    table.loc[1, "split"] = ""
    table.to_csv(path, index=False)
    loaded = derm12345.load(tmp_path)
    split = loaded.records.set_index("sample_id")["official_split"]
    assert split["derm12345/d_0001"] == "test" and split["derm12345/d_0002"] == "train"
    assert any("disagrees" in n for n in loaded.notes) and any("blank or unknown" in n for n in loaded.notes)


def test_derm12345_missing_column_names_file_and_column(tmp_path: Path) -> None:
    fx.build_derm12345(tmp_path)
    path = tmp_path / "derm12345_metadata_test.csv"
    pd.read_csv(path, dtype=str).drop(columns=["sub_class"]).to_csv(path, index=False)
    with pytest.raises(DatasetFormatError) as err:
        derm12345.load(tmp_path)
    assert "derm12345_metadata_test.csv" in str(err.value) and "sub_class" in str(err.value)
    assert "found columns" in str(err.value)


def test_derm12345_empty_or_absent_table(tmp_path: Path) -> None:
    fx.build_derm12345(tmp_path)
    (tmp_path / "derm12345_metadata_train.csv").write_text("", encoding="utf-8")
    with pytest.raises(DatasetFormatError, match=r"derm12345_metadata_train\.csv is empty"):
        derm12345.load(tmp_path)
    (tmp_path / "derm12345_metadata_train.csv").unlink()
    with pytest.raises(DatasetFormatError, match="derm12345_metadata_train"):
        derm12345.load(tmp_path)


# -------------------------------------------------------------------------------------------------- DermNet
SEB = "Seborrheic Keratoses and other Benign Tumors"


def test_dermnet_kaggle_layout(tmp_path: Path) -> None:
    loaded = dermnet.load(fx.build_dermnet(tmp_path))
    check_contract(loaded, 7)
    assert loaded.class_counts() == {
        "Eczema Photos|": 1,
        "Eczema Photos|eczema hand": 2,
        f"{SEB}|dermatosis papulosa nigra": 1,
        f"{SEB}|seborrheic keratosis irritated": 3,
    }
    recs = loaded.records.set_index("sample_id")
    assert recs["official_split"].value_counts().to_dict() == {"train": 5, "test": 2}
    # the same file name in train/ and test/ stays two samples
    assert {"dermnet/train/Eczema Photos/eczema-hand-12.jpg", "dermnet/test/Eczema Photos/eczema-hand-12.jpg"} <= set(
        recs.index
    )
    row = recs.loc[f"dermnet/train/{SEB}/seborrheic-keratosis-irritated-28.jpg"]
    assert row["metadata_file"] == str(tmp_path.resolve() / "train" / SEB) and pd.isna(row["metadata_row"])
    assert (recs["modality"] == "clinical").all()


def test_dermnet_unparsed_stem_keeps_folder_and_is_counted(tmp_path: Path) -> None:
    loaded = dermnet.load(fx.build_dermnet(tmp_path))
    row = loaded.records.set_index("sample_id").loc["dermnet/train/Eczema Photos/03EczemaExcoriated.jpg"]
    assert row["raw_label"] == "Eczema Photos|"
    assert any("1 file stems do not follow" in n for n in loaded.notes)


def test_dermnet_wrapper_folder_stray_files_and_non_images(tmp_path: Path) -> None:
    base = fx.build_dermnet(tmp_path / "archive")
    fx.write_image(base / "train" / "loose-photo-1.jpg")
    (base / "train" / SEB / "Thumbs.db").write_bytes(b"\0")
    (base / "README.txt").write_text("dermnet", encoding="utf-8")
    fx.write_image(tmp_path / "__MACOSX" / "train" / SEB / "._seborrheic-keratosis-irritated-28.jpg")
    fx.write_image(base / "__MACOSX" / "train" / SEB / "._seborrheic-keratosis-irritated-28.jpg")
    fx.write_image(base / "test" / SEB / "._seborrheic-keratosis-irritated-5.jpg")
    loaded = dermnet.load(tmp_path)
    check_contract(loaded, 8)
    q = loaded.quarantine.iloc[0]
    assert (q["reason"], q["sample_id"]) == ("bad_label", "dermnet/train/loose-photo-1.jpg")
    assert "no category folder" in q["detail"]
    assert any("3 non-image files" in n for n in loaded.notes) and any("__MACOSX" in n for n in loaded.notes)


def test_dermnet_without_split_folders_fails_clearly(tmp_path: Path) -> None:
    fx.write_image(tmp_path / "Eczema Photos" / "eczema-1.jpg")
    with pytest.raises(DatasetFormatError, match="no train/ or test/ folder"):
        dermnet.load(tmp_path)
    (tmp_path / "train").mkdir()
    with pytest.raises(DatasetFormatError, match="no image files"):
        dermnet.load(tmp_path)


# ------------------------------------------------------------------------------------------- Fitzpatrick17k
def test_fitzpatrick17k_real_header(tmp_path: Path) -> None:
    loaded = fitzpatrick17k.load(fx.build_fitzpatrick17k(tmp_path))
    check_contract(loaded, 5)
    assert loaded.class_counts() == {"basal cell carcinoma": 2, "psoriasis": 2}
    recs = loaded.records.set_index("sample_id")
    fst = recs["fitzpatrick"]
    assert fst["fitzpatrick17k/" + "a" * 32] == 3 and fst["fitzpatrick17k/" + "c" * 32] == 6
    assert pd.isna(fst["fitzpatrick17k/" + "b" * 32])  # -1 = unknown
    assert recs["official_split"].isna().all() and (recs["modality"] == "clinical").all()
    assert recs.loc["fitzpatrick17k/" + "e" * 32, "metadata_row"] == 5
    q = loaded.quarantine.iloc[0]
    assert (q["reason"], q["sample_id"]) == ("bad_label", "fitzpatrick17k/" + "d" * 32)
    assert "row 4" in q["detail"] and "3 Wrongly labelled" in q["detail"] and "folliculitis" in q["detail"]
    qc_note = next(n for n in loaded.notes if n.startswith("expert qc"))
    assert "1 Diagnostic: 1" in qc_note and "3 Wrongly labelled: 1" in qc_note and "5 Potentially: 1" in qc_note


def test_fitzpatrick17k_old_column_name_and_url_named_images(tmp_path: Path) -> None:
    header = ["fitzpatrick" if c == "fitzpatrick_scale" else c for c in fx.FITZ_COLUMNS]
    rows = fx.FITZ_ROWS[:3]
    fx.build_fitzpatrick17k(tmp_path, rows, header=header, skip_images=["c" * 32])
    fx.write_image(tmp_path / "other" / rows[2][8])  # saved under its url_alphanum name
    loaded = fitzpatrick17k.load(tmp_path)
    check_contract(loaded, 3)
    assert loaded.records["fitzpatrick"].tolist()[0] == 3
    assert any("1 images found by url_alphanum" in n for n in loaded.notes)


def test_fitzpatrick17k_missing_image_and_label(tmp_path: Path) -> None:
    rows = [*fx.FITZ_ROWS[:3], fx.fitz_row("f" * 32, "4", "")]
    loaded = fitzpatrick17k.load(fx.build_fitzpatrick17k(tmp_path, rows, skip_images=["a" * 32]))
    check_contract(loaded, 4)
    assert loaded.class_counts() == {"basal cell carcinoma": 1, "psoriasis": 1}
    reasons = loaded.quarantine.set_index("sample_id")["reason"].to_dict()
    assert reasons == {"fitzpatrick17k/" + "a" * 32: "missing_file", "fitzpatrick17k/" + "f" * 32: "missing_label"}
    detail = loaded.quarantine.set_index("reason").loc["missing_label", "detail"]
    assert "fitzpatrick17k.csv row 4" in detail and "'label'" in detail


def test_fitzpatrick17k_bad_headers_and_empty_file(tmp_path: Path) -> None:
    header = [c for c in fx.FITZ_COLUMNS if c != "label"]
    fx.build_fitzpatrick17k(tmp_path, [r[:3] + r[4:] for r in fx.FITZ_ROWS], header=header)
    with pytest.raises(DatasetFormatError) as err:
        fitzpatrick17k.load(tmp_path)
    assert "fitzpatrick17k.csv" in str(err.value) and "['label']" in str(err.value)
    (tmp_path / "fitzpatrick17k.csv").write_text("\n", encoding="utf-8")
    with pytest.raises(DatasetFormatError, match="is empty"):
        fitzpatrick17k.load(tmp_path)


# ----------------------------------------------------------------------------------------------- OmniMedVQA
def test_omnimedvqa_dermatology_diagnosis_items(tmp_path: Path) -> None:
    inner = fx.build_omnimedvqa(tmp_path, fx.default_omni_files(), skip_images=["Images/ISIC2018/val/ISIC_0034324.jpg"])
    loaded = omnimedvqa.load(tmp_path)
    # 6 diagnosis items in the four dermatology files read (Chest CT is not dermatology)
    check_contract(loaded, 6)
    assert loaded.class_counts() == {"Actinic keratosis": 1, "Basal cell carcinoma": 1, "Melanoma": 1, "Psoriasis": 1}
    recs = loaded.records.set_index("sample_id")
    assert recs.loc["omnimedvqa/isic18_1", "modality"] == "dermoscopic"
    assert recs.loc["omnimedvqa/fitz_1", "modality"] == "clinical"
    assert recs.loc["omnimedvqa/pad_1", "image_path"] == str(inner.resolve() / "Images/PAD-UFES-20/PAT_1_1_1.png")
    assert (recs["official_split"] == "test").all()
    assert recs.loc["omnimedvqa/isic18_2", "metadata_row"] == 2
    q = loaded.quarantine.set_index("sample_id")
    assert q.loc["omnimedvqa/isic18_4", "reason"] == "bad_label"
    assert "Seborrheic keratosis" in q.loc["omnimedvqa/isic18_4", "detail"]
    assert "ISIC2018.json item 4" in q.loc["omnimedvqa/isic18_4", "detail"]
    assert q.loc["omnimedvqa/isic18_5", "reason"] == "missing_file"
    skipped = next(n for n in loaded.notes if "non-diagnosis" in n)
    assert "2 non-diagnosis items skipped" in skipped and "Anatomy Identification: 1" in skipped
    assert not any("Chest" in str(p) for p in loaded.metadata_files)


def test_omnimedvqa_image_paths_stay_inside_the_dataset(tmp_path: Path) -> None:
    """A question file must not make ingest read any file: '..' steps, absolute paths and symlinks that leave the
    dataset folder are quarantined as outside_root (the files exist, so they would otherwise be indexed)."""
    answer = ["Melanoma", "Melanocytic nevus", "Dermatofibroma", "Basal cell carcinoma"]
    items = [
        fx.omni_item("escape", "ISIC2018", "Images/../../outside/x.jpg", "Melanoma", answer),
        fx.omni_item("absolute", "ISIC2018", str(tmp_path / "outside" / "x.jpg"), "Melanoma", answer),
        fx.omni_item("dotted", "ISIC2018", "./Images/ISIC2018/ok.jpg", "Melanoma", answer),
        fx.omni_item("hidden", "ISIC2018", ".cache/h.jpg", "Melanoma", answer),
    ]
    inner = fx.build_omnimedvqa(tmp_path, {"Open-access/ISIC2018.json": items})
    (inner / "Images" / "linked").symlink_to(tmp_path / "outside", target_is_directory=True)
    linked = fx.omni_item("linked", "ISIC2018", "Images/linked/x.jpg", "Melanoma", answer)
    (inner / "QA_information/Open-access/ISIC2018.json").write_text(json.dumps([*items, linked]), encoding="utf-8")
    loaded = omnimedvqa.load(tmp_path)
    q = loaded.quarantine.set_index("sample_id")
    for qid in ("escape", "absolute", "linked"):
        assert q.loc[f"omnimedvqa/{qid}", "reason"] == "outside_root", qid
        assert "leads outside" in q.loc[f"omnimedvqa/{qid}", "detail"]
    records = loaded.records.set_index("sample_id")
    # './' is a prefix to drop, not a set of characters: '.cache/' keeps its dot.
    assert records.loc["omnimedvqa/dotted", "image_path"] == str(inner.resolve() / "Images/ISIC2018/ok.jpg")
    assert records.loc["omnimedvqa/hidden", "image_path"] == str(inner.resolve() / ".cache/h.jpg")


def test_omnimedvqa_blank_question_id_is_missing_id_under_a_file_item_sample_id(tmp_path: Path) -> None:
    files = fx.default_omni_files()
    files["Open-access/ISIC2018.json"][0]["question_id"] = ""
    fx.build_omnimedvqa(tmp_path, files)
    q = omnimedvqa.load(tmp_path).quarantine.set_index("sample_id")
    assert q.loc["omnimedvqa/ISIC2018.json#item1", "reason"] == "missing_id"
    assert q.loc["omnimedvqa/ISIC2018.json#item1", "detail"] == (
        "ISIC2018.json item 1: field 'question_id' is empty (expected a unique id)"
    )


def test_omnimedvqa_questions_for_evaluation(tmp_path: Path) -> None:
    fx.build_omnimedvqa(tmp_path, fx.default_omni_files())
    questions = omnimedvqa.load_questions(tmp_path).set_index("sample_id")
    assert len(questions) == 5
    q = questions.loc["omnimedvqa/isic18_2"]
    assert q["options"] == ["Vascular lesion", "Basal cell carcinoma"] and q["answer_letter"] == "B"
    assert q["option_letters"] == ["A", "B"] and q["dataset"] == "ISIC2018"
    assert questions.loc["omnimedvqa/fitz_1", "answer_letter"] == "B"
    assert questions.loc["omnimedvqa/isic18_1", "question"] == "What diagnosis best fits this image?"


def test_omnimedvqa_inner_root_and_tolerant_file_names(tmp_path: Path) -> None:
    item = fx.omni_item(
        "mpx_1",
        "Monkeypox Skin Image 2022",
        "Images/Monkeypox/m1.jpg",
        "Monkeypox",
        ["Chickenpox", "Measles", "Monkeypox", "Normal"],
    )
    item2 = fx.omni_item("f17_1", "Fitzpatrick 17k", "Images/Fitz/a.jpg", " psoriasis ", ["Eczema", "Psoriasis."])
    files = {"Open-access/monkeypox_skin_image_2022.json": [item], "Open-access/fitzpatrick17k.JSON": [item2]}
    inner = fx.build_omnimedvqa(tmp_path, files)
    loaded = omnimedvqa.load(inner)
    check_contract(loaded, 2)
    assert set(loaded.records["modality"]) == {"clinical"}
    assert omnimedvqa.load_questions(inner).set_index("question_id").loc["f17_1", "answer_letter"] == "B"
    assert any("ignoring case" in n for n in loaded.notes)


def test_omnimedvqa_malformed_json_names_file(tmp_path: Path) -> None:
    inner = fx.build_omnimedvqa(tmp_path, fx.default_omni_files())
    bad = inner / "QA_information" / "Open-access" / "ISIC2018.json"
    bad.write_text('[{"question_id": "x",', encoding="utf-8")
    with pytest.raises(DatasetFormatError, match=r"ISIC2018\.json is not valid JSON"):
        omnimedvqa.load(tmp_path)
    bad.write_text(json.dumps({"question_id": "x"}), encoding="utf-8")
    with pytest.raises(DatasetFormatError, match="must hold a JSON list"):
        omnimedvqa.load(tmp_path)
    bad.write_text(json.dumps([{"question_id": "x", "image_path": "a.jpg"}]), encoding="utf-8")
    with pytest.raises(DatasetFormatError, match=r"item 1 lacks required field\(s\) \['question_type'\]"):
        omnimedvqa.load(tmp_path)


def test_omnimedvqa_without_dermatology_files_fails_clearly(tmp_path: Path) -> None:
    files = fx.default_omni_files()
    inner = fx.build_omnimedvqa(tmp_path, {"Open-access/Chest CT Scan.json": files["Open-access/Chest CT Scan.json"]})
    with pytest.raises(DatasetFormatError, match="none of the dermatology files") as err:
        omnimedvqa.load(tmp_path)
    assert "Chest CT Scan.json" in str(err.value)
    shutil.rmtree(inner / "QA_information")
    with pytest.raises(DatasetFormatError, match="no QA_information"):
        omnimedvqa.load(tmp_path)


def test_registry_knows_all_four(tmp_path: Path) -> None:
    for module in (derm12345, dermnet, fitzpatrick17k, omnimedvqa):
        assert get_loader(module.DATASET) is module.load
