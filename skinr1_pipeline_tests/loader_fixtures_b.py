"""Tiny on-disk copies of DERM12345, DermNet, Fitzpatrick17k and OmniMedVQA, with the real headers and fields.

Each builder writes a few 4x4 JPEGs and the metadata a real download has, so loaders are tested on the same
layout they meet in production without any dataset being present.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

DERM12345_COLUMNS = (
    "image_id",
    "split",
    "super_class",
    "malignancy",
    "main_class_1",
    "main_class_2",
    "sub_class",
    "label",
)
# label code -> (super_class, malignancy, main_class_1, main_class_2, sub_class), as in the dataset's code list.
DERM12345_CODES = {
    "bcc": ("nonmelanocytic", "malignant", "keratinocytic", "keratinocytic", "basal_cell_carcinoma"),
    "alm": ("melanocytic", "malignant", "melanoma", "melanoma", "acral_lentiginious"),
    "cb": ("melanocytic", "benign", "banal", "compound", "compound"),
    "sk": ("nonmelanocytic", "benign", "keratinocytic", "keratinocytic", "seborrheic_keratosis"),
}
FITZ_COLUMNS = (
    "md5hash",
    "fitzpatrick_scale",
    "fitzpatrick_centaur",
    "label",
    "nine_partition_label",
    "three_partition_label",
    "qc",
    "url",
    "url_alphanum",
)


def write_image(path: Path, colour: tuple[int, int, int] = (120, 60, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), colour).save(path, format="JPEG" if path.suffix.lower() in {".jpg", ".jpeg"} else None)
    return path


def write_table(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]], *, sep: str = ",") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    quoting = csv.QUOTE_ALL if sep == "\t" else csv.QUOTE_MINIMAL  # Dataverse .tab exports quote every field
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, delimiter=sep, quoting=quoting)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# --------------------------------------------------------------------------------------------- DERM12345
def derm12345_row(image_id: str, split: str, label: str) -> list[str]:
    return [image_id, split, *DERM12345_CODES.get(label, ("", "", "", "", "")), label]


def build_derm12345(
    root: Path,
    train: Sequence[tuple[str, str]] = (("d_0001", "bcc"), ("d_0002", "bcc"), ("d_0003", "alm"), ("d_0004", "cb")),
    test: Sequence[tuple[str, str]] = (("d_0101", "sk"), ("d_0102", "bcc")),
    *,
    suffix: str = ".csv",
    with_patient: bool = False,
    skip_images: Sequence[str] = (),
) -> Path:
    """The Skin-R1 layout; train images alternate between the two part folders, as in the ISIC bundle."""
    sep = "\t" if suffix == ".tab" else ","
    for split, entries in (("train", train), ("test", test)):
        header = list(DERM12345_COLUMNS) + (["patient_id"] if with_patient else [])
        rows = [derm12345_row(i, split, lab) + ([f"p_{i[-2:]}"] if with_patient else []) for i, lab in entries]
        write_table(root / f"derm12345_metadata_{split}{suffix}", header, rows, sep=sep)
        for n, (image_id, label) in enumerate(entries):
            if image_id in skip_images or not image_id:
                continue
            folder = f"derm12345_train_part_{1 + n % 2}" if split == "train" else "derm12345_test"
            write_image(root / folder / label / f"{image_id}.jpg")
    return root


# ----------------------------------------------------------------------------------------------- DermNet
DERMNET_FILES = {
    ("train", "Seborrheic Keratoses and other Benign Tumors"): [
        "seborrheic-keratosis-irritated-28.jpg",
        "seborrheic-keratosis-irritated-29.jpg",
        "dermatosis-papulosa-nigra-3.jpg",
    ],
    ("train", "Eczema Photos"): ["eczema-hand-12.jpg", "03EczemaExcoriated.jpg"],
    ("test", "Seborrheic Keratoses and other Benign Tumors"): ["seborrheic-keratosis-irritated-5.jpg"],
    ("test", "Eczema Photos"): ["eczema-hand-12.jpg"],
}


def build_dermnet(root: Path, files: dict[tuple[str, str], list[str]] | None = None) -> Path:
    for (split, category), names in (files or DERMNET_FILES).items():
        for name in names:
            write_image(root / split / category / name)
    return root


# ---------------------------------------------------------------------------------------- Fitzpatrick17k
def fitz_row(md5: str, scale: str, label: str, qc: str = "", url_alphanum: str | None = None) -> list[str]:
    parts = {
        "psoriasis": ("inflammatory", "non-neoplastic"),
        "basal cell carcinoma": ("malignant epidermal", "malignant"),
        "folliculitis": ("inflammatory", "non-neoplastic"),
    }.get(label, ("inflammatory", "non-neoplastic"))
    url = f"https://www.dermaamin.com/site/images/clinical-pic/x/{md5[:6]}/{md5[:6]}1.jpg"
    alnum = url_alphanum or ("httpwwwdermaamincomsiteimagesclinicalpicx" + md5[:6] + md5[:6] + "1jpg.jpg")
    return [md5, scale, scale, label, parts[0], parts[1], qc, url, alnum]


FITZ_ROWS = [
    fitz_row("a" * 32, "3", "psoriasis"),
    fitz_row("b" * 32, "-1", "psoriasis", qc="1 Diagnostic"),
    fitz_row("c" * 32, "6", "basal cell carcinoma"),
    fitz_row("d" * 32, "2", "folliculitis", qc="3 Wrongly labelled"),
    fitz_row("e" * 32, "1", "basal cell carcinoma", qc="5 Potentially"),
]


def build_fitzpatrick17k(
    root: Path,
    rows: Sequence[Sequence[str]] = tuple(FITZ_ROWS),
    *,
    header: Sequence[str] = FITZ_COLUMNS,
    image_dir: str = "images",
    skip_images: Sequence[str] = (),
) -> Path:
    write_table(root / "fitzpatrick17k.csv", header, rows)
    for row in rows:
        if row[0] and row[0] not in skip_images:
            write_image(root / image_dir / f"{row[0]}.jpg")
    return root


# ------------------------------------------------------------------------------------------- OmniMedVQA
def omni_item(
    qid: str,
    dataset: str,
    image: str,
    gt: str,
    options: Sequence[str],
    *,
    qtype: str = "Disease Diagnosis",
    modality_key: str = "modality_type",
    modality: str = "Dermoscopy",
) -> dict[str, Any]:
    item: dict[str, Any] = {
        "dataset": dataset,
        "question_id": qid,
        "question_type": qtype,
        "question": "What diagnosis best fits this image?",
    }
    for letter, text in zip("ABCD", options):
        item[f"option_{letter}"] = text
    item.update({"gt_answer": gt, "image_path": image, modality_key: modality})
    return item


def build_omnimedvqa(outer: Path, files: dict[str, list[dict[str, Any]]], *, skip_images: Sequence[str] = ()) -> Path:
    """`outer/OmniMedVQA/...` as the Hugging Face zip unpacks; `files` maps 'Open-access/<name>.json' to items."""
    inner = outer / "OmniMedVQA"
    for rel, items in files.items():
        path = inner / "QA_information" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(items, indent=1), encoding="utf-8")
        for item in items:
            image = item.get("image_path")
            if image and image not in skip_images:
                write_image(inner / image)
    return inner


def default_omni_files() -> dict[str, list[dict[str, Any]]]:
    isic = [
        omni_item(
            "isic18_1",
            "ISIC2018",
            "Images/ISIC2018/val/ISIC_0034321.jpg",
            "Melanoma",
            ["Melanoma", "Melanocytic nevus", "Dermatofibroma", "Basal cell carcinoma"],
        ),
        omni_item(
            "isic18_2",
            "ISIC2018",
            "Images/ISIC2018/val/ISIC_0034322.jpg",
            "Basal cell carcinoma",
            ["Vascular lesion", "Basal cell carcinoma"],
        ),
        omni_item(
            "isic18_3",
            "ISIC2018",
            "Images/ISIC2018/val/ISIC_0034322.jpg",
            "Dermoscopy",
            ["CT", "Dermoscopy", "MRI"],
            qtype="Modality Recognition",
        ),
        omni_item(
            "isic18_4",
            "ISIC2018",
            "Images/ISIC2018/val/ISIC_0034323.jpg",
            "Seborrheic keratosis",
            ["Melanoma", "Melanocytic nevus", "Dermatofibroma", "Basal cell carcinoma"],
        ),
        omni_item(
            "isic18_5",
            "ISIC2018",
            "Images/ISIC2018/val/ISIC_0034324.jpg",
            "Melanoma",
            ["Melanoma", "Melanocytic nevus"],
        ),
    ]
    fitz = [
        omni_item(
            "fitz_1",
            "Fitzpatrick 17k",
            "Images/Fitzpatrick 17k/f1.jpg",
            "Psoriasis",
            ["Eczema", "Psoriasis", "Lichen planus", "Tinea"],
            modality_key="modality",
            modality="Digital Photography",
        ),
        omni_item(
            "fitz_2",
            "Fitzpatrick 17k",
            "Images/Fitzpatrick 17k/f2.jpg",
            "Hand",
            ["Hand", "Foot"],
            qtype="Anatomy Identification",
            modality="Digital Photography",
        ),
    ]
    chest = [
        omni_item(
            "chest_1",
            "Chest CT Scan",
            "Images/Chest CT Scan/c1.png",
            "Adenocarcinoma",
            ["Adenocarcinoma", "Normal"],
            modality="CT",
        ),
    ]
    pad = [
        omni_item(
            "pad_1",
            "PAD-UFES-20",
            "Images/PAD-UFES-20/PAT_1_1_1.png",
            "Actinic keratosis",
            ["Actinic keratosis", "Melanoma", "Nevus", "Seborrheic keratosis"],
            modality="Digital Photography",
        ),
    ]
    return {
        "Open-access/ISIC2018.json": isic,
        "Open-access/Fitzpatrick 17k.json": fitz,
        "Open-access/Chest CT Scan.json": chest,
        "Restricted-access/pad-ufes-20.json": pad,
    }
