"""The page a report is read on: tables that fit it without horizontal scrolling at 1280 px.

The report's page (report.STYLE: 1200 px at 90 % font, ~7.5 px a character) holds about PAGE_CHARS characters of
table a line; a wider table is split into parts that each repeat the row label (`column_groups`). Used by the tables
(`par.analysis.tables`) and the learning-curve differences (`par.analysis.curves`).
"""

from __future__ import annotations

TEXT = ("row", "model", "setup")  # left-aligned; every other column is a number
PAGE_CHARS = 130
CELL_PAD = 2  # a cell's padding and border, in characters
TEXT_WRAP = 14  # a text column wraps at spaces: it takes about this many characters when its text is longer


def column_width(df, col: str) -> int:
    """Characters a column takes on the page: numbers never wrap (their widest cell), text and headers wrap at
    spaces (their longest word, a text column at least TEXT_WRAP when it is longer)."""
    cells = [str(c) for c in df[col]]
    words = max((len(w) for x in [*cells, col] for w in x.split()), default=1)
    if col in TEXT:
        return max(words, min(TEXT_WRAP, max(map(len, cells), default=0))) + CELL_PAD
    return max(words, max(map(len, cells), default=0)) + CELL_PAD


def column_groups(df, width: int = PAGE_CHARS) -> list[list[str]]:
    """The columns in groups that each fit `width` characters, in order; every group after the first starts
    with the row label (the first column) again. One group when the table fits."""
    key, rest = df.columns[0], list(df.columns[1:])
    groups, used = [[key]], column_width(df, key)
    for col in rest:
        w = column_width(df, col)
        if used + w > width and len(groups[-1]) > 1:
            groups.append([key])
            used = column_width(df, key)
        groups[-1].append(col)
        used += w
    return groups


