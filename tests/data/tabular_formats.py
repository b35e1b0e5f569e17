"""Writers of tiny tabular datasets in their native formats (CSV, ';'-separated, whitespace, .xlsx, .tgz),
for tests: nothing binary is committed. ``write_native(root, dataset, values)`` writes ``values``
(N, columns) where :mod:`ensemble_lab.data.tabular_readers` looks, laid out as the distributed file is."""

from __future__ import annotations

import csv
import io
import tarfile
import zipfile
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np

#: header rows as the distributed files have them (None: the file has no header)
HEADERS: dict[str, list[str] | None] = {
    "concrete": [
        "Cement (component 1)(kg in a m^3 mixture)", "Blast Furnace Slag (component 2)(kg in a m^3 mixture)",
        "Fly Ash (component 3)(kg in a m^3 mixture)", "Water  (component 4)(kg in a m^3 mixture)",
        "Superplasticizer (component 5)(kg in a m^3 mixture)", "Coarse Aggregate  (component 6)(kg in a m^3 mixture)",
        "Fine Aggregate (component 7)(kg in a m^3 mixture)", "Age (day)", "Concrete compressive strength(MPa, megapascals) ",
    ],
    "energy": ["X1", "X2", "X3", "X4", "X5", "X6", "X7", "X8", "Y1", "Y2"],
    "kin8nm": [*(f"theta{i}" for i in range(1, 9)), "y"],
    "naval": None,
    "power": ["AT", "V", "AP", "RH", "PE"],
    "protein": ["RMSD", *(f"F{i}" for i in range(1, 10))],
    "wine_quality_red": [
        "fixed acidity", "volatile acidity", "citric acid", "residual sugar", "chlorides", "free sulfur dioxide",
        "total sulfur dioxide", "density", "pH", "sulphates", "alcohol", "quality",
    ],
    "yacht": None,
    "california": None,
}
COLUMNS = {"concrete": 9, "energy": 10, "kin8nm": 9, "naval": 18, "power": 5, "protein": 10,
           "wine_quality_red": 12, "yacht": 7, "california": 9}


def exact(values: np.ndarray, text: str = "{:.6f}") -> np.ndarray:
    """``values`` as a file written with format ``text`` stores them (what a reader must give back)."""
    return np.vectorize(lambda v: float(text.format(v)))(values)


def _csv(path: Path, header: list[str] | None, rows: np.ndarray, delimiter: str, quote_header: bool = False) -> None:
    out = io.StringIO()
    if header is not None:
        quoting = csv.QUOTE_ALL if quote_header else csv.QUOTE_MINIMAL
        csv.writer(out, delimiter=delimiter, quoting=quoting, lineterminator="\n").writerow(header)
    for row in rows:
        out.write(delimiter.join(f"{v:.6f}" for v in row) + "\n")
    path.write_text(out.getvalue())


def _column_letters(index: int) -> str:
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("A") + rest) + letters
    return letters


def _sheet_xml(header: list[str], rows: np.ndarray, strings: list[str]) -> str:
    cells = []
    for c, name in enumerate(header):  # header cells point into the shared strings, as Excel writes them
        strings.append(name)
        cells.append(f'<c r="{_column_letters(c)}1" t="s"><v>{len(strings) - 1}</v></c>')
    xml_rows = [f'<row r="1">{"".join(cells)}</row>']
    for r, row in enumerate(rows, start=2):
        xml_rows.append(f'<row r="{r}">' + "".join(
            f'<c r="{_column_letters(c)}{r}"><v>{v:.6f}</v></c>' for c, v in enumerate(row)) + "</row>")
    xml_rows.append(f'<row r="{len(rows) + 2}"><c r="A{len(rows) + 2}" t="s"/></row>')  # an empty trailing row
    main = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
    return f'<?xml version="1.0" encoding="UTF-8"?><worksheet xmlns="{main}"><sheetData>{"".join(xml_rows)}</sheetData></worksheet>'


def write_xlsx(path: Path, sheets: list[tuple[list[str], np.ndarray]], parts: list[str] | None = None) -> Path:
    """An .xlsx workbook whose sheets, in workbook order, hold (header, numeric rows); ``parts`` names each
    sheet's zip member (default sheet1.xml, sheet2.xml, ...: order in the workbook need not follow them)."""
    parts = parts or [f"sheet{i + 1}.xml" for i in range(len(sheets))]
    main = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
    rel = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
    pkg = "http://schemas.openxmlformats.org/package/2006/relationships"
    strings: list[str] = []
    sheet_xml = [_sheet_xml(header, rows, strings) for header, rows in sheets]
    book = "".join(f'<sheet name="Sheet{i + 1}" sheetId="{i + 1}" r:id="rId{i + 1}"/>' for i in range(len(sheets)))
    rels = "".join(
        f'<Relationship Id="rId{i + 1}" Type="{rel}/worksheet" Target="worksheets/{p}"/>' for i, p in enumerate(parts)
    )
    shared = "".join(f"<si><t>{escape(s)}</t></si>" for s in strings)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", '<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/'
                   'package/2006/content-types"><Default Extension="xml" ContentType="application/xml"/></Types>')
        z.writestr("_rels/.rels", f'<Relationships xmlns="{pkg}"><Relationship Id="rId1" '
                   f'Type="{rel}/officeDocument" Target="xl/workbook.xml"/></Relationships>')
        z.writestr("xl/workbook.xml", f'<workbook xmlns="{main}" xmlns:r="{rel}"><sheets>{book}</sheets></workbook>')
        z.writestr("xl/_rels/workbook.xml.rels", f'<Relationships xmlns="{pkg}">{rels}</Relationships>')
        z.writestr("xl/sharedStrings.xml", f'<sst xmlns="{main}" count="{len(strings)}">{shared}</sst>')
        for part, xml in zip(parts, sheet_xml):
            z.writestr(f"xl/worksheets/{part}", xml)
    return path


def write_native(root: Path | str, dataset: str, values: np.ndarray, extracted: bool = False) -> Path:
    """``values`` (N, columns) as ``dataset``'s distributed file under ``root/<dataset>/``; returns its path.

    Numbers are written with 6 decimals (naval's in its 3-digit exponent notation): compare against
    :func:`exact`. california is written as cal_housing.tgz, or extracted if ``extracted``.
    """
    folder = Path(root) / dataset
    folder.mkdir(parents=True, exist_ok=True)
    header = HEADERS[dataset]
    if dataset in ("concrete", "kin8nm", "protein"):
        path = folder / {"concrete": "Concrete_Data.csv", "kin8nm": "kin8nm.csv", "protein": "CASP.csv"}[dataset]
        _csv(path, header, values, ",")
    elif dataset == "wine_quality_red":  # ';'-separated, the header's names in quotes
        path = folder / "winequality-red.csv"
        _csv(path, header, values, ";", quote_header=True)
    elif dataset in ("energy", "power"):
        path = folder / ("ENB2012_data.xlsx" if dataset == "energy" else "Folds5x2_pp.xlsx")
        assert header is not None
        # power's workbook holds 5 shuffled copies; a second sheet of other numbers checks the first is read
        write_xlsx(path, [(header, values), (header, values[::-1] + 1.0)])
    elif dataset == "naval":  # fixed-width columns, 3-digit exponents, leading spaces
        path = folder / "data.txt"
        path.write_text("".join("".join(f"{v:12.3E}" for v in row) + "\n" for row in values))
    elif dataset == "yacht":  # single spaces, trailing spaces on some lines and blank lines at the end
        path = folder / "yacht_hydrodynamics.data"
        path.write_text("".join(" ".join(f"{v:.6f}" for v in row) + (" \n" if i % 2 else "\n")
                                for i, row in enumerate(values)) + "\n\n")
    elif dataset == "california":
        text = "".join(",".join(f"{v:.6f}" for v in row) + "\n" for row in values).encode("ascii")
        if extracted:
            path = folder / "CaliforniaHousing" / "cal_housing.data"
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(text)
        else:
            path = folder / "cal_housing.tgz"
            with tarfile.open(path, "w:gz") as archive:
                for name, data in (("CaliforniaHousing/cal_housing.domain", b"longitude: continuous.\n"),
                                   ("CaliforniaHousing/cal_housing.data", text)):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    archive.addfile(info, io.BytesIO(data))
    else:
        raise ValueError(f"no native writer for {dataset}")
    return path
