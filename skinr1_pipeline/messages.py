"""Values from a user's files, shortened for messages.

Why: errors, quarantine details and notes quote the offending value so the user can find it, but a value can be
anything a file holds: one 20 MB label became a 20 MB exception in the Dagster log and event store. Every echo
of file content therefore goes through `capped`; the location (file, row, field) is never shortened.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pandas as pd

ECHO_CHARS = 80  # enough to recognise a label, an id or a path
ECHO_ITEMS = 30  # values listed in one message (column names, unknown labels)


def capped(value: Any, limit: int = ECHO_CHARS) -> str:
    """`str(value)`, or its first `limit` characters plus '... (N chars)' so the reader knows it was cut."""
    text = str(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


def capped_each(values: pd.Series, limit: int = ECHO_CHARS) -> pd.Series:
    """`capped` per element, for the vectorised detail strings loaders build; missing values stay missing."""
    return values.map(lambda v: v if v is None or (isinstance(v, float) and pd.isna(v)) else capped(v, limit))


def capped_list(values: Iterable[Any], limit: int = ECHO_CHARS, items: int = ECHO_ITEMS) -> str:
    """A list literal of at most `items` capped values, '+N more' when there were more (a header of 10k columns)."""
    values = list(values)
    shown = [capped(v, limit) for v in values[:items]]
    more = f" (+{len(values) - items} more)" if len(values) > items else ""
    return f"{shown}{more}"
