"""Label maps: packaged vocabularies, frame mapping, unmapped-label errors, DermNet refinement and overrides."""

from __future__ import annotations

import pandas as pd
import pytest

from skinr1_pipeline.data.schema import MAPPED_COLUMNS
from skinr1_pipeline.knowledge.label_maps import LabelMap, LabelMapError, UnmappedLabelsError, load_label_maps
from skinr1_pipeline.knowledge.taxonomy import Taxonomy, normalize_label

DATASETS = {
    "ham10000",
    "bcn20000",
    "isic2019",
    "pad_ufes_20",
    "derm7pt",
    "derm12345",
    "dermnet",
    "fitzpatrick17k",
    "omnimedvqa",
}
HAM = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
PAD = ["ACK", "BCC", "MEL", "NEV", "SCC", "SEK"]
BCN = ["NV", "MEL", "SCC", "BKL", "BCC", "AK", "DF", "VASC"]
DERM7PT = [
    "basal cell carcinoma",
    "blue nevus",
    "clark nevus",
    "combined nevus",
    "congenital nevus",
    "dermal nevus",
    "recurrent nevus",
    "reed or spitz nevus",
    "melanoma",
    "melanoma (in situ)",
    "melanoma (less than 0.76 mm)",
    "melanoma (0.76 to 1.5 mm)",
    "melanoma (more than 1.5 mm)",
    "melanoma metastasis",
    "dermatofibroma",
    "lentigo",
    "melanosis",
    "miscellaneous",
    "seborrheic keratosis",
    "vascular lesion",
]
DERM12345 = [
    "acb",
    "acd",
    "ajb",
    "ajd",
    "ak",
    "alm",
    "angk",
    "anm",
    "bcc",
    "bd",
    "bdb",
    "cb",
    "ccb",
    "ccd",
    "cd",
    "ch",
    "cjb",
    "db",
    "df",
    "dfsp",
    "ha",
    "isl",
    "jb",
    "jd",
    "ks",
    "la",
    "lk",
    "lm",
    "lmm",
    "ls",
    "mcb",
    "mel",
    "mpd",
    "pg",
    "rd",
    "sa",
    "scc",
    "sk",
    "sl",
    "srjd",
]
DERMNET_FOLDERS = [
    "Acne and Rosacea Photos",
    "Actinic Keratosis Basal Cell Carcinoma and other Malignant Lesions",
    "Atopic Dermatitis Photos",
    "Bullous Disease Photos",
    "Cellulitis Impetigo and other Bacterial Infections",
    "Eczema Photos",
    "Exanthems and Drug Eruptions",
    "Hair Loss Photos Alopecia and other Hair Diseases",
    "Herpes HPV and other STDs Photos",
    "Light Diseases and Disorders of Pigmentation",
    "Lupus and other Connective Tissue diseases",
    "Melanoma Skin Cancer Nevi and Moles",
    "Nail Fungus and other Nail Disease",
    "Poison Ivy Photos and other Contact Dermatitis",
    "Psoriasis pictures Lichen Planus and related diseases",
    "Scabies Lyme Disease and other Infestations and Bites",
    "Seborrheic Keratoses and other Benign Tumors",
    "Systemic Disease",
    "Tinea Ringworm Candidiasis and other Fungal Infections",
    "Urticaria Hives",
    "Vascular Tumors",
    "Vasculitis Photos",
    "Warts Molluscum and other Viral Infections",
]
SEB_FOLDER = "Seborrheic Keratoses and other Benign Tumors"


@pytest.fixture(scope="module")
def maps(tax: Taxonomy) -> dict[str, LabelMap]:
    return load_label_maps(tax)


def frame(labels: list, files: list | None = None) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "sample_id": [f"s{i}" for i in range(len(labels))],
            "raw_label": labels,
            "metadata_file": files or ["/data/meta.csv"] * len(labels),
        }
    )


# ---- packaged maps -------------------------------------------------------------------------------------
def test_every_packaged_map_loads(maps: dict[str, LabelMap]) -> None:
    assert DATASETS <= set(maps)
    for name, label_map in maps.items():
        assert label_map.dataset == name and label_map.labels and label_map.label_field


def test_every_target_exists(maps: dict[str, LabelMap], tax: Taxonomy) -> None:
    for label_map in maps.values():
        for target in [*label_map.labels.values(), *label_map.fine_labels.values()]:
            assert target in tax, (label_map.dataset, target)
        for ids in label_map.refine_within.values():
            assert all(i in tax for i in ids)


@pytest.mark.parametrize(
    ("dataset", "vocabulary"),
    [
        ("ham10000", HAM),
        ("pad_ufes_20", PAD),
        ("derm7pt", DERM7PT),
        ("bcn20000", BCN),
        ("isic2019", [*BCN, "UNK"]),
        ("derm12345", DERM12345),
    ],
)
def test_vocabulary_fully_maps(maps: dict[str, LabelMap], tax: Taxonomy, dataset: str, vocabulary: list[str]) -> None:
    mapped, report = maps[dataset].map_frame(frame(vocabulary), tax)
    assert report["coverage"] == 1.0
    assert mapped["taxonomy_node"].notna().all()
    assert len(report["labels"]) == len(vocabulary)


def test_key_mappings(maps: dict[str, LabelMap]) -> None:
    ham, pad, d7 = maps["ham10000"], maps["pad_ufes_20"], maps["derm7pt"]
    assert ham.lookup("akiec") == "ak_or_scc_in_situ"
    assert ham.lookup("bkl") == "benign_keratosis_like"
    assert ham.lookup("vasc") == "benign_vascular"
    assert pad.lookup("SCC") == "squamous_cell_carcinoma"
    assert d7.lookup("melanoma (in situ)") == "melanoma_in_situ"
    assert d7.lookup("clark nevus") == "dysplastic_nevus"
    assert d7.lookup("miscellaneous") == "other_indeterminate"
    assert maps["isic2019"].lookup("UNK") == "other_indeterminate"
    assert maps["derm12345"].lookup("bd") == "scc_in_situ"
    assert maps["fitzpatrick17k"].lookup("lentigo maligna") == "lentigo_maligna"
    assert maps["fitzpatrick17k"].lookup("actinic keratosis") == "actinic_keratosis"


def test_fitzpatrick_and_dermnet_sizes(maps: dict[str, LabelMap]) -> None:
    assert len(maps["fitzpatrick17k"].labels) >= 114
    assert all(maps["dermnet"].lookup(f"{folder}|") for folder in DERMNET_FOLDERS)
    assert maps["dermnet"].refine


def test_omnimedvqa_answers(maps: dict[str, LabelMap]) -> None:
    omni = maps["omnimedvqa"]
    assert omni.lookup("Melanoma.") == "melanoma"
    assert omni.lookup("Monkeypox") == "mpox"
    assert omni.lookup("Chickenpox") == "varicella"
    assert omni.lookup("Normal") == "normal_skin"
    assert omni.lookup("benign") == "benign_neoplasm"
    assert omni.lookup("malignant") == "malignant_neoplasm"
    assert omni.lookup("psoriasis") == "psoriasis"  # inherited from fitzpatrick17k through 'extends'


# ---- map_frame -----------------------------------------------------------------------------------------
def test_map_frame_adds_columns_and_keeps_rows(maps: dict[str, LabelMap], tax: Taxonomy) -> None:
    records = frame(["MEL", "nv", " NV ", "Akiec", "bkl"])
    records.index = [10, 11, 12, 13, 14]
    mapped, report = maps["ham10000"].map_frame(records, tax)
    assert list(mapped.index) == [10, 11, 12, 13, 14]
    assert set(MAPPED_COLUMNS) <= set(mapped.columns)
    assert "taxonomy_node" not in records.columns  # input untouched
    row = mapped.loc[10]
    assert row["taxonomy_node"] == "melanoma"
    assert row["taxonomy_path"] == tax.path("melanoma") and row["taxonomy_path"][0] == "skin_condition"
    assert row["taxonomy_depth"] == len(row["taxonomy_path"]) - 1
    assert row["bucket"] == "malignant"
    assert mapped.loc[12, "taxonomy_node"] == "melanocytic_nevus"  # case/whitespace-insensitive
    assert mapped.loc[13, "bucket"] == "precancerous_in_situ"
    assert report["labels"]["nv"] == {"node": "melanocytic_nevus", "count": 1, "refined": False}
    assert report["rows"] == 5 and report["coverage"] == 1.0
    assert report["nodes"]["melanocytic_nevus"] == 2


def test_lookup_ignores_case_underscores_and_hyphens(maps: dict[str, LabelMap]) -> None:
    fitz = maps["fitzpatrick17k"]
    assert fitz.lookup("Allergic_Contact-Dermatitis") == "allergic_contact_dermatitis"
    assert fitz.lookup("PYOGENIC GRANULOMA") == "pyogenic_granuloma"
    assert maps["derm12345"].lookup("Acral-Compound-Banal") == "acral_nevus"


def test_bucket_none_for_non_neoplastic(maps: dict[str, LabelMap], tax: Taxonomy) -> None:
    mapped, _ = maps["fitzpatrick17k"].map_frame(frame(["psoriasis", "melanoma"]), tax)
    assert mapped["bucket"].tolist() == [None, "malignant"]


def test_unmapped_labels_error_lists_every_label_count_and_file(maps: dict[str, LabelMap], tax: Taxonomy) -> None:
    records = frame(
        ["mel", "xyz", "xyz", "abc", "xyz", None],
        ["a.csv", "a.csv", "a.csv", "a.csv", "b.csv", "a.csv"],
    )
    with pytest.raises(UnmappedLabelsError) as info:
        maps["ham10000"].map_frame(records, tax)
    err = info.value
    assert sorted((u["label"], u["count"], u["file"]) for u in err.unmapped) == [
        ("<missing>", 1, "a.csv"),
        ("abc", 1, "a.csv"),
        ("xyz", 1, "b.csv"),
        ("xyz", 2, "a.csv"),
    ]
    assert all(u["dataset"] == "ham10000" for u in err.unmapped)
    message = str(err)
    assert "'xyz': 2 row(s) in a.csv" in message and "'xyz': 1 row(s) in b.csv" in message
    assert "'abc': 1 row(s) in a.csv" in message and "4 unmapped label(s) on 5 row(s)" in message
    assert isinstance(err, ValueError)


def test_missing_raw_label_column(maps: dict[str, LabelMap], tax: Taxonomy) -> None:
    with pytest.raises(ValueError, match="raw_label"):
        maps["ham10000"].map_frame(pd.DataFrame({"dx": ["mel"]}), tax)


def test_empty_frame(maps: dict[str, LabelMap], tax: Taxonomy) -> None:
    mapped, report = maps["ham10000"].map_frame(frame([]), tax)
    assert len(mapped) == 0 and report["coverage"] == 1.0


# ---- DermNet refinement --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "node", "refined"),
    [
        (f"{SEB_FOLDER}|seborrheic keratosis irritated", "irritated_seborrheic_keratosis", True),
        (f"{SEB_FOLDER}|seborrheic-keratoses-ruff", "seborrheic_keratosis", True),  # fine_labels
        (f"{SEB_FOLDER}|dermatofibroma 12", "dermatofibroma", True),  # trailing number dropped
        (f"{SEB_FOLDER}|seborrheic dermatitis", "benign_neoplasm", False),  # outside the folder: fallback
        (f"{SEB_FOLDER}|", "benign_neoplasm", False),  # no fine part
        (f"{SEB_FOLDER}|03EczemaExcoriated", "benign_neoplasm", False),  # unparseable stem
        ("Tinea Ringworm Candidiasis and other Fungal Infections|tinea body", "tinea_corporis", True),
        ("Tinea Ringworm Candidiasis and other Fungal Infections|tinea versicolor", "pityriasis_versicolor", True),
        ("Scabies Lyme Disease and other Infestations and Bites|lyme disease", "lyme_disease", True),  # refine_within
        ("Melanoma Skin Cancer Nevi and Moles|malignant melanoma", "melanoma", True),
        (
            "Actinic Keratosis Basal Cell Carcinoma and other Malignant Lesions|basal cell carcinoma face",
            "basal_cell_carcinoma",
            True,
        ),
        ("Atopic Dermatitis Photos|eczema", "atopic_dermatitis", False),  # coarser than the folder: keep folder
        ("Exanthems and Drug Eruptions|fixed drug eruption", "fixed_drug_eruption", True),
        ("Exanthems and Drug Eruptions|measles", "measles", True),
        ("Exanthems and Drug Eruptions|psoriasis", "exanthem_or_drug_eruption", False),
        ("Eczema Photos|dermatitis", "eczema", False),  # same node as the folder is not a refinement
        ("Psoriasis pictures Lichen Planus and related diseases|inflammatory", "papulosquamous", False),
        ("Psoriasis pictures Lichen Planus and related diseases|seborrheic dermatitis", "seborrheic_dermatitis", True),
    ],
)
def test_dermnet_refinement(maps: dict[str, LabelMap], tax: Taxonomy, raw: str, node: str, refined: bool) -> None:
    assert maps["dermnet"].resolve(raw, tax) == (node, refined)


def test_dermnet_report_counts_refined_and_fallback(maps: dict[str, LabelMap], tax: Taxonomy) -> None:
    labels = (
        [f"{SEB_FOLDER}|seborrheic keratosis irritated"] * 3
        + [f"{SEB_FOLDER}|"] * 2
        + ["Vascular Tumors|kaposi sarcoma"]
    )
    mapped, report = maps["dermnet"].map_frame(frame(labels), tax)
    assert report["refined_rows"] == 4  # kaposi sarcoma refines into the malignant-vascular extra subtree
    assert report["coarse_fallback_rows"] == 2
    assert report["coarse_fallback_labels"] == {f"{SEB_FOLDER}|": 2}
    assert mapped["taxonomy_node"].tolist()[-1] == "kaposi_sarcoma"


def test_dermnet_unmapped_folder_is_reported_by_folder(maps: dict[str, LabelMap], tax: Taxonomy) -> None:
    with pytest.raises(UnmappedLabelsError) as info:
        maps["dermnet"].map_frame(frame(["Unknown Folder|a", "Unknown Folder|b"], ["/d/train/x", "/d/train/x"]), tax)
    assert info.value.unmapped == [{"dataset": "dermnet", "label": "Unknown Folder", "count": 2, "file": "/d/train/x"}]


def test_refinement_on_a_small_taxonomy() -> None:
    small = Taxonomy.from_dict(
        {
            "root": {
                "id": "root",
                "kind": "category",
                "behaviour": "mixed",
                "lineage": "any",
                "children": [
                    {
                        "id": "fungal",
                        "kind": "group",
                        "behaviour": "non_neoplastic",
                        "lineage": "infectious",
                        "children": [{"id": "tinea", "synonyms": ["ringworm"], "children": [{"id": "tinea_corporis"}]}],
                    },
                    {
                        "id": "bacterial",
                        "kind": "group",
                        "behaviour": "non_neoplastic",
                        "lineage": "infectious",
                        "children": [{"id": "impetigo"}],
                    },
                ],
            }
        }
    )
    lm = LabelMap(
        dataset="toy",
        label_field="folder",
        labels={normalize_label("Fungal Photos"): "fungal"},
        refine=True,
        fine_labels={"tinea body": "tinea_corporis"},
        refine_within={},
    )
    assert lm.resolve("Fungal Photos|tinea-body", small) == ("tinea_corporis", True)
    assert lm.resolve("Fungal Photos|ringworm scalp", small) == ("tinea", True)  # leading words resolve
    assert lm.resolve("Fungal Photos|impetigo", small) == ("fungal", False)  # outside the folder subtree
    lm.refine_within[normalize_label("Fungal Photos")] = ("bacterial",)
    assert lm.resolve("Fungal Photos|impetigo", small) == ("impetigo", True)


# ---- loading and overrides -----------------------------------------------------------------------------
def test_override_dir_extends_and_overrides(tax: Taxonomy, tmp_path) -> None:
    (tmp_path / "ham.yaml").write_text(
        "dataset: ham10000\nlabel_field: dx\nlabels:\n  mel: melanoma_in_situ\n  ham_extra: dermatofibroma\n", "utf-8"
    )
    (tmp_path / "mine.yml").write_text(
        "dataset: my_clinic\nlabel_field: dx\nlabels:\n  Mole: melanocytic_nevus\n", "utf-8"
    )
    maps = load_label_maps(tax, extra_dir=tmp_path)
    assert maps["ham10000"].lookup("mel") == "melanoma_in_situ"  # overridden
    assert maps["ham10000"].lookup("HAM_EXTRA") == "dermatofibroma"  # added
    assert maps["ham10000"].lookup("nv") == "melanocytic_nevus"  # packaged entries kept
    assert maps["my_clinic"].lookup("mole") == "melanocytic_nevus"


def test_bad_target_names_file_label_and_id(tax: Taxonomy, tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("dataset: clinic\nlabel_field: dx\nlabels:\n  Mole: no_such_node\n  Wart: also_missing\n", "utf-8")
    with pytest.raises(LabelMapError) as info:
        load_label_maps(tax, extra_dir=tmp_path)
    message = str(info.value)
    assert f"{path}: labels 'Mole' -> 'no_such_node' is not a taxonomy node id" in message
    assert "'Wart' -> 'also_missing'" in message


def test_malformed_files_are_reported(tax: Taxonomy, tmp_path) -> None:
    (tmp_path / "a.yaml").write_text("dataset: a\nlabels:\n  x: melanoma\n  X: psoriasis\ncolour: red\n", "utf-8")
    (tmp_path / "b.yaml").write_text("labels: {x: melanoma}\n", "utf-8")
    (tmp_path / "c.yaml").write_text("dataset: c\nextends: [nope]\nlabels: {x: melanoma}\n", "utf-8")
    (tmp_path / "d.yaml").write_text("dataset: d\n  bad: [yaml\n", "utf-8")
    with pytest.raises(LabelMapError) as info:
        load_label_maps(tax, extra_dir=tmp_path)
    message = str(info.value)
    assert "unknown keys ['colour']" in message
    assert "are the same label but map to" in message
    assert "b.yaml: 'dataset' must be a non-empty string" in message
    assert "'extends' names unknown dataset 'nope'" in message
    assert "d.yaml: not valid YAML" in message


def test_extends_cycle_is_reported(tax: Taxonomy, tmp_path) -> None:
    (tmp_path / "a.yaml").write_text("dataset: a\nextends: [b]\nlabels: {x: melanoma}\n", "utf-8")
    (tmp_path / "b.yaml").write_text("dataset: b\nextends: [a]\nlabels: {y: melanoma}\n", "utf-8")
    with pytest.raises(LabelMapError, match="cycle"):
        load_label_maps(tax, extra_dir=tmp_path)


def test_missing_override_dir(tax: Taxonomy, tmp_path) -> None:
    with pytest.raises(LabelMapError, match="does not exist"):
        load_label_maps(tax, extra_dir=tmp_path / "nope")
