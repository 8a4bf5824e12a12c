"""Turn pipeline results into Dagster metadata a person can read in the UI (Markdown tables, counts)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dagster as dg
import pandas as pd


def raw_value(value: Any) -> Any:
    """The plain value of a metadata entry reported through Pipes (a `MetadataValue`), or the value itself."""
    return getattr(value, "value", value)


def markdown_table(frame: pd.DataFrame, max_rows: int = 50) -> str:
    """A GitHub-style Markdown table; rows past `max_rows` are summarised in a last line, never hidden."""
    if frame.empty:
        return "_(none)_"
    shown = frame.head(max_rows)
    header = "| " + " | ".join(map(str, shown.columns)) + " |"
    rule = "|" + "|".join("---" for _ in shown.columns) + "|"
    body = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in shown.itertuples(index=False)]
    more = [f"\n_… {len(frame) - max_rows} more rows_"] if len(frame) > max_rows else []
    return "\n".join([header, rule, *body, *more])


def _cell(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        value = " › ".join(map(str, value))
    text = "" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")[:200]


def counts_table(counts: Mapping[str, int], key: str, value: str = "count") -> str:
    return markdown_table(pd.DataFrame({key: list(counts), value: list(counts.values())}))


def md(text: str) -> dg.MetadataValue:
    return dg.MetadataValue.md(text)
