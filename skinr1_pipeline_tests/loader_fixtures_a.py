"""Tiny on-disk copies of HAM10000, ISIC 2018/2019, BCN20000, PAD-UFES-20 and Derm7pt for loader tests.

Headers are the real ones (so a loader that passes here reads the real files); images are a few pixels,
because loaders locate files and never decode them.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path

from PIL import Image

HAM_COLUMNS = ("lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization", "dataset")
ISIC2018_ONE_HOT = ("image", "MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
ISIC2019_GT = ("image", "MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK")
ISIC2019_META = ("image", "age_approx", "anatom_site_general", "lesion_id", "sex")
BCN_COLUMNS = (
    "bcn_filename",
    "age_approx",
    "anatom_site_general",
    "diagnosis",
    "lesion_id",
    "capture_date",
    "sex",
    "split",
)
PAD_COLUMNS = (
    "patient_id",
    "lesion_id",
    "smoke",
    "drink",
    "background_father",
    "background_mother",
    "age",
    "pesticide",
    "gender",
    "skin_cancer_history",
    "cancer_history",
    "has_piped_water",
    "has_sewage_system",
    "fitspatrick",
    "region",
    "diameter_1",
    "diameter_2",
    "diagnostic",
    "itch",
    "grew",
    "hurt",
    "changed",
    "bleed",
    "elevation",
    "img_id",
    "biopsed",
)
DERM7PT_COLUMNS = (
    "case_num",
    "diagnosis",
    "seven_point_score",
    "pigment_network",
    "streaks",
    "pigmentation",
    "regression_structures",
    "dots_and_globules",
    "blue_whitish_veil",
    "vascular_structures",
    "level_of_diagnostic_difficulty",
    "elevation",
    "location",
    "sex",
    "management",
    "clinic",
    "derm",
)
DERM7PT_REDUCED = (
    "diagnosis",
    "pigment_network",
    "streaks",
    "pigmentation",
    "regression_structures",
    "dots_and_globules",
    "blue_whitish_veil",
    "vascular_structures",
    "derm",
)


def write_image(path: Path, colour: tuple[int, int, int] = (180, 120, 90)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 3), colour).save(path)
    return path


def write_table(path: Path, columns: Sequence[str], rows: Iterable[dict | Sequence], sep: str = ",") -> Path:
    """A table with `columns` as header; dict rows may omit fields (written empty)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, delimiter=sep, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([row.get(c, "") for c in columns] if isinstance(row, dict) else row)
    return path


# ---- HAM10000 ---------------------------------------------------------------------------------------------
HAM_ROWS = [  # (lesion_id, image_id, dx, age, sex, localization)
    ("HAM_0000118", "ISIC_0027419", "bkl", "80.0", "male", "scalp"),
    ("HAM_0000118", "ISIC_0025030", "bkl", "80.0", "male", "scalp"),
    ("HAM_0002730", "ISIC_0026769", "nv", "", "unknown", "back"),
    ("HAM_0001466", "ISIC_0031633", "mel", "75.0", "female", "ear"),
    ("HAM_0002761", "ISIC_0029176", "bcc", "60.0", "male", "face"),
    ("HAM_0005132", "ISIC_0025837", "akiec", "70.0", "female", "upper extremity"),
    ("HAM_0001396", "ISIC_0025276", "df", "55.0", "female", "lower extremity"),
    ("HAM_0004234", "ISIC_0029396", "vasc", "45.0", "male", "trunk"),
    ("HAM_0001601", "ISIC_0025915", "nv", "50.0", "male", "back"),
]
HAM_COUNTS = {"akiec": 1, "bcc": 1, "bkl": 2, "df": 1, "mel": 1, "nv": 2, "vasc": 1}


def ham_rows(rows=HAM_ROWS) -> list[dict]:
    return [
        dict(zip(HAM_COLUMNS, (lesion, image, dx, "histo", age, sex, site, "vidir_modern")))
        for lesion, image, dx, age, sex, site in rows
    ]


def build_ham(root: Path, *, metadata_name: str = "HAM10000_metadata.csv", sep: str = ",", folders=None) -> Path:
    """Dataverse/Skin-R1 layout: metadata plus images split over two part folders."""
    folders = folders or ("HAM10000_images_part_1", "HAM10000_images_part_2")
    write_table(root / metadata_name, HAM_COLUMNS, ham_rows(), sep=sep)
    for i, (_, image, *_rest) in enumerate(HAM_ROWS):
        write_image(root / folders[i % len(folders)] / f"{image}.jpg")
    return root


ISIC2018_TEST = [("ISIC_0034524", "NV"), ("ISIC_0034525", "MEL"), ("ISIC_0034526", "BKL"), ("ISIC_0034527", "VASC")]


def build_isic2018_test(root: Path, *, one_hot: bool = True, extra_rows: Sequence[Sequence[str]] = ()) -> None:
    """ISIC 2018 Task 3 test set beside HAM10000: challenge one-hot CSV in its own folder, or Dataverse `.tab`."""
    for image, _ in ISIC2018_TEST:
        write_image(root / "ISIC2018_Task3_Test_Images" / f"{image}.jpg")
    if one_hot:
        rows = [
            [image] + ["1.0" if c == label else "0.0" for c in ISIC2018_ONE_HOT[1:]] for image, label in ISIC2018_TEST
        ]
        folder = root / "ISIC2018_Task3_Test_GroundTruth"
        write_table(folder / "ISIC2018_Task3_Test_GroundTruth.csv", ISIC2018_ONE_HOT, [*rows, *extra_rows])
    else:
        rows = [
            dict(zip(HAM_COLUMNS, (f"HAM_{9000000 + i}", image, label.lower(), "histo", "40.0", "female", "back", "")))
            for i, (image, label) in enumerate(ISIC2018_TEST)
        ]
        write_table(root / "ISIC2018_Task3_Test_GroundTruth.tab", HAM_COLUMNS, rows, sep="\t")


# ---- ISIC 2019 --------------------------------------------------------------------------------------------
ISIC2019_ROWS = [  # (image, label, age, site, lesion, sex)
    ("ISIC_0000000", "NV", "55.0", "anterior torso", "", "female"),
    ("ISIC_0000002", "MEL", "60.0", "upper extremity", "", "female"),
    ("ISIC_0000004", "MEL", "80.0", "posterior torso", "", "male"),
    ("ISIC_0000013_downsampled", "NV", "30.0", "", "MSK4_0011169", "female"),
    ("ISIC_0024468", "AK", "75.0", "head/neck", "HAM_0005388", "male"),
    ("ISIC_0024470", "BKL", "", "", "HAM_0002143", ""),
    ("ISIC_0024318", "DF", "65.0", "lower extremity", "HAM_0000346", "female"),
    ("ISIC_0024375", "VASC", "45.0", "anterior torso", "HAM_0001409", "male"),
    ("ISIC_0024331", "BCC", "70.0", "head/neck", "HAM_0002301", "male"),
    ("BCN_0000001", "SCC", "85.0", "head/neck", "BCN_0000300", "female"),
]


def one_hot_row(image: str, label: str | None, columns: Sequence[str] = ISIC2019_GT) -> list[str]:
    return [image] + ["1.0" if c == label else "0.0" for c in columns[1:]]


def build_isic2019(root: Path, *, metadata: bool = True, extra_gt: Sequence[Sequence[str]] = ()) -> Path:
    rows = [one_hot_row(image, label) for image, label, *_ in ISIC2019_ROWS]
    write_table(root / "ISIC_2019_Training_GroundTruth.csv", ISIC2019_GT, [*rows, *extra_gt])
    if metadata:
        meta = [[image, age, site, lesion, sex] for image, _, age, site, lesion, sex in ISIC2019_ROWS]
        write_table(root / "ISIC_2019_Training_Metadata.csv", ISIC2019_META, meta)
    for image, *_ in ISIC2019_ROWS:
        write_image(root / "ISIC_2019_Training_Input" / f"{image}.jpg")
    return root


# ---- BCN20000 ---------------------------------------------------------------------------------------------
BCN_ROWS = [  # (file, diagnosis, split)
    ("BCN_0000000001.jpg", "NV", "train"),
    ("BCN_0000000002.jpg", "MEL", "train"),
    ("BCN_0000000003.jpg", "SCC", "val"),
    ("BCN_0000000004.jpg", "BKL", "validation"),
    ("BCN_0000000005.jpg", "BCC", "test"),
    ("BCN_0000000006.jpg", "AK", "train"),
    ("BCN_0000000007.jpg", "DF", "Train"),
    ("BCN_0000000008.jpg", "VASC", "test"),
    ("BCN_0000000009.jpg", "NV", "train"),
]


def bcn_rows(rows=BCN_ROWS) -> list[dict]:
    return [
        dict(zip(BCN_COLUMNS, (name, "55", "anterior torso", dx, f"BCN_lesion_{i // 2}", "2012-05-01", "male", split)))
        for i, (name, dx, split) in enumerate(rows)
    ]


def build_bcn(root: Path, *, image_folder: str = "bcn_20k_train") -> Path:
    write_table(root / "bcn_20k_train.csv", BCN_COLUMNS, bcn_rows())
    for name, *_ in BCN_ROWS:
        write_image(root / image_folder / name)
    return root


# ---- PAD-UFES-20 ------------------------------------------------------------------------------------------
PAD_ROWS = [  # (patient, lesion, img_id, diagnostic, age, gender, fitspatrick, region)
    ("PAT_1516", "1765", "PAT_1516_1765_530.png", "NEV", "8", "FEMALE", "3.0", "ARM"),
    ("PAT_46", "881", "PAT_46_881_939.png", "BCC", "55", "MALE", "3.0", "NECK"),
    ("PAT_46", "881", "PAT_46_881_940.png", "BCC", "55", "MALE", "3.0", "NECK"),
    ("PAT_1545", "1867", "PAT_1545_1867_547.png", "ACK", "77", "", "", "FACE"),
    ("PAT_1989", "4061", "PAT_1989_4061_934.png", "MEL", "60", "MALE", "2.0", "BACK"),
    ("PAT_684", "1302", "PAT_684_1302_588.png", "SCC", "79", "MALE", "1.0", "NOSE"),
    ("PAT_1749", "3380", "PAT_1749_3380_120.png", "SEK", "70", "FEMALE", "4.0", "CHEST"),
]
PAD_COUNTS = {"ACK": 1, "BCC": 2, "MEL": 1, "NEV": 1, "SCC": 1, "SEK": 1}


def pad_rows(columns: Sequence[str] = PAD_COLUMNS) -> list[dict]:
    out = []
    for patient, lesion, image, dx, age, gender, fitz, region in PAD_ROWS:
        row = dict.fromkeys(columns, "False")
        row.update(
            patient_id=patient,
            lesion_id=lesion,
            img_id=image,
            diagnostic=dx,
            age=age,
            gender=gender,
            region=region,
            diameter_1="6.0",
            diameter_2="5.0",
            background_father="POMERANIA",
            background_mother="POMERANIA",
        )
        row["fitzpatrick" if "fitzpatrick" in columns else "fitspatrick"] = fitz
        out.append(row)
    return out


def build_pad(root: Path, *, nested: bool = False, columns: Sequence[str] = PAD_COLUMNS) -> Path:
    """Official zip layout (`images/imgs_part_N/`) or the Kaggle one (`imgs_part_N/imgs_part_N/`)."""
    write_table(root / "metadata.csv", columns, pad_rows(columns))
    for i, (_, _, image, *_rest) in enumerate(PAD_ROWS):
        part = f"imgs_part_{i % 3 + 1}"
        write_image((root / part / part if nested else root / "images" / part) / image)
    return root


# ---- Derm7pt ----------------------------------------------------------------------------------------------
DERM7PT_ROWS = [  # (diagnosis, location, sex, clinic, derm)
    ("basal cell carcinoma", "abdomen", "female", "NEL/NEL025.JPG", "NEL/Nel026.jpg"),
    ("clark nevus", "back", "male", "NEL/NEL027.JPG", "NEL/Nel028.jpg"),
    ("melanoma (in situ)", "head neck", "female", "FCL/Fcl001.jpg", "FCL/Fcl002.jpg"),
    ("seborrheic keratosis", "chest", "male", "Fhl/Fhl001.jpg", "Fhl/Fhl002.jpg"),
    ("clark nevus", "lower limbs", "female", "NML/NmL001.jpg", "NML/NmL002.jpg"),
    ("melanoma (less than 0.76 mm)", "upper limbs", "male", "Ggl/Ggl003.jpg", "Ggl/Ggl004.jpg"),
]


def derm7pt_rows() -> list[dict]:
    values = ("absent", "absent", "absent", "absent", "absent", "absent", "absent")
    criteria = dict(zip(DERM7PT_COLUMNS[3:10], values))
    return [
        {
            "case_num": str(i + 1),
            "diagnosis": dx,
            "seven_point_score": "0",
            **criteria,
            "level_of_diagnostic_difficulty": "low",
            "elevation": "flat",
            "location": loc,
            "sex": sex,
            "management": "excision",
            "clinic": clinic,
            "derm": derm,
        }
        for i, (dx, loc, sex, clinic, derm) in enumerate(DERM7PT_ROWS)
    ]


def build_derm7pt(root: Path, *, splits: dict[str, Sequence[int]] | None = None, base: str = "release_v0") -> Path:
    """Official layout: `<base>/meta/meta.csv`, `<base>/meta/<split>_indexes.csv`, `<base>/images/<path>`."""
    top = root / base if base else root
    write_table(top / "meta" / "meta.csv", DERM7PT_COLUMNS, derm7pt_rows())
    splits = {"train": [0, 1, 2], "valid": [3], "test": [4, 5]} if splits is None else splits
    for name, positions in splits.items():
        write_table(top / "meta" / f"{name}_indexes.csv", ("indexes",), [[str(p)] for p in positions])
    for *_, clinic, derm in DERM7PT_ROWS:
        write_image(top / "images" / clinic)
        write_image(top / "images" / derm)
    return top
