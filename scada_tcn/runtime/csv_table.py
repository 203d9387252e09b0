"""Reading a raw SCADA table's files: the one reader `scada-prepare` and `scada-runtime replay` share for CSV.

Contract
--------
* `table_files(path, kinds)`: a file, or a folder's files whose names end in one of `kinds` (".csv", ".csv.gz",
  ".parquet", ".pq"), in name order. Refused: a path that does not exist, a folder with no such file.
* `CsvDialect(delimiter, decimal, skip_lines, settings, encoding)`: how an export is written: its separator (`,`
  `;` tab `|`), its decimal mark (`.` or `,`, which needs another separator; it applies to value cells,
  `cells.parse_numbers`), the lines before its header (an exporter's preamble, such as Greenbyte's `# Turbine: ...`
  lines) and its text encoding (UTF-8 by default; Windows exports are often cp1252). `dialect_problem(delimiter,
  decimal, skip_lines, where, encoding)` says what is wrong with one, or None.
* `csv_columns(path, columns, rows, mapping, dialect)`: the cells (str) of `columns` of a CSV file, plain or
  gzipped (`.gz`), in chunks of at most `rows` data rows (column -> list of cells), read with the csv module a
  block of rows at a time and only `columns` kept (memory holds the needed columns, not the export's every column):
  - in `dialect.encoding` (UTF-8: a byte-order mark, as Excel writes, skipped); `dialect.skip_lines` lines
    skipped whatever they hold, then the first row is the header; blank lines, and lines of spaces only, are
    skipped; line numbers in messages count every line of the file;
  - a row with fewer cells than the header has empty cells for the rest; a row with more is refused, naming its
    line, unless the extra cells are empty (a separator at the end of each line, as some exports write): an
    unquoted separator inside a cell (free status text) would shift every later cell of the row;
  - a cell that spans lines is refused: a quote opened and never closed would swallow the rest of the file;
  - a needed column missing from the header (`mapping` names the settings to fix), or named twice, is refused.
  Refused (InputError, naming the file and what to fix): not UTF-8, not gzip when named `.gz`, a truncated gzip,
  an empty file (or one with no header after the skipped lines), the row and column problems above (a header
  that is a single name holding another separator, or that starts with '#', gets a hint naming the setting).
"""

from __future__ import annotations

import codecs
import csv
import gzip
import itertools
import operator
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, NamedTuple

from scada_tcn.runtime.cells import is_number
from scada_tcn.runtime.errors import InputError

__all__ = [
    "CSV_KINDS", "DELIMITERS", "PARQUET_KINDS", "CsvDialect", "column_positions", "csv_columns", "dialect_problem",
    "lines_before_header", "read_encoding", "table_files",
]  # fmt: skip

CSV_KINDS = (".csv", ".csv.gz")
DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}
MAX_SKIP_LINES = 1000
_BLOCK = 2048  # rows read at a time, then only the needed columns kept (faster and smaller than larger blocks)
PARQUET_KINDS = (".parquet", ".pq")


class CsvDialect(NamedTuple):
    """How a CSV export is written; the defaults are plain CSV. `settings`: the keys that set it, for messages."""

    delimiter: str = ","
    decimal: str = "."
    skip_lines: int = 0
    settings: str = "data.csv"
    encoding: str = "utf-8"


def dialect_problem(delimiter: object, decimal: object, skip_lines: object, where: str, encoding: object = "utf-8"
                    ) -> str | None:  # fmt: skip
    """What is wrong with a dialect's settings (`where`: their section, for the message), or None."""
    if not isinstance(delimiter, str) or delimiter not in DELIMITERS:
        quote = " (in YAML quote it: '|')" if delimiter == "" else ""  # an unquoted | reads as an empty block
        return f"{where}.delimiter: one of {list(DELIMITERS)} expected, got {delimiter!r}{quote}"
    if decimal not in (".", ","):
        return f"{where}.decimal: '.' or ',' expected, got {decimal!r}"
    if decimal == delimiter:
        return f"{where}: decimal ',' needs another delimiter (';' is the usual one with decimal commas)"
    if type(skip_lines) is not int or not 0 <= skip_lines <= MAX_SKIP_LINES:
        return f"{where}.skip_lines: a whole number of lines from 0 to {MAX_SKIP_LINES} expected, got {skip_lines!r}"
    try:
        known = isinstance(encoding, str) and isinstance("".encode(encoding), bytes)  # a text encoding Python knows
    except LookupError:  # an unknown name, or a codec that is not a text encoding (base64, rot13)
        known = False
    if not known:
        return (f"{where}.encoding: a text encoding such as 'utf-8', 'cp1252' (Windows) or 'utf-16' expected, got "
                f"{encoding!r}")  # fmt: skip
    return None


def table_files(path: str | Path, kinds: Sequence[str]) -> list[Path]:
    """`path` itself when it is a file, else the files of the folder `path` named *<kind>, in name order."""
    p = Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and f.name.lower().endswith(tuple(kinds)))
        if not files:
            raise InputError(f"no table files ({', '.join(kinds)}) in folder {p}")
        return files
    raise InputError(f"{p} does not exist (give a table file or a folder of them: {', '.join(kinds)})")


def csv_columns(
    path: str | Path,
    columns: Sequence[str],
    rows: int,
    mapping: str = "the column mapping",
    dialect: CsvDialect = CsvDialect(),
) -> Iterator[dict[str, list[str]]]:
    """The cells of `columns` in chunks of at most `rows` data rows; see the module docstring. `mapping`: the
    settings that name the columns, for the message when one is missing."""
    p = Path(path)
    gz = p.name.lower().endswith(".gz")
    try:
        yield from _chunks(p, gz, columns, rows, mapping, dialect)
    except (UnicodeError, gzip.BadGzipFile, EOFError, zlib.error) as e:
        kind = " (gzip)" if gz else ""
        name = "UTF-8" if read_encoding(dialect.encoding) == "utf-8-sig" else dialect.encoding
        raise InputError(f"{p}: not a {name} CSV file{kind}: {e}; save it as UTF-8 CSV, or set "
                         f"{dialect.settings}.encoding to its encoding (Windows exports: cp1252)"
                         f"{', or gzip it again (the file may be cut short)' if gz else ''}") from e  # fmt: skip
    except csv.Error as e:  # a cell over the csv module's size limit: a quote opened and never closed
        raise InputError(f"{p}: not a readable CSV file ({e}): a quote opened and never closed?") from e


def lines_before_header(path: Path, dialect: CsvDialect) -> str:
    """The `dialect.skip_lines` lines before a CSV file's header, exactly as they are (a byte-order mark included):
    what a copy of the file writes back first."""
    with _open_text(path, dialect.encoding) as fh:
        return "".join(_skip_lines(fh, dialect.skip_lines))


def _open_text(path: Path, encoding: str) -> IO[str]:
    """A CSV file for reading, plain or gzipped (named .gz), lines as they are."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    return opener(path, "rt", newline="", encoding=encoding)


def _skip_lines(fh: IO[str], n: int) -> list[str]:
    """The next `n` physical lines of `fh` (fewer at its end), whatever they hold."""
    return list(itertools.islice(iter(fh.readline, ""), n))


def read_encoding(encoding: str) -> str:
    """The codec that reads a file of `encoding`: UTF-8 skipping a byte-order mark (as Excel writes one)."""
    return "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding


def _blank(row: list[str]) -> bool:
    """A blank line, or one of spaces only (pandas skips both)."""
    return not row or (len(row) == 1 and not row[0].strip())


def _chunks(
    path: Path, gz: bool, columns: Sequence[str], rows: int, mapping: str, dialect: CsvDialect
) -> Iterator[dict[str, list[str]]]:
    with _open_text(path, read_encoding(dialect.encoding)) as fh:
        skipped = len(_skip_lines(fh, dialect.skip_lines))
        reader = csv.reader(fh, delimiter=dialect.delimiter)
        header = next(reader, None)
        while header is not None and _blank(header):  # blank lines before the header
            header = next(reader, None)
        if header is None:
            if dialect.skip_lines:
                raise InputError(f"{path}: no header after the {skipped} lines skipped ({dialect.settings}."
                                 f"skip_lines is {dialect.skip_lines}): set it to the number of lines before the "
                                 "header")  # fmt: skip
            raise InputError(f"{path}: empty file")
        idx = column_positions(path, header, columns, mapping, dialect)
        width, need = len(header), max(idx.values()) + 1
        pick = operator.itemgetter(*idx.values(), 0)  # and column 0: a tuple even for one column
        out: dict[str, list[str]] = {c: [] for c in idx}
        n = 0
        while True:  # blocks of _BLOCK rows, projected to `columns` as read: memory holds `columns`, not the rows
            first_line = skipped + reader.line_num + 1
            block = list(itertools.islice(reader, min(_BLOCK, rows - n)))
            if not block:
                break
            if skipped + reader.line_num - first_line + 1 > len(block):  # a record spanned lines
                _check_spans(path, block, first_line)
            if max(map(len, block)) > width:
                _check_widths(path, block, width, first_line)
            if min(map(len, block)) < need:  # blank lines, or rows shorter than the header: empty cells
                block = [row + [""] * (need - len(row)) for row in block if not _blank(row)]
            for col, cells in zip(out.values(), zip(*map(pick, block))):
                col.extend(cells)
            n += len(block)
            if n >= rows:
                yield out
                out, n = {c: [] for c in idx}, 0
        if n:
            yield out


def column_positions(
    path: Path, header: list[str], columns: Sequence[str], mapping: str, dialect: CsvDialect | None = None
) -> dict[str, int]:
    """Each needed column's position in a table's `header` (CSV, read with `dialect`, or a Parquet file's columns
    with None); refused: missing (`mapping`: the settings that name them) or named twice."""
    missing = [c for c in columns if c not in header]
    if missing:
        hint = ""
        other = [d for d in DELIMITERS if dialect is not None and d != dialect.delimiter and d in header[0]]
        if dialect is not None and len(header) == 1 and other:
            hint = (f"; it looks separated by {other[0]!r} ({DELIMITERS[other[0]]}): set "
                    f"{dialect.settings}.delimiter to {other[0]!r}")  # fmt: skip
        elif dialect is not None and dialect.skip_lines and any(map(is_number, header)):
            hint = (f"; its header holds numbers: is {dialect.settings}.skip_lines (now {dialect.skip_lines}) more "
                    "than the lines before the header?")  # fmt: skip
        elif dialect is not None and header[0].lstrip().startswith("#") and len(header) < len(set(columns)):
            hint = (f"; it starts with comment lines ('#'): set {dialect.settings}.skip_lines to the number of lines "
                    f"before the header (now {dialect.skip_lines})")  # fmt: skip
        raise InputError(
            f"{path}: columns {missing} not found; the table has {header[:40]}{hint}. "
            f"Fix {mapping} to name columns of your export"
        )
    twice = sorted({c for c in columns if header.count(c) > 1})
    if twice:
        raise InputError(f"{path}: columns {twice} are named more than once in the header; rename the copies")
    return {c: header.index(c) for c in dict.fromkeys(columns)}


def _check_spans(path: Path, block: list[list[str]], first_line: int) -> None:
    """Refuse a cell that spans lines: a SCADA table has one line per row, and a quote opened and never closed
    would swallow the rest of the file into one cell."""
    line = first_line
    for row in block:
        if any("\n" in c or "\r" in c for c in row):
            raise InputError(f"{path}: a cell from line {line} spans lines (a quote opened and never closed?); a "
                             "table has one line per row: close the quote or remove the line breaks")  # fmt: skip
        line += 1


def _check_widths(path: Path, block: list[list[str]], width: int, first_line: int) -> None:
    """Refuse a row with more cells than the header unless the extra ones are empty (trailing separators).
    Lines are counted from the file's first line (a cell spanning lines makes later numbers approximate)."""
    for k, row in enumerate(block):
        if len(row) > width and any(row[width:]):
            raise InputError(
                f"{path}: line {first_line + k} has {len(row)} cells where the header has {width} "
                f"(e.g. {row[width - 1 : width + 1]}): a separator inside an unquoted cell shifts the rest of the "
                "row; quote such cells or remove the separator"
            )
