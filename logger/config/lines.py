"""Where each key of a TOML document sits: a map from key paths to line numbers.

``tomllib`` returns values without positions, yet an installer needs "line 42: baud_rate must
be one of ...". This scanner reads the same text once more, tracking table headers
(``[a.b]``, ``[[a.b]]`` with their element indices), dotted keys, multi-line strings and
multi-line arrays, and records the line where each key path starts. It does not validate TOML
(``tomllib`` already did); it only has to agree with it on structure. Paths are tuples of keys
and array indices, e.g. ``("meters", 2, "registers", 0, "type")``; a path inside an inline table
or array resolves to the line of its nearest recorded parent.
"""

from __future__ import annotations

import re
from typing import Any

Path = tuple[str | int, ...]

_BARE = re.compile(r"[A-Za-z0-9_-]+")


def _parse_key(text: str, pos: int) -> tuple[list[str], int]:
    """A (dotted) key starting at ``pos``; returns its parts and the position after it."""
    parts: list[str] = []
    n = len(text)
    while True:
        while pos < n and text[pos] in " \t":
            pos += 1
        if pos < n and text[pos] in "\"'":
            quote = text[pos]
            end = pos + 1
            buf = []
            while end < n and text[end] != quote:
                if quote == '"' and text[end] == "\\" and end + 1 < n:
                    buf.append(text[end + 1])
                    end += 2
                    continue
                buf.append(text[end])
                end += 1
            parts.append("".join(buf))
            pos = end + 1
        else:
            m = _BARE.match(text, pos)
            if not m:
                return parts, pos
            parts.append(m.group(0))
            pos = m.end()
        while pos < n and text[pos] in " \t":
            pos += 1
        if pos < n and text[pos] == ".":
            pos += 1
            continue
        return parts, pos


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.lines: dict[Path, int] = {}
        self.aot: dict[Path, int] = {}  # array-of-tables path -> elements seen

    def resolve(self, parts: list[str]) -> Path:
        path: Path = ()
        for part in parts:
            path = (*path, part)
            if path in self.aot:
                path = (*path, self.aot[path] - 1)
        return path

    def scan(self) -> dict[Path, int]:
        text = self.text
        i = 0
        n = len(text)
        line = 1
        table: Path = ()
        at_line_start = True
        while i < n:
            c = text[i]
            if c == "\n":
                line += 1
                i += 1
                at_line_start = True
                continue
            if c in " \t\r":
                i += 1
                continue
            if c == "#":
                while i < n and text[i] != "\n":
                    i += 1
                continue
            if not at_line_start:
                i += 1
                continue
            at_line_start = False
            if c == "[":
                is_aot = text.startswith("[[", i)
                parts, j = _parse_key(text, i + (2 if is_aot else 1))
                if is_aot:
                    base = (*self.resolve(parts[:-1]), parts[-1])
                    self.aot[base] = self.aot.get(base, 0) + 1
                    table = (*base, self.aot[base] - 1)
                    self.lines.setdefault(base, line)
                else:
                    table = self.resolve(parts)
                self.lines[table] = line
                i = text.find("\n", j) if "\n" in text[j:] else n
                continue
            parts, j = _parse_key(text, i)
            if not parts:
                i += 1
                continue
            path = table
            for part in parts:
                path = (*path, part)
                self.lines.setdefault(path, line)
            # skip '=' and the value, which may span lines (arrays, multi-line strings)
            j = text.find("=", j) + 1
            i, line = self._skip_value(j, line, path)
        return self.lines

    def _skip_value(self, i: int, line: int, path: Path) -> tuple[int, int]:
        """Skip one value (to the end of its line, or of its last line), recording the line of
        each array element and inline-table key inside it."""
        text = self.text
        n = len(text)
        # open containers: [is_array, path, element index, expecting an element/key]
        stack: list[list[Any]] = []
        value_path = path
        while i < n:
            c = text[i]
            if c in " \t\r":
                i += 1
                continue
            if c == "\n":
                if not stack:
                    return i, line
                line += 1
                i += 1
                continue
            if c == "#":
                while i < n and text[i] != "\n":
                    i += 1
                continue
            if stack and stack[-1][3] and c not in "]}":
                frame = stack[-1]
                frame[3] = False
                if frame[0]:
                    value_path = (*frame[1], frame[2])
                    self.lines.setdefault(value_path, line)
                else:
                    parts, i = _parse_key(text, i)
                    value_path = frame[1]
                    for part in parts:
                        value_path = (*value_path, part)
                        self.lines.setdefault(value_path, line)
                    i = text.find("=", i) + 1
                    continue
            if text.startswith('"""', i) or text.startswith("'''", i):
                delim = text[i : i + 3]
                end = text.find(delim, i + 3)
                end = n if end < 0 else end + 3
                while end < n and text[end] == delim[0]:
                    end += 1  # up to two quotes may close right before the delimiter
                line += text.count("\n", i, end)
                i = end
                continue
            if c == '"':
                i += 1
                while i < n and text[i] not in '"\n':
                    i += 2 if text[i] == "\\" else 1
                i += 1
                continue
            if c == "'":
                end = text.find("'", i + 1)
                i = n if end < 0 else end + 1
                continue
            if c in "[{":
                stack.append([c == "[", value_path, 0, True])
            elif c in "]}":
                if stack:
                    stack.pop()
            elif c == "," and stack:
                stack[-1][3] = True
                if stack[-1][0]:
                    stack[-1][2] += 1
            i += 1
        return i, line


def key_lines(text: str) -> dict[Path, int]:
    """Map every key path in ``text`` (already valid TOML) to its line number (1-based)."""
    return _Scanner(text).scan()


def line_of(lines: dict[Path, int], path: Path) -> int | None:
    """The line of ``path`` or of its nearest recorded parent."""
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return None
