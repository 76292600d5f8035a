"""The error of jface's data sources (:mod:`jface.data.sources`, :mod:`jface.data.photos`)."""

from __future__ import annotations

__all__ = ["DataSourceError"]


class DataSourceError(ValueError):
    """A data source cannot be used: it does not exist, holds nothing usable, lacks a field the
    task needs, or a record cannot be read. The message names the source (path or dataset), the
    field or record, and what was expected; command lines print it as one line."""
