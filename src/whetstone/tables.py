"""Results that are naturally tables (an evaluation's predictions, a comparison's metrics,
curation's decisions, records) give their rows as dicts; `to_pandas()` and `to_dataset()`
(Hugging Face `datasets`) are written once here, on those rows. Both libraries are imported
on use: results stay cheap to build where nobody asks for a table."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import datasets
    import pandas


class Table:
    """A mixin: subclasses define `rows()`, one flat dict per row, the same keys in each."""

    def rows(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def to_pandas(self) -> pandas.DataFrame:
        import pandas as pd

        return pd.DataFrame(self.rows())

    def to_dataset(self) -> datasets.Dataset:
        import datasets

        return datasets.Dataset.from_list(self.rows())


def json_cell(value: Any) -> str | None:
    """A mapping whose keys vary from row to row, as one JSON text cell: an Arrow column
    needs one type for every row."""
    return None if value is None else json.dumps(value, ensure_ascii=False, sort_keys=True)
