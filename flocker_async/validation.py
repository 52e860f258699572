"""
The validation toolkit every configuration parser shares.

A parser walks a plain document (from ``flocker_async._yaml.load_yaml`` or
JSON) and, for each value, calls a ``valid_*`` checker with a ``Report``
and the value's key path.  A checker returns the checked value, or records
a ``Problem`` naming the file, the key path and what was expected and
returns None, so a parser goes on and reports every problem of a file at
once.  The parser finally raises one ``ConfigurationError`` with them all.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from typing import (Any, Collection, Dict, Iterable, List, Optional, Sequence, Tuple,
                    Union)

from attrs import frozen

from ._yaml import MAX_DOCUMENT_BYTES, YAMLProblem, format_path, load_yaml

__all__ = [
    "Path",
    "NAME_PATTERN",
    "NAME_RULE",
    "MIN_DURATION",
    "MAX_DURATION",
    "MAX_HINT_CANDIDATES",
    "MAX_HINT_COMPARISONS",
    "Problem",
    "ConfigurationError",
    "Report",
    "describe",
    "is_int",
    "check_name",
    "parse_size",
    "parse_duration",
    "valid_integer",
    "valid_port",
    "valid_string",
    "valid_name",
    "valid_size",
    "valid_duration",
    "valid_mapping",
    "close_match",
    "read_document",
    "read_file",
]

Path = Tuple[Union[str, int], ...]

# One character set for every name that reaches docker, ZFS or iptables:
# it cannot start with "-" (an option), has no spaces, quotes, slashes,
# dots, "@" or ":" (ZFS snapshot and dataset separators).
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}\Z")
NAME_RULE = ("1-63 characters: letters, digits, '-' and '_', "
             "starting with a letter or digit")

# ASCII: int() reads other scripts' digits, which no one means as a size.
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGTkmgt]?)(i?[Bb])?\s*\Z", re.ASCII)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}

_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhSMH]?)\s*\Z", re.ASCII)
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600}
MIN_DURATION = 1.0
MAX_DURATION = 7 * 24 * 3600.0

# "did you mean" compares a word with every candidate (difflib, about 6 us
# each) and a node runs it on its reactor while decoding an apply: no hint
# among more candidates than this, and no more comparisons than this per
# file, so 2,000 bad references cost nothing rather than 4,000,000
# comparisons.
MAX_HINT_CANDIDATES = 200
MAX_HINT_COMPARISONS = 10_000


# --- problems -------------------------------------------------------------------

@frozen
class Problem:
    """One thing wrong in one file."""

    file: str
    path: str
    message: str

    def __str__(self) -> str:
        if self.path:
            return "%s: %s: %s" % (self.file, self.path, self.message)
        return "%s: %s" % (self.file, self.message)


class ConfigurationError(Exception):
    """
    The configuration is invalid.  ``problems`` lists every problem found;
    ``file``, ``path`` and ``message`` describe the first.
    """

    def __init__(self, problems: Sequence[Problem]):
        self.problems = tuple(problems)
        super().__init__(*self.problems)

    @property
    def file(self) -> str:
        return self.problems[0].file

    @property
    def path(self) -> str:
        return self.problems[0].path

    @property
    def message(self) -> str:
        return self.problems[0].message

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


class Report:
    """Collects the problems of one file."""

    def __init__(self, filename: str):
        self.filename = filename
        self.problems: List[Problem] = []
        self.comparisons_left = MAX_HINT_COMPARISONS

    def error(self, path: Path, message: str) -> None:
        self.problems.append(Problem(self.filename, format_path(path), message))

    def raw(self, location: str, message: str) -> None:
        self.problems.append(Problem(self.filename, location, message))

    def __len__(self) -> int:
        return len(self.problems)

    def hint(self, word: str, known: Collection[str]) -> Optional[str]:
        """``close_match``, while this file's hints have comparisons left."""
        if len(known) > min(MAX_HINT_CANDIDATES, self.comparisons_left):
            return None
        self.comparisons_left -= len(known)
        return close_match(word, known)


# --- scalar checks ------------------------------------------------------------

def describe(value: Any) -> str:
    """What ``value`` is, for an error message: ``a string ("x")``."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "a boolean (%s)" % ("true" if value else "false",)
    if isinstance(value, int):
        return "a number (%d)" % (value,)
    if isinstance(value, float):
        return "a number (%r)" % (value,)
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return "a string (%s)" % (json.dumps(shown),)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return "a %s" % (type(value).__name__,)


def is_int(value: Any) -> bool:
    """An integer, and not a boolean (YAML's true is Python's 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def valid_integer(r: Report, path: Path, value: Any, low: int, high: int,
                  what: str = "an integer") -> Optional[int]:
    if not is_int(value):
        r.error(path, "expected %s from %d to %d, got %s"
                % (what, low, high, describe(value)))
        return None
    if not low <= value <= high:
        r.error(path, "expected %s from %d to %d, got %d"
                % (what, low, high, value))
        return None
    return value


def valid_port(r: Report, path: Path, value: Any) -> Optional[int]:
    return valid_integer(r, path, value, 1, 65535, "a port number")


def valid_string(r: Report, path: Path, value: Any,
                 what: str = "a string") -> Optional[str]:
    if not isinstance(value, str):
        r.error(path, "expected %s, got %s" % (what, describe(value)))
        return None
    if "\x00" in value:
        r.error(path, "must not contain NUL characters")
        return None
    return value


def check_name(value: Any) -> Optional[str]:
    """Why ``value`` is not a valid name, or None if it is."""
    if not isinstance(value, str):
        return "expected a name (%s), got %s" % (NAME_RULE, describe(value))
    if not NAME_PATTERN.match(value):
        return "invalid name %s: use %s" % (json.dumps(value), NAME_RULE)
    return None


def valid_name(r: Report, path: Path, value: Any) -> Optional[str]:
    problem = check_name(value)
    if problem:
        r.error(path, problem)
        return None
    return value


def parse_size(value: Any) -> Optional[int]:
    """Bytes from an integer or a string like ``512M`` / ``1.5G``; None if
    invalid."""
    if is_int(value):
        return value
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match:
            number, unit, _ = match.groups()
            return int(float(number) * _SIZE_UNITS[unit.lower()]) if "." in number \
                else int(number) * _SIZE_UNITS[unit.lower()]
    return None


def valid_size(r: Report, path: Path, value: Any, minimum: int = 1) -> Optional[int]:
    size = parse_size(value)
    if size is None:
        r.error(path, "expected a size in bytes or with a K, M, G or T suffix "
                      "(like 512M or 10G), got %s" % (describe(value),))
        return None
    if size < minimum:
        if minimum == 1:
            r.error(path, "size must be positive, got %s" % (describe(value),))
        else:
            r.error(path, "size must be at least %d bytes (%d MiB), got %s"
                    % (minimum, minimum >> 20, describe(value)))
        return None
    return size


def parse_duration(value: Any) -> Optional[float]:
    """Seconds from a number or a string like ``30``, ``30s``, ``5m``,
    ``1.5h``; None if it is not a duration (range is the caller's)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            number, unit = match.groups()
            return float(number) * _DURATION_UNITS[unit.lower()]
    return None


def valid_duration(r: Report, path: Path, value: Any,
                   minimum: float = MIN_DURATION,
                   maximum: float = MAX_DURATION) -> Optional[float]:
    seconds = parse_duration(value)
    if seconds is None:
        r.error(path, "expected a duration in seconds, or with an s, m or h "
                      "suffix (like 30s, 5m or 1h), got %s" % (describe(value),))
        return None
    if seconds <= 0:
        r.error(path, "expected a positive duration, got %s" % (describe(value),))
        return None
    if seconds < minimum:
        r.error(path, "duration must be at least %s, got %s"
                % (_seconds(minimum), describe(value)))
        return None
    if seconds > maximum:
        r.error(path, "duration must be at most %s, got %s"
                % (_seconds(maximum), describe(value)))
        return None
    return seconds


def _seconds(seconds: float) -> str:
    """``1 second``, ``604800 seconds (7 days)``."""
    text = "%g second%s" % (seconds, "" if seconds == 1 else "s")
    if seconds >= 86400 and seconds % 86400 == 0:
        text += " (%d days)" % (seconds // 86400,)
    return text


# --- mappings -------------------------------------------------------------------

def valid_mapping(r: Report, path: Path, value: Any, required: Iterable[str],
                  optional: Iterable[str], unsupported: Dict[str, str] = {},
                  what: str = "a mapping") -> Optional[dict]:
    """Check ``value`` is a mapping with known keys; report unknown and
    missing ones.  Returns the mapping (even with problems in its keys) so
    the caller can go on checking the values."""
    if not isinstance(value, dict):
        r.error(path, "expected %s, got %s" % (what, describe(value)))
        return None
    required = list(required)
    known = required + list(optional)
    for key in value:
        if key in known:
            continue
        if key in unsupported:
            r.error(path + (key,), unsupported[key])
            continue
        if not isinstance(key, str):
            r.error(path + (key,), "unexpected key %s (expected one of: %s)"
                    % (describe(key), ", ".join(known)))
            continue
        hint = r.hint(key, known)
        r.error(path + (key,), "unknown key%s; expected one of: %s"
                % ((" (did you mean %r?)" % (hint,)) if hint else "",
                   ", ".join(known)))
    for key in required:
        if key not in value:
            r.error(path, "missing required key %r" % (key,))
    return value


def close_match(word: str, known: Collection[str]) -> Optional[str]:
    """The one of ``known`` that ``word`` was probably meant to be, if any;
    None without comparing among more than ``MAX_HINT_CANDIDATES``."""
    if len(known) > MAX_HINT_CANDIDATES:
        return None
    hint = difflib.get_close_matches(word, known, n=1)
    return hint[0] if hint else None


# --- files ------------------------------------------------------------------------

def read_document(r: Report, data: Optional[bytes]) -> Any:
    """The YAML document in ``data``, with its problems reported; None when
    there is no data or it cannot be read at all."""
    if data is None:
        return None
    try:
        document, problems = load_yaml(data)
    except YAMLProblem as e:
        r.raw(e.location, e.message)
        return None
    for location, message in problems:
        r.raw(location, message)
    return document


def read_file(path: str) -> Tuple[Optional[bytes], Optional[Problem]]:
    """(the bytes of a configuration file, None) or (None, why not)."""
    try:
        with open(path, "rb") as f:
            # Read a little past the limit so load_yaml can say it is too big.
            return f.read(MAX_DOCUMENT_BYTES + 1), None
    except IsADirectoryError:
        return None, Problem(path, "", "is a directory, expected a YAML file")
    except OSError as e:
        return None, Problem(path, "", "cannot read: %s" % (e.strerror or e,))
