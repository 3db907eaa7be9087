"""A study's results file, written as each result arrives: one whole row appended and flushed at
a time, so that a study cut short (Ctrl+C, a lost driver, a worker that cannot go on) keeps what
it measured, and `--resume` reads it back and runs only the rest.

    out = ResultsFile.open("a.csv", keys, resume=True)   # a CSV (sweep, sensitivity) or JSON lines
    out.done                                             # key -> row already in the file
    out.add(key, row)                                    # appended and flushed as it arrives
    out.finish(keys)                                     # rewritten in the study's order

A CSV row is the study's own row, its key in one of its columns; a JSON-lines row is
{"key": ..., "row": ...}. A last line cut off mid-write is dropped on resume; a row whose key is
not among the study's is refused (the file holds another study).
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from engine.errors import UserError


class ResultsFile:
    """One study's rows in `path`, CSV when it ends in .csv (the key in column `key_column`),
    JSON lines otherwise."""

    def __init__(self, path, key_column: str | None = None):
        self.path, self.key_column = Path(path), key_column
        self.csv = self.path.suffix.lower() == ".csv"
        self.done: dict = {}
        self.fields: list | None = None

    @classmethod
    def open(cls, path, keys, resume: bool = False, key_column: str | None = None) -> "ResultsFile":
        """The results file for a study of `keys` (None: any key, each naming all it depends on):
        with `resume`, the rows already there (a missing file is a start from nothing); without,
        an empty file."""
        out = cls(path, key_column)
        if resume and out.path.exists():
            out._read(None if keys is None else set(keys))
        out._rewrite(list(out.done))
        return out

    def _read(self, keys: set | None) -> None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"--resume: cannot read {str(self.path)!r} ({e})") from None
        if text and not text.endswith("\n"):  # cut off mid-write: that row was not whole
            text = text[:text.rfind("\n") + 1]
        if self.csv:
            reader = csv.DictReader(io.StringIO(text))
            rows = [(r.get(self.key_column), r) for r in reader]
            self.fields = reader.fieldnames and list(reader.fieldnames)
            if self.fields and self.key_column not in self.fields:
                raise UserError(f"--resume: {str(self.path)!r} is not the results file of this study "
                                f"(no column {self.key_column!r})")
        else:
            rows = []
            for line in filter(None, text.splitlines()):
                try:
                    item = json.loads(line)
                    rows.append((item["key"], item["row"]))
                except (ValueError, KeyError, TypeError):
                    raise UserError(f"--resume: {str(self.path)!r} is not the results file of this study "
                                    "(a line that is not a result)") from None
        for key, row in rows:
            if keys is not None and key not in keys:
                raise UserError(f"--resume: {str(self.path)!r} holds results of another study "
                                f"({str(key)[:80]!r} is not one of this study's)")
            self.done[key] = row

    def add(self, key, row: dict) -> None:
        """Append one row, whole, and flush it to the disk."""
        self.done[key] = row
        with open(self.path, "a", newline="", encoding="utf-8") as fh:
            fh.write(self._line(key, row, header=self.fields is None))
            fh.flush()
            os.fsync(fh.fileno())

    def finish(self, keys) -> None:
        """Rewrite the file with its rows in the order of `keys` (the study's own order)."""
        self._rewrite([k for k in keys if k in self.done])

    def _line(self, key, row: dict, header: bool = False) -> str:
        if not self.csv:
            return json.dumps({"key": key, "row": row}) + "\n"
        buf = io.StringIO()
        if header:
            self.fields = list(row)
        writer = csv.DictWriter(buf, fieldnames=self.fields, lineterminator="\r\n")
        if header:
            writer.writeheader()
        if set(row) != set(self.fields):
            raise UserError(f"--resume: {str(self.path)!r} has other columns than this study writes")
        writer.writerow(row)
        return buf.getvalue()

    def _rewrite(self, keys: list) -> None:
        tmp = self.path.with_name(self.path.name + ".part")
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            if self.csv and self.fields:
                fh.write(self._header())
            fh.writelines(self._line(k, self.done[k]) for k in keys)
        os.replace(tmp, self.path)

    def _header(self) -> str:
        buf = io.StringIO()
        csv.DictWriter(buf, fieldnames=self.fields, lineterminator="\r\n").writeheader()
        return buf.getvalue()
