"""Leakage-safe train / valid / test assignment.

Rules, in order (Skin-R1's protocol, made group-aware):
1. Samples that share a lesion or a patient form one group (union-find), across datasets where ids share a
   namespace (the ISIC family reuses HAM_/BCN_ lesion ids); a group never straddles two splits.
2. A group whose members carry an official split keeps it. If a dataset has only official train and test,
   `valid_from_train` of its train groups become valid. If official splits inside one group disagree, the
   group goes to the most held-out one (test > valid > train): leakage is worse than a moved sample.
3. Groups with no official split are assigned per (dataset, label) stratum in an order fixed by a seeded
   hash of the group key, to `ratios` of images, so every class appears in every split where it has enough
   groups, and re-running with the same seed gives the same split.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pandas as pd

from skinr1_pipeline.data.schema import SPLITS

# Datasets whose lesion/patient ids come from the shared ISIC archive namespace.
ISIC_NAMESPACE = frozenset({"ham10000", "bcn20000", "isic2019"})
_RANK = {"train": 0, "valid": 1, "test": 2}


@dataclass(frozen=True)
class SplitPolicy:
    seed: int = 42
    ratios: tuple[float, float, float] = (0.6, 0.2, 0.2)
    valid_from_train: float = 0.25

    def __post_init__(self) -> None:
        if len(self.ratios) != 3 or any(r < 0 for r in self.ratios) or abs(sum(self.ratios) - 1.0) > 1e-6:
            raise ValueError(f"split ratios must be three non-negative numbers summing to 1, got {self.ratios}")
        if not 0 <= self.valid_from_train < 1:
            raise ValueError(f"valid_from_train must be in [0, 1), got {self.valid_from_train}")


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _namespace(dataset: str) -> str:
    return "isic" if dataset in ISIC_NAMESPACE else dataset


def group_ids(samples: pd.DataFrame) -> pd.Series:
    """A group id per row: rows sharing a lesion id, patient id or image hash get the same id."""
    uf = _UnionFind(len(samples))
    first_seen: dict[str, int] = {}
    keys = zip(
        samples["source_dataset"], samples["lesion_id"], samples["patient_id"], samples["image_sha256"], strict=True
    )
    for i, (dataset, lesion, patient, sha) in enumerate(keys):
        ns = _namespace(dataset)
        for key in (
            f"lesion:{ns}:{lesion}" if _present(lesion) else None,
            f"patient:{ns}:{patient}" if _present(patient) else None,
            f"sha:{sha}" if _present(sha) else None,
        ):
            if key is None:
                continue
            if key in first_seen:
                uf.union(i, first_seen[key])
            else:
                first_seen[key] = i
    roots = [uf.find(i) for i in range(len(samples))]
    ids = samples["sample_id"].to_numpy()
    return pd.Series([ids[r] for r in roots], index=samples.index, name="group_id")


def _present(value: object) -> bool:
    return value is not None and not (isinstance(value, float) and pd.isna(value)) and str(value).strip() != ""


def _hash01(seed: int, key: str) -> float:
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def assign_splits(samples: pd.DataFrame, policy: SplitPolicy = SplitPolicy()) -> pd.DataFrame:
    """Return a copy with `split` and `split_rule` (official | official_conflict | carved_valid | seeded)."""
    frame = samples.copy()
    frame["_group"] = group_ids(frame).to_numpy()
    official = frame["official_split"].where(frame["official_split"].isin(SPLITS))
    split: dict[str, str] = {}
    rule: dict[str, str] = {}
    for group, values in official.groupby(frame["_group"]):
        found = set(values.dropna())
        if not found:
            continue
        split[group] = max(found, key=_RANK.__getitem__)
        rule[group] = "official" if len(found) == 1 else "official_conflict"

    # Datasets with official train + test but no valid: carve valid out of train groups.
    for dataset, rows in frame.groupby("source_dataset"):
        present = set(official[rows.index].dropna())
        if {"train", "test"} <= present and "valid" not in present and policy.valid_from_train > 0:
            train_groups = sorted({g for g in rows["_group"] if split.get(g) == "train" and rule[g] == "official"})
            _assign_stratified(
                frame,
                train_groups,
                (1 - policy.valid_from_train, policy.valid_from_train, 0.0),
                policy.seed,
                split,
                rule,
                "carved_valid",
                only_dataset=str(dataset),
            )

    unassigned = sorted(set(frame["_group"]) - set(split))
    _assign_stratified(frame, unassigned, policy.ratios, policy.seed, split, rule, "seeded")
    frame["split"] = frame["_group"].map(split)
    frame["split_rule"] = frame["_group"].map(rule)
    return frame.drop(columns="_group")


def _assign_stratified(
    frame: pd.DataFrame,
    groups: list[str],
    ratios: tuple[float, float, float],
    seed: int,
    split: dict[str, str],
    rule: dict[str, str],
    rule_name: str,
    only_dataset: str | None = None,
) -> None:
    if not groups:
        return
    wanted = set(groups)
    members = frame[frame["_group"].isin(wanted)]
    # A group's stratum: its dataset and its most common label (ties: smallest node id).
    summary = members.groupby("_group").agg(
        dataset=("source_dataset", "first"),
        label=("taxonomy_node", lambda s: s.value_counts().sort_index().idxmax()),
        size=("sample_id", "size"),
    )
    for _, stratum in summary.groupby(["dataset", "label"]):
        order = sorted(stratum.index, key=lambda g: _hash01(seed, f"{only_dataset or ''}:{g}"))
        total = float(stratum["size"].sum())
        cumulative = 0.0
        bounds = (ratios[0], ratios[0] + ratios[1])
        for g in order:
            # Place the group by where its midpoint falls in the cumulative image share.
            mid = (cumulative + stratum.at[g, "size"] / 2) / total
            cumulative += stratum.at[g, "size"]
            target = "train" if mid < bounds[0] else ("valid" if mid < bounds[1] else "test")
            split[g] = target
            rule[g] = rule_name


def leakage_report(samples: pd.DataFrame) -> dict[str, list[str]]:
    """Image hashes, lesion ids and patient ids found in more than one split (empty lists = no leakage)."""
    out: dict[str, list[str]] = {}
    keyed = samples.assign(
        _lesion=[
            f"{_namespace(d)}:{v}" if _present(v) else None
            for d, v in zip(samples["source_dataset"], samples["lesion_id"])
        ],
        _patient=[
            f"{_namespace(d)}:{v}" if _present(v) else None
            for d, v in zip(samples["source_dataset"], samples["patient_id"])
        ],
    )
    for label, column in (("image_sha256", "image_sha256"), ("lesion_id", "_lesion"), ("patient_id", "_patient")):
        present = keyed.dropna(subset=[column])
        spread = present.groupby(column)["split"].nunique()
        out[label] = sorted(str(k) for k in spread[spread > 1].index)
    return out
