"""
Checks of application values that both application formats (Flocker v1 and
fig/compose) share, and what parsing an application file yields.
"""

from __future__ import annotations

import json
import re
from typing import Any, Dict, List, Optional, Tuple

from attrs import frozen

from ..model import Application, DockerImage, Link, link_env_prefix
from ..validation import (
    Path,
    Report,
    describe,
    valid_integer,
    valid_size,
    valid_string,
)

MIN_MEM_LIMIT = 6 * 1024 * 1024  # Docker refuses less.
MAX_CPU_SHARES = 262144

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*\Z")

# Docker's image reference grammar (without digests); ASCII only, as
# Docker's is (Python's \w would also take other scripts' letters and digits).
_IMAGE_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE_DOMAIN = (r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)"
                 r"(?:\.(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?))*(?::[0-9]+)?")
_IMAGE = re.compile(
    r"(?:%s/)?%s(?:/%s)*(?::[\w][\w.-]{0,127})?\Z"
    % (_IMAGE_DOMAIN, _IMAGE_COMPONENT, _IMAGE_COMPONENT), re.ASCII)

# C0 and C1 control characters and DEL: none belongs in a path.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


@frozen
class ParsedApplications:
    """What the application file says, with where each port came from."""

    applications: Dict[str, Application]
    invalid: frozenset          # names defined but with errors
    port_paths: Dict[Tuple[str, int], Path]


def check_version(r: Report, doc: dict) -> None:
    """Both version-1 files: ``version: 1``."""
    if "version" not in doc:
        r.error((), "missing required key 'version' (this format is version 1: "
                    "add 'version: 1')")
    elif doc["version"] != 1 or isinstance(doc["version"], bool):
        r.error(("version",), "unsupported version %s; this tool reads version 1"
                % (describe(doc["version"]),))


def valid_image(r: Report, path: Path, value: Any) -> Optional[DockerImage]:
    text = valid_string(r, path, value, "an image name like repo[:tag]")
    if text is None:
        return None
    if "@" in text:
        r.error(path, "image digests are not supported; name a tag "
                      "(repo:tag), got %s" % (json.dumps(text),))
        return None
    if not _IMAGE.match(text):
        r.error(path, "invalid image name %s: expected repo[:tag] with a "
                      "lower-case repository" % (json.dumps(text),))
        return None
    return DockerImage.from_string(text)


def valid_environment(r: Report, path: Path, value: Any,
                      allow_list: bool) -> Optional[Dict[str, str]]:
    result: Dict[str, str] = {}
    ok = True
    if allow_list and isinstance(value, list):
        for i, item in enumerate(value):
            if not isinstance(item, str) or "=" not in item:
                r.error(path + (i,), "expected KEY=VALUE, got %s" % (describe(item),))
                ok = False
                continue
            key, _, val = item.partition("=")
            if not _ENV_NAME.match(key):
                r.error(path + (i,), "invalid environment variable name %s"
                        % (json.dumps(key),))
                ok = False
            elif key in result:
                r.error(path + (i,), "environment variable %s is set twice" % (key,))
                ok = False
            elif "\x00" in val:
                r.error(path + (i,), "must not contain NUL characters")
                ok = False
            else:
                result[key] = val
        return result if ok else None
    if not isinstance(value, dict):
        r.error(path, "expected a mapping of variable names to strings%s, got %s"
                % (" or a list of KEY=VALUE" if allow_list else "", describe(value)))
        return None
    for key, val in value.items():
        if not isinstance(key, str) or not _ENV_NAME.match(key):
            r.error(path + (key,), "invalid environment variable name %s"
                    % (describe(key),))
            ok = False
            continue
        if not isinstance(val, str):
            r.error(path + (key,), "expected a string, got %s; quote the value "
                    "(YAML reads yes/no/true/false, numbers and empty values as "
                    "other types)" % (describe(val),))
            ok = False
            continue
        if "\x00" in val:
            r.error(path + (key,), "must not contain NUL characters")
            ok = False
            continue
        result[key] = val
    return result if ok else None


def check_links(r: Report, path: Path, links: List[Link]) -> bool:
    """Two links must not give the container the same variables."""
    seen: Dict[Tuple[str, int], int] = {}
    ok = True
    for i, link in enumerate(links):
        key = (link_env_prefix(link.alias), link.local_port)
        if key in seen:
            r.error(path + (i,), "link %s local port %d gives the same environment "
                    "variables as link %d" % (link.alias, link.local_port, seen[key]))
            ok = False
        seen.setdefault(key, i)
    return ok


def valid_mountpoint(r: Report, path: Path, value: Any) -> Optional[str]:
    text = valid_string(r, path, value, "an absolute path")
    if text is None:
        return None
    parts = text.split("/")
    if not text.startswith("/"):
        r.error(path, "expected an absolute path, got %s" % (json.dumps(text),))
        return None
    if ".." in parts or "." in parts:
        r.error(path, "path must not contain '.' or '..', got %s" % (json.dumps(text),))
        return None
    normal = "/" + "/".join(p for p in parts if p)
    if normal == "/":
        r.error(path, "the volume cannot be mounted on / (the container's root)")
        return None
    if ":" in text or "," in text or _CONTROL.search(text):
        r.error(path, "path must not contain ':', ',' or control characters")
        return None
    return normal


def valid_mem_limit(r: Report, path: Path, value: Any) -> Optional[int]:
    return valid_size(r, path, value, minimum=MIN_MEM_LIMIT)


def valid_cpu_shares(r: Report, path: Path, value: Any) -> Optional[int]:
    return valid_integer(r, path, value, 1, MAX_CPU_SHARES, "a positive integer")
