"""The out-of-distribution hold-out: which samples training must never see, so the OOD suite stays honest."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd


def ood_rows(samples: pd.DataFrame, modalities: Sequence[str], sources: Sequence[str]) -> pd.Series:
    """True for samples in a held-out modality or source dataset."""
    return samples["modality"].isin(list(modalities)) | samples["source_dataset"].isin(list(sources))


def training_rows(samples: pd.DataFrame, modalities: Sequence[str], sources: Sequence[str]) -> pd.DataFrame:
    """In-distribution samples only (any split); what SFT, RL data and the tokenizer corpus may read."""
    return samples[~ood_rows(samples, modalities, sources)].reset_index(drop=True)
