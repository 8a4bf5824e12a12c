"""The out-of-distribution hold-out: which samples training must never see, so the OOD suite stays honest."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

#: Datasets that are only ever evaluated: OmniMedVQA is a question benchmark whose images re-host ISIC and
#: PAD-UFES-20 photographs, so training on it would leak its answers into every other suite.
EVALUATION_ONLY_SOURCES = ("omnimedvqa",)


def evaluation_only(samples: pd.DataFrame) -> pd.Series:
    """True for samples of an evaluation-only dataset (by loader name, or `<loader>/<subset>`)."""
    source = samples["source_dataset"].astype(str)
    return source.isin(EVALUATION_ONLY_SOURCES) | source.str.split("/").str[0].isin(EVALUATION_ONLY_SOURCES)


def ood_rows(samples: pd.DataFrame, modalities: Sequence[str], sources: Sequence[str]) -> pd.Series:
    """True for samples in a held-out modality or source dataset."""
    return samples["modality"].isin(list(modalities)) | samples["source_dataset"].isin(list(sources))


def training_rows(samples: pd.DataFrame, modalities: Sequence[str], sources: Sequence[str]) -> pd.DataFrame:
    """In-distribution samples of trainable datasets (any split); what SFT, RL data and the tokenizer corpus read."""
    return samples[~ood_rows(samples, modalities, sources) & ~evaluation_only(samples)].reset_index(drop=True)
