"""Reading a raw table's value cells: the one rule `scada-prepare` and `scada-runtime replay` share.

`parse_numbers(cells)` turns a column's text cells into float64 and counts the non-numeric ones: empty -> NaN
(not counted); a cell that is not a plain ASCII number (text, "nan", digits grouped with '_', non-ASCII digits,
some of which Python's float would take) -> NaN (counted); +-inf -> NaN (not counted). The values are those
`pandas.to_numeric` gives the same strings, bit for bit. With `decimal=","` (an export written with decimal commas,
`csv_table.CsvDialect`) a cell's ',' reads as the point, and a cell holding a '.' is not a number: there '.' groups
thousands ("1.234,5"), and reading "1.234" as one and a quarter would be 1,000 times off.

`no_numbers(column, channel, text, example, fix, decimal_setting)` is the one refusal both readers give a column
whose cells are text and not one a number: a misread (decimal commas, a status column mapped to a channel), not a
sensor's gaps. `other_decimal(cells, decimal)` finds a text cell that is a number written with the other decimal
mark (and not one that thousands grouping could explain: not three digits after the mark), and
`wrong_decimal(...)` is the refusal both readers give a column holding numbers and such a cell: a table read with
the wrong decimal setting loses those cells silently otherwise.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

import numpy as np

from scada_tcn.runtime.errors import InputError

__all__ = [
    "cell_number",
    "counted_text",
    "first_text",
    "is_number",
    "no_numbers",
    "other_decimal",
    "parse_numbers",
    "wrong_decimal",
]

_OTHER_MARK = {  # a number written with the other decimal mark, not three digits after it (thousands grouping)
    ".": re.compile(r"\s*[-+]?\d*,(?:\d{1,2}|\d{4,})\s*"),
    ",": re.compile(r"\s*[-+]?\d*\.(?:\d{1,2}|\d{4,})\s*"),
}


def _float(cell: str) -> float:
    try:
        return float(cell)
    except ValueError:
        return math.nan


def cell_number(cell: str, decimal: str = ".") -> float:
    """One cell's number by the rule of `parse_numbers` (a plain ASCII number, surrounding spaces allowed, no '_';
    +-inf kept), NaN when it is not one: empty, text, "nan", non-ASCII digits."""
    if not cell.isascii() or "_" in cell:
        return math.nan
    if decimal == ",":
        if "." in cell:
            return math.nan
        cell = cell.replace(",", ".")
    return _float(cell)


def is_number(cell: str, decimal: str = ".") -> bool:
    """One cell, by the rule of `parse_numbers` (`cell_number`): +-inf included; empty, text, "nan" and non-ASCII
    digits are not."""
    return not math.isnan(cell_number(cell, decimal))


def parse_numbers(cells: Sequence[str] | np.ndarray, decimal: str = ".") -> tuple[np.ndarray, int]:
    """A column's cells (Python strings: a list, or an object array) -> (float64 values, count of non-numeric
    cells); see the module docstring. One vectorised parse for an all-numeric column (the usual case), cell by cell
    when some cell is text."""
    raw = np.array(cells, dtype=str)
    points = raw.view(np.uint32).reshape(raw.size, raw.itemsize // 4)  # UCS-4 code points, 0-padded
    nul, filled = _nul(cells), raw != ""
    text = filled | nul
    plain = (points < 128).all(axis=1) & (points != ord("_")).all(axis=1) & filled & ~nul
    if decimal == "," and raw.size:  # '.' groups thousands there: such a cell is text; ',' reads as the point
        plain &= (points != ord(".")).all(axis=1)
        raw = np.strings.replace(raw, ",", ".")
    kept = np.where(plain, raw, "nan")
    try:
        x = kept.astype(np.float64)
    except ValueError:
        x = np.array([_float(c) for c in kept.tolist()], dtype=np.float64)
    bad = int(np.count_nonzero(np.isnan(x) & text))
    x[~np.isfinite(x)] = np.nan
    return x, bad


def _nul(cells: Sequence[str] | np.ndarray) -> np.ndarray | bool:
    """Which cells hold a NUL character (False when none does, the usual case, found in one join): numpy's str
    type drops trailing NULs, and "5\x00" would read as 5 where pandas and `cell_number` see text."""
    if isinstance(cells, np.ndarray) and cells.dtype.kind == "U":
        raise TypeError("parse_numbers: give the cells as Python strings (a list or an object array): numpy's str "
                        "type has already dropped trailing NUL characters")  # fmt: skip
    if "\x00" not in "".join(cells):
        return False
    return np.array(["\x00" in c for c in cells], dtype=bool)


def counted_text(cells: Sequence[str] | np.ndarray, values: np.ndarray, k: int = 3) -> list[str]:
    """The first `k` cells that `parse_numbers` counted as non-numeric, given the values it read from them (NaN and
    not empty), in one vectorised pass: a refusal's examples."""
    text = (np.asarray(cells, dtype=str) != "") | _nul(cells)  # "\x00" is text, though numpy's str makes it ""
    return np.asarray(cells, dtype=object)[np.isnan(values) & text][:k].tolist()


def first_text(cells: Iterable[str], decimal: str = ".") -> str | None:
    """The first cell that `parse_numbers` counts as non-numeric (not empty, not a number), or None."""
    return next((c for c in cells if c and not is_number(c, decimal)), None)


def no_numbers(column: str, channel: str, text: int, example: str, fix: str, decimal_setting: str) -> InputError:
    """The refusal of a column whose `text` non-empty cells hold not one number (`example`: one of them): it
    names the column, shows the cell, says "a decimal comma?" when the cell reads as one (naming
    `decimal_setting`, the key that reads them), and ends with `fix`."""
    comma = re.fullmatch(r"\s*[-+]?\d*,\d+\s*", example) is not None
    point = re.fullmatch(r"\s*[-+]?\d*\.\d+\s*", example) is not None  # text only with decimal ','
    hint = (f" (a decimal comma? set {decimal_setting} to ',')" if comma else
            f" (a decimal point? set {decimal_setting} to '.')" if point else "")  # fmt: skip
    return InputError(f"column {column!r} (channel {channel}): none of its cells is a number ({text} text cells, "
                      f"e.g. {example!r}){hint}; {fix}")  # fmt: skip


def other_decimal(cells: Iterable[str], decimal: str) -> str | None:
    """The first of `cells` (text under `decimal`) that is a number written with the other decimal mark, or None."""
    rx = _OTHER_MARK[decimal]
    return next((c for c in cells if rx.fullmatch(c)), None)


def wrong_decimal(column: str, channel: str, example: str, decimal: str, decimal_setting: str) -> InputError:
    """The refusal of a column of numbers holding cells such as `example` written with the other decimal mark."""
    other = "," if decimal == "." else "."
    return InputError(f"column {column!r} (channel {channel}): cells such as {example!r} are numbers written with "
                      f"the decimal mark {other!r}, but the table is read with {decimal!r} ({decimal_setting}): they "
                      f"would be missing; set {decimal_setting} to {other!r}, or export every cell alike")  # fmt: skip
