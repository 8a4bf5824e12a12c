"""Every image a loader hands on lies under its dataset folder once symlinks are resolved: a file or directory
link leading out of it is quarantined as outside_root (the reason OmniMedVQA uses) and counted in the notes, never
indexed or read."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from skinr1_pipeline.data.loaders import derm7pt, dermnet, fitzpatrick17k, ham10000
from skinr1_pipeline_tests import loader_fixtures_a as fa
from skinr1_pipeline_tests import loader_fixtures_b as fb

pytestmark = pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")


def _link_out(image: Path, outside: Path) -> Path:
    """Replace `image` by a symlink to a real image outside the dataset folder."""
    fa.write_image(outside)
    image.unlink()
    os.symlink(outside, image)
    return outside


def _quarantined(loaded) -> dict[str, tuple[str, str]]:
    return {row.sample_id: (row.reason, row.detail) for row in loaded.quarantine.itertuples()}


def test_ham10000_file_link_out_of_the_root_is_quarantined(tmp_path: Path) -> None:
    root = fa.build_ham(tmp_path / "ham")
    secret = _link_out(root / "HAM10000_images_part_1" / "ISIC_0027419.jpg", tmp_path / "private" / "scan.jpg")
    loaded = ham10000.load(root)
    assert len(loaded.records) + len(loaded.quarantine) == len(fa.HAM_ROWS)  # nothing silently dropped
    real_root = root.resolve()
    assert all(real_root in Path(p).resolve().parents for p in loaded.records["image_path"])
    reason, detail = _quarantined(loaded)["ham10000/ISIC_0027419"]
    assert reason == "outside_root" and str(secret) in detail and "ISIC_0027419" in detail
    assert any("1 symlinks below" in n and "outside_root" in n for n in loaded.notes)


def test_ham10000_directory_link_out_of_the_root_is_not_entered(tmp_path: Path) -> None:
    root = fa.build_ham(tmp_path / "ham")
    part = root / "HAM10000_images_part_2"
    part.rename(tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", part)
    loaded = ham10000.load(root)
    moved = {f"ham10000/{image}" for i, (_, image, *_r) in enumerate(fa.HAM_ROWS) if i % 2}
    # The folder behind the link is never listed, so its ids are not found; the note names the link.
    assert set(loaded.quarantine["sample_id"]) == moved and set(loaded.records["sample_id"]).isdisjoint(moved)
    assert (loaded.quarantine["reason"] == "missing_file").all()
    assert any("1 symlinks below" in n and f"{part} -> {(tmp_path / 'elsewhere').resolve()}" in n for n in loaded.notes)


def test_links_that_stay_inside_the_root_still_count(tmp_path: Path) -> None:
    root = fa.build_ham(tmp_path / "ham")
    image = root / "HAM10000_images_part_1" / "ISIC_0027419.jpg"
    image.rename(root / "store.jpg")
    os.symlink(root / "store.jpg", image)
    loaded = ham10000.load(root)
    assert loaded.quarantine.empty and len(loaded.records) == len(fa.HAM_ROWS)
    assert not any("symlinks below" in n for n in loaded.notes)


def test_derm7pt_link_out_of_the_root_is_quarantined(tmp_path: Path) -> None:
    top = fa.build_derm7pt(tmp_path / "d7")
    secret = _link_out(top / "images" / "FCL" / "Fcl001.jpg", tmp_path / "private" / "Fcl001.jpg")
    loaded = derm7pt.load(tmp_path / "d7")
    bad = loaded.quarantine.set_index("sample_id")
    assert bad.loc["derm7pt/case3/clinic", "reason"] == "outside_root"
    assert str(secret) in bad.loc["derm7pt/case3/clinic", "detail"]


def test_fitzpatrick17k_link_out_of_the_root_is_quarantined(tmp_path: Path) -> None:
    root = fb.build_fitzpatrick17k(tmp_path / "fitz")
    _link_out(root / "images" / f"{'a' * 32}.jpg", tmp_path / "private" / "a.jpg")
    loaded = fitzpatrick17k.load(root)
    reason, detail = _quarantined(loaded)[f"fitzpatrick17k/{'a' * 32}"]
    assert reason == "outside_root" and "md5hash" in detail


def test_dermnet_file_link_out_of_the_root_is_quarantined(tmp_path: Path) -> None:
    root = fb.build_dermnet(tmp_path / "dermnet")
    name = "eczema-hand-12.jpg"
    secret = _link_out(root / "train" / "Eczema Photos" / name, tmp_path / "private" / name)
    loaded = dermnet.load(root)
    reason, detail = _quarantined(loaded)[f"dermnet/train/Eczema Photos/{name}"]
    assert reason == "outside_root" and str(secret.resolve()) in detail
    assert len(loaded.records) + len(loaded.quarantine) == sum(len(v) for v in fb.DERMNET_FILES.values())


def test_row_checks_and_locator_pieces(tmp_path: Path) -> None:
    from skinr1_pipeline.data.loaders.common import ImageLocator, RowChecks, escapes_root

    root = tmp_path / "r"
    fa.write_image(root / "in.jpg")
    fa.write_image(tmp_path / "out.jpg")
    os.symlink(tmp_path / "out.jpg", root / "away.jpg")
    locator = ImageLocator(root)
    ids = pd.Series(["in", "away", "absent", ""])
    found = locator.find_each(ids)
    assert found.isna().tolist() == [False, True, True, True]
    assert locator.escaped(ids).notna().tolist() == [False, True, False, False]
    checks = RowChecks.for_rows("x", ids, "t.csv", pd.Series([1, 2, 3, 4]))
    checks.image_ids(ids, "id", found, ": no such image", locator=locator)
    assert checks.reason.fillna("").tolist() == ["", "outside_root", "missing_file", "missing_file"]
    paths = pd.Series([str(root / "in.jpg"), str(root / "away.jpg"), None])
    assert escapes_root(paths, root).tolist() == [False, True, False]


def test_derm7pt_images_folder_linked_out_of_the_root_is_not_used(tmp_path: Path) -> None:
    top = fa.build_derm7pt(tmp_path / "d7")
    (top / "images").rename(tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", top / "images")
    loaded = derm7pt.load(tmp_path / "d7")
    assert loaded.records.empty and (loaded.quarantine["reason"] == "missing_file").all()
    assert any("symlinks below" in n and str(top / "images") in n for n in loaded.notes)


def test_dermnet_folder_link_is_not_followed_and_is_reported(tmp_path: Path) -> None:
    root = fb.build_dermnet(tmp_path / "dermnet")
    outside = tmp_path / "private_photos"
    fa.write_image(outside / "eczema-hand-99.jpg")
    os.symlink(outside, root / "train" / "Linked Photos")
    loaded = dermnet.load(root)
    assert not any("private_photos" in str(p) or "Linked Photos" in str(p) for p in loaded.records["image_path"])
    assert any("1 folder symlink(s) not followed" in note for note in loaded.notes), loaded.notes
