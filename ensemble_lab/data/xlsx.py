"""The first worksheet of an Excel .xlsx workbook as text cells, with the standard library alone.

An .xlsx file is a zip of XML parts (Office Open XML, ECMA-376): ``xl/workbook.xml`` lists the sheets
in order, ``xl/_rels/workbook.xml.rels`` maps each to its part, the sheet's ``<c>`` cells hold either a
number, an index into ``xl/sharedStrings.xml`` (``t="s"``) or an inline string. That is all the UCI
workbooks (energy, power) use, so no spreadsheet package is needed to read them.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from xml.etree import ElementTree

_MAIN = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"
_REL = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}"
_PACKAGE_REL = "{http://schemas.openxmlformats.org/package/2006/relationships}"
_CELL_REF = re.compile(r"([A-Z]+)(\d+)")


def _column_index(letters: str) -> int:
    """Spreadsheet column letters to a 0-based index: A -> 0, Z -> 25, AA -> 26."""
    index = 0
    for letter in letters:
        index = index * 26 + ord(letter) - ord("A") + 1
    return index - 1


def _text(element: ElementTree.Element) -> str:
    """The text of a shared or inline string: plain ``<t>``, or rich text split over several runs."""
    return "".join(t.text or "" for t in element.iter(f"{_MAIN}t"))


def _first_sheet_part(book: zipfile.ZipFile) -> str:
    """The zip member of the workbook's first sheet (workbook order, not the part's file name)."""
    workbook = ElementTree.fromstring(book.read("xl/workbook.xml"))
    first = workbook.find(f"{_MAIN}sheets/{_MAIN}sheet")
    if first is None:
        raise ValueError("the workbook lists no sheet")
    rel_id = first.get(f"{_REL}id")
    rels = ElementTree.fromstring(book.read("xl/_rels/workbook.xml.rels"))
    for rel in rels.iter(f"{_PACKAGE_REL}Relationship"):
        if rel.get("Id") == rel_id:
            target = rel.get("Target", "")
            # targets are relative to xl/, or absolute from the package root
            return target.lstrip("/") if target.startswith("/") else f"xl/{target}"
    raise ValueError(f"the first sheet's relationship {rel_id!r} is not in the workbook's relationships")


def read_first_sheet(path: Path) -> list[list[str]]:
    """Rows of the first worksheet of ``path`` as lists of cell texts ("" for an empty cell).

    Numbers come back as written in the file (e.g. "0.98"); rows with no value at all are left out.
    Raises ValueError (or zipfile.BadZipFile, KeyError) for a file that is not such a workbook.
    """
    with zipfile.ZipFile(path) as book:
        names = set(book.namelist())
        shared: list[str] = []
        if "xl/sharedStrings.xml" in names:
            strings = ElementTree.fromstring(book.read("xl/sharedStrings.xml"))
            shared = [_text(si) for si in strings.iter(f"{_MAIN}si")]
        sheet = ElementTree.fromstring(book.read(_first_sheet_part(book)))
    rows: list[list[str]] = []
    for row in sheet.iter(f"{_MAIN}row"):
        cells: dict[int, str] = {}
        for position, cell in enumerate(row.iter(f"{_MAIN}c")):
            ref = _CELL_REF.match(cell.get("r", ""))
            column = _column_index(ref.group(1)) if ref else position  # r is optional in the format
            kind, value = cell.get("t"), cell.find(f"{_MAIN}v")
            if kind == "s" and value is not None:
                cells[column] = shared[int(value.text or "0")]
            elif kind == "inlineStr":
                inline = cell.find(f"{_MAIN}is")
                cells[column] = _text(inline) if inline is not None else ""
            elif value is not None and value.text is not None:
                cells[column] = value.text
        if any(text.strip() for text in cells.values()):
            rows.append([cells.get(c, "") for c in range(max(cells) + 1)])
    return rows
