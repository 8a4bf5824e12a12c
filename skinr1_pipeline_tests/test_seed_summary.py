"""Results over training seeds: means with their spread, and a claim counted only on the seeds where it passes."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from skinr1_pipeline.evaluation.seed_summary import (
    accuracy_over_seeds,
    claims_over_seeds,
    read_seed_tables,
    spread,
    stage_seconds,
)


def _write_seed(folder: Path, sft_acc: float, blind_p: float, shuffled_p: float) -> Path:
    folder.mkdir(parents=True)
    pd.DataFrame(
        [
            {"variant": "base", "in_domain": "0.25 [..]", "in_domain_acc": 0.25, "ood_acc": 0.2},
            {"variant": "sft", "in_domain": f"{sft_acc} [..]", "in_domain_acc": sft_acc, "ood_acc": 0.3},
        ]
    ).to_csv(folder / "ablation_table.csv", index=False)
    pd.DataFrame(
        [
            {"variant": "sft", "suite": "in_domain", "difference": sft_acc - 0.25, "p_value": blind_p},
            {"variant": "base", "suite": "in_domain", "difference": float("nan"), "p_value": float("nan")},
        ]
    ).to_csv(folder / "versus_blind.csv", index=False)
    pd.DataFrame(
        [{"variant": "sft", "suite": "in_domain", "real_minus_shuffled": 0.1, "shuffled_mcnemar_p": shuffled_p}]
    ).to_csv(folder / "image_use.csv", index=False)
    return folder


def test_means_spreads_and_claims_count_the_seeds_that_pass(tmp_path: Path) -> None:
    folders = {
        0: _write_seed(tmp_path / "s0", 0.40, 0.01, 0.02),
        1: _write_seed(tmp_path / "s1", 0.44, 0.03, 0.20),  # reads the image on this seed but not significantly
        2: _write_seed(tmp_path / "s2", 0.42, 0.04, 0.01),
    }
    tables = read_seed_tables(folders)
    assert sorted(set(tables["ablation_table"]["seed"])) == [0, 1, 2]
    accuracy = accuracy_over_seeds(tables["ablation_table"], ["in_domain", "ood"])
    assert accuracy.loc["sft", "in_domain"] == "0.42 ± 0.02 (0.40-0.44)"
    assert accuracy.loc["base", "ood"] == "0.20 ± 0.00 (0.20-0.20)"
    claims = claims_over_seeds(tables["versus_blind"], tables["image_use"]).set_index(["variant", "suite"])
    sft = claims.loc[("sft", "in_domain")]
    assert (sft["seeds_beating_blind"], sft["seeds_beating_shuffled"]) == ("3/3", "2/3")
    assert sft["verdict"] == "beats blind guessing on 3 of 3 seeds; reads the image on 2 of 3"
    assert ("base", "in_domain") not in claims.index  # not evaluated (no answers in the format): no row to misread
    with pytest.raises(KeyError, match=r"suites \['ddx'\]"):
        accuracy_over_seeds(tables["ablation_table"], ["ddx"])


def test_every_seed_passing_is_the_only_full_claim_and_missing_tables_are_named(tmp_path: Path) -> None:
    folders = {s: _write_seed(tmp_path / f"s{s}", 0.4, 0.01, 0.01) for s in (0, 1)}
    claims = claims_over_seeds(**{k: v for k, v in read_seed_tables(folders).items() if k != "ablation_table"})
    assert claims["verdict"].tolist() == ["beats blind guessing and its shuffled image on every seed"]
    (folders[1] / "image_use.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"seed 1: .*image_use\.csv is missing"):
        read_seed_tables(folders)
    with pytest.raises(ValueError, match="no seed folders"):
        read_seed_tables({})


def test_spread_and_stage_seconds() -> None:
    assert spread(pd.Series([0.5])) == "0.50 (1 seed)" and spread(pd.Series([float("nan")])) == "n/a"
    stages = stage_seconds(
        {0: {"base_model": 100.0, "variant_evaluations[sft]": 30.0, "variant_evaluations[base]": 20.0}, 1: {}}
    )
    assert list(stages.index) == ["base_model", "variant_evaluations"]
    assert stages.loc["variant_evaluations", "seed 0"] == 50.0 and stages.loc["base_model", "mean"] == 50.0
