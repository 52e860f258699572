"""
Configuration files -> model.

Two files describe a cluster, in the formats of Flocker 0.3/0.4:

* the application file, ``version: 1`` with ``applications: {NAME: {...}}``,
  or the fig/compose form (services at the top level, or under
  ``services:``);
* the deployment file, ``version: 1`` with ``nodes: {ADDRESS: [NAME...]}``.

Every problem found in either file is collected and reported together as
one ``ConfigurationError``, each naming the file, the key path
(``applications.db.ports[0].external``) and what was expected.  Nothing is
handed to a node until both files are valid.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import yaml
from attrs import frozen

from ._yaml import MAX_DOCUMENT_BYTES, YAMLProblem, format_path, load_yaml
from .model import (
    Application,
    AttachedVolume,
    Deployment,
    DockerImage,
    Link,
    Node,
    Port,
    RestartPolicy,
)

__all__ = [
    "Problem",
    "ConfigurationError",
    "NAME_PATTERN",
    "check_name",
    "parse_size",
    "load_configuration",
    "configuration_from_documents",
    "configuration_from_objects",
    "applications_to_document",
    "deployment_to_document",
    "application_names",
]

Path = Tuple[Union[str, int], ...]

# One character set for every name that reaches docker, ZFS or iptables:
# it cannot start with "-" (an option), has no spaces, quotes, slashes,
# dots, "@" or ":" (ZFS snapshot and dataset separators).
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}\Z")
NAME_RULE = ("1-63 characters: letters, digits, '-' and '_', "
             "starting with a letter or digit")

_HOSTNAME_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*\Z")
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGTkmgt]?)(i?[Bb])?\s*\Z")
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}

# Docker's image reference grammar (without digests).
_IMAGE_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE_DOMAIN = (r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)"
                 r"(?:\.(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?))*(?::[0-9]+)?")
_IMAGE = re.compile(
    r"(?:%s/)?%s(?:/%s)*(?::[\w][\w.-]{0,127})?\Z"
    % (_IMAGE_DOMAIN, _IMAGE_COMPONENT, _IMAGE_COMPONENT))

MIN_MEM_LIMIT = 6 * 1024 * 1024  # Docker refuses less.
MAX_CPU_SHARES = 262144


# --- errors -----------------------------------------------------------------

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


class _Report:
    """Collects the problems of one file."""

    def __init__(self, filename: str):
        self.filename = filename
        self.problems: List[Problem] = []

    def error(self, path: Path, message: str) -> None:
        self.problems.append(Problem(self.filename, format_path(path), message))

    def raw(self, location: str, message: str) -> None:
        self.problems.append(Problem(self.filename, location, message))

    def __len__(self) -> int:
        return len(self.problems)


# --- scalar checks ------------------------------------------------------------

def _describe(value: Any) -> str:
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


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _integer(r: _Report, path: Path, value: Any, low: int, high: int,
             what: str = "an integer") -> Optional[int]:
    if not _is_int(value):
        r.error(path, "expected %s from %d to %d, got %s"
                % (what, low, high, _describe(value)))
        return None
    if not low <= value <= high:
        r.error(path, "expected %s from %d to %d, got %d"
                % (what, low, high, value))
        return None
    return value


def _port(r: _Report, path: Path, value: Any) -> Optional[int]:
    return _integer(r, path, value, 1, 65535, "a port number")


def _string(r: _Report, path: Path, value: Any, what: str = "a string") -> Optional[str]:
    if not isinstance(value, str):
        r.error(path, "expected %s, got %s" % (what, _describe(value)))
        return None
    if "\x00" in value:
        r.error(path, "must not contain NUL characters")
        return None
    return value


def check_name(value: Any) -> Optional[str]:
    """Why ``value`` is not a valid name, or None if it is."""
    if not isinstance(value, str):
        return "expected a name (%s), got %s" % (NAME_RULE, _describe(value))
    if not NAME_PATTERN.match(value):
        return "invalid name %s: use %s" % (json.dumps(value), NAME_RULE)
    return None


def _name(r: _Report, path: Path, value: Any) -> Optional[str]:
    problem = check_name(value)
    if problem:
        r.error(path, problem)
        return None
    return value


def parse_size(value: Any) -> Optional[int]:
    """Bytes from an integer or a string like ``512M`` / ``1.5G``; None if
    invalid."""
    if _is_int(value):
        return value
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match:
            number, unit, _ = match.groups()
            return int(float(number) * _SIZE_UNITS[unit.lower()]) if "." in number \
                else int(number) * _SIZE_UNITS[unit.lower()]
    return None


def _size(r: _Report, path: Path, value: Any, minimum: int = 1) -> Optional[int]:
    size = parse_size(value)
    if size is None:
        r.error(path, "expected a size in bytes or with a K, M, G or T suffix "
                      "(like 512M or 10G), got %s" % (_describe(value),))
        return None
    if size < minimum:
        if minimum == 1:
            r.error(path, "size must be positive, got %s" % (_describe(value),))
        else:
            r.error(path, "size must be at least %d bytes (%d MiB), got %s"
                    % (minimum, minimum >> 20, _describe(value)))
        return None
    return size


def _mapping(r: _Report, path: Path, value: Any, required: Iterable[str],
             optional: Iterable[str], unsupported: Dict[str, str] = {},
             what: str = "a mapping") -> Optional[dict]:
    """Check ``value`` is a mapping with known keys; report unknown and
    missing ones.  Returns the mapping (even with problems in its keys) so
    the caller can go on checking the values."""
    if not isinstance(value, dict):
        r.error(path, "expected %s, got %s" % (what, _describe(value)))
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
                    % (_describe(key), ", ".join(known)))
            continue
        hint = difflib.get_close_matches(key, known, n=1)
        r.error(path + (key,), "unknown key%s; expected one of: %s"
                % ((" (did you mean %r?)" % (hint[0],)) if hint else "",
                   ", ".join(known)))
    for key in required:
        if key not in value:
            r.error(path, "missing required key %r" % (key,))
    return value


def _version(r: _Report, doc: dict) -> None:
    if "version" not in doc:
        r.error((), "missing required key 'version' (this format is version 1: "
                    "add 'version: 1')")
    elif doc["version"] != 1 or isinstance(doc["version"], bool):
        r.error(("version",), "unsupported version %s; this tool reads version 1"
                % (_describe(doc["version"]),))


# --- application files ---------------------------------------------------------

@frozen
class _Parsed:
    """What the application file says, with where each port came from."""

    applications: Dict[str, Application]
    invalid: frozenset          # names defined but with errors
    port_paths: Dict[Tuple[str, int], Path]


def _image(r: _Report, path: Path, value: Any) -> Optional[DockerImage]:
    text = _string(r, path, value, "an image name like repo[:tag]")
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


def _environment_pairs(r: _Report, path: Path, value: Any,
                       allow_list: bool) -> Optional[Dict[str, str]]:
    result: Dict[str, str] = {}
    ok = True
    if allow_list and isinstance(value, list):
        for i, item in enumerate(value):
            if not isinstance(item, str) or "=" not in item:
                r.error(path + (i,), "expected KEY=VALUE, got %s" % (_describe(item),))
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
                % (" or a list of KEY=VALUE" if allow_list else "", _describe(value)))
        return None
    for key, val in value.items():
        if not isinstance(key, str) or not _ENV_NAME.match(key):
            r.error(path + (key,), "invalid environment variable name %s"
                    % (_describe(key),))
            ok = False
            continue
        if not isinstance(val, str):
            r.error(path + (key,), "expected a string, got %s; quote the value "
                    "(YAML reads yes/no/true/false, numbers and empty values as "
                    "other types)" % (_describe(val),))
            ok = False
            continue
        if "\x00" in val:
            r.error(path + (key,), "must not contain NUL characters")
            ok = False
            continue
        result[key] = val
    return result if ok else None


def _ports_v1(r: _Report, path: Path, value: Any, app: str,
              port_paths: dict) -> Optional[List[Port]]:
    if not isinstance(value, list):
        r.error(path, "expected a list of {internal, external}, got %s"
                % (_describe(value),))
        return None
    ports, internals, externals = [], {}, {}
    ok = True
    for i, item in enumerate(value):
        p = path + (i,)
        if _mapping(r, p, item, ("internal", "external"), ()) is None:
            ok = False
            continue
        before = len(r)
        internal = _port(r, p + ("internal",), item.get("internal")) \
            if "internal" in item else None
        external = _port(r, p + ("external",), item.get("external")) \
            if "external" in item else None
        if len(r) > before or internal is None or external is None:
            ok = False
            continue
        if internal in internals:
            r.error(p + ("internal",), "internal port %d is already published by %s"
                    % (internal, format_path(internals[internal])))
            ok = False
        if external in externals:
            r.error(p + ("external",), "external port %d is already used by %s"
                    % (external, format_path(externals[external])))
            ok = False
        internals.setdefault(internal, p + ("internal",))
        externals.setdefault(external, p + ("external",))
        port_paths.setdefault((app, external), p + ("external",))
        ports.append(Port(internal_port=internal, external_port=external))
    return ports if ok else None


def _links_v1(r: _Report, path: Path, value: Any) -> Optional[List[Link]]:
    if not isinstance(value, list):
        r.error(path, "expected a list of {local_port, remote_port, alias}, got %s"
                % (_describe(value),))
        return None
    links, ok = [], True
    for i, item in enumerate(value):
        p = path + (i,)
        if _mapping(r, p, item, ("local_port", "remote_port", "alias"), ()) is None:
            ok = False
            continue
        before = len(r)
        local = _port(r, p + ("local_port",), item["local_port"]) \
            if "local_port" in item else None
        remote = _port(r, p + ("remote_port",), item["remote_port"]) \
            if "remote_port" in item else None
        alias = _name(r, p + ("alias",), item["alias"]) if "alias" in item else None
        if len(r) > before or None in (local, remote, alias):
            ok = False
            continue
        links.append(Link(local_port=local, remote_port=remote, alias=alias))
    if ok and not _check_links(r, path, links):
        return None
    return links if ok else None


def _check_links(r: _Report, path: Path, links: List[Link]) -> bool:
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


def link_env_prefix(alias: str) -> str:
    """The environment variable prefix Docker-style links use for ``alias``."""
    return alias.upper().replace("-", "_")


def _volume_v1(r: _Report, path: Path, value: Any) -> Optional[AttachedVolume]:
    if _mapping(r, path, value, ("mountpoint",), ("maximum_size",)) is None:
        return None
    before = len(r)
    mountpoint = _mountpoint(r, path + ("mountpoint",), value["mountpoint"]) \
        if "mountpoint" in value else None
    maximum_size = None
    if value.get("maximum_size") is not None:
        maximum_size = _size(r, path + ("maximum_size",), value["maximum_size"])
    if len(r) > before or mountpoint is None:
        return None
    return AttachedVolume(mountpoint=mountpoint, maximum_size=maximum_size)


def _mountpoint(r: _Report, path: Path, value: Any) -> Optional[str]:
    text = _string(r, path, value, "an absolute path")
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
    if any(c in text for c in ":,\n\t"):
        r.error(path, "path must not contain ':', ',' or control characters")
        return None
    return normal


def _restart_v1(r: _Report, path: Path, value: Any) -> Optional[RestartPolicy]:
    if _mapping(r, path, value, ("name",), ("maximum_retry_count",)) is None:
        return None
    name = value.get("name")
    if "name" in value and name not in ("never", "always", "on-failure"):
        r.error(path + ("name",), "expected one of never, always, on-failure; got %s"
                % (_describe(name),))
        return None
    if "name" not in value:
        return None
    count = None
    if "maximum_retry_count" in value:
        if name != "on-failure":
            r.error(path + ("maximum_retry_count",),
                    "maximum_retry_count is only allowed with name: on-failure "
                    "(name is %s)" % (name,))
            return None
        count = _integer(r, path + ("maximum_retry_count",),
                         value["maximum_retry_count"], 1, 2 ** 31 - 1)
        if count is None:
            return None
    return RestartPolicy(name=name, maximum_retry_count=count)


def _mem_limit(r: _Report, path: Path, value: Any) -> Optional[int]:
    return _size(r, path, value, minimum=MIN_MEM_LIMIT)


def _cpu_shares(r: _Report, path: Path, value: Any) -> Optional[int]:
    return _integer(r, path, value, 1, MAX_CPU_SHARES, "a positive integer")


_V1_APP_KEYS = ("image", "environment", "ports", "links", "volume", "mem_limit",
                "cpu_shares", "restart_policy")


def _application_v1(r: _Report, path: Path, name: str, doc: Any,
                    port_paths: dict) -> Optional[Application]:
    before = len(r)
    if _mapping(r, path, doc, ("image",), _V1_APP_KEYS[1:]) is None:
        return None
    fields: Dict[str, Any] = {"name": name}
    if "image" in doc:
        fields["image"] = _image(r, path + ("image",), doc["image"])
    if "environment" in doc and doc["environment"] is not None:
        fields["environment"] = _environment_pairs(
            r, path + ("environment",), doc["environment"], allow_list=False)
    if "ports" in doc and doc["ports"] is not None:
        fields["ports"] = _ports_v1(r, path + ("ports",), doc["ports"], name, port_paths)
    if "links" in doc and doc["links"] is not None:
        fields["links"] = _links_v1(r, path + ("links",), doc["links"])
    if "volume" in doc and doc["volume"] is not None:
        fields["volume"] = _volume_v1(r, path + ("volume",), doc["volume"])
    if "mem_limit" in doc and doc["mem_limit"] is not None:
        fields["mem_limit"] = _mem_limit(r, path + ("mem_limit",), doc["mem_limit"])
    if "cpu_shares" in doc and doc["cpu_shares"] is not None:
        fields["cpu_shares"] = _cpu_shares(r, path + ("cpu_shares",), doc["cpu_shares"])
    if "restart_policy" in doc and doc["restart_policy"] is not None:
        fields["restart_policy"] = _restart_v1(
            r, path + ("restart_policy",), doc["restart_policy"])
    if len(r) > before:
        return None
    return Application(**fields)


# fig/compose: keys we understand, and ones we recognise but cannot honour.
_FIG_KEYS = ("image", "environment", "ports", "links", "volumes", "mem_limit",
             "cpu_shares", "restart")
_FIG_UNSUPPORTED = dict(
    (key, "%r cannot be honoured by flocker_async: %s" % (key, why))
    for key, why in [
        ("build", "images must be built beforehand and named with 'image'"),
        ("command", "the image's own command is used"),
        ("entrypoint", "the image's own entrypoint is used"),
        ("volumes_from", "each application has its own volume"),
        ("net", "networking is managed by flocker's proxies"),
        ("network_mode", "networking is managed by flocker's proxies"),
        ("networks", "networking is managed by flocker's proxies"),
        ("expose", "publish ports with 'ports'"),
        ("external_links", "link to applications of this file with 'links'"),
        ("env_file", "put the variables in 'environment'"),
        ("extends", "write the service out in full"),
        ("depends_on", "applications start independently"),
        ("privileged", "privileged containers are not supported"),
        ("cap_add", "extra capabilities are not supported"),
        ("devices", "device access is not supported"),
        ("dns", "DNS settings are not supported"),
        ("hostname", "host names are not supported"),
        ("working_dir", "the image's own working directory is used"),
        ("user", "the image's own user is used"),
        ("container_name", "containers are named after the application"),
        ("deploy", "placement comes from the deployment file"),
    ])
_COMPOSE_TOP_UNSUPPORTED = dict(
    (key, "top-level %r cannot be honoured by flocker_async: %s" % (key, why))
    for key, why in [
        ("volumes", "each service declares its own single volume"),
        ("networks", "networking is managed by flocker's proxies"),
        ("secrets", "secrets are not supported"),
        ("configs", "configs are not supported"),
    ])


def _fig_ports(r: _Report, path: Path, value: Any, app: str,
               port_paths: dict) -> Optional[List[Port]]:
    if not isinstance(value, list):
        r.error(path, 'expected a list of "EXTERNAL:INTERNAL", got %s'
                % (_describe(value),))
        return None
    ports, ok, internals, externals = [], True, {}, {}
    for i, item in enumerate(value):
        p = path + (i,)
        text = item if isinstance(item, str) else None
        parts = text.split(":") if text else []
        if len(parts) != 2 or not all(x.isdigit() for x in parts):
            r.error(p, 'expected "EXTERNAL:INTERNAL" (like "8080:80"), got %s%s'
                    % (_describe(item),
                       "; quote it, YAML reads 22:22 as a number"
                       if _is_int(item) else ""))
            ok = False
            continue
        external, internal = int(parts[0]), int(parts[1])
        if not (1 <= external <= 65535 and 1 <= internal <= 65535):
            r.error(p, "expected port numbers from 1 to 65535, got %s"
                    % (json.dumps(text),))
            ok = False
            continue
        if internal in internals or external in externals:
            r.error(p, "port %s repeats %s" % (json.dumps(text), format_path(
                internals.get(internal) or externals.get(external))))
            ok = False
            continue
        internals[internal] = externals[external] = p
        port_paths.setdefault((app, external), p)
        ports.append(Port(internal_port=internal, external_port=external))
    return ports if ok else None


def _fig_volumes(r: _Report, path: Path, value: Any) -> Optional[AttachedVolume]:
    if not isinstance(value, list) or len(value) != 1:
        r.error(path, "expected a list with exactly one container path (one volume "
                      "per application), got %s"
                % (_describe(value) if not isinstance(value, list)
                   else "%d entries" % (len(value),)))
        return None
    item = value[0]
    if isinstance(item, str) and ":" in item:
        r.error(path + (0,), "host paths cannot be honoured: give only the path "
                             "inside the container (the volume lives on the node)")
        return None
    mountpoint = _mountpoint(r, path + (0,), item)
    return None if mountpoint is None else AttachedVolume(mountpoint=mountpoint)


def _fig_restart(r: _Report, path: Path, value: Any) -> Optional[RestartPolicy]:
    if value is False:
        # YAML 1.1 reads an unquoted `no` as false.
        return RestartPolicy("never")
    text = value if isinstance(value, str) else None
    if text in ("no", "never"):
        return RestartPolicy("never")
    if text == "always":
        return RestartPolicy("always")
    if text == "on-failure":
        return RestartPolicy("on-failure")
    if text and text.startswith("on-failure:"):
        count = text.partition(":")[2]
        if count.isdigit() and int(count) >= 1:
            return RestartPolicy("on-failure", int(count))
    r.error(path, 'expected "no", "always", "on-failure" or "on-failure:N", got %s'
            % (_describe(value),))
    return None


def _application_fig(r: _Report, path: Path, name: str, doc: Any,
                     port_paths: dict) -> Tuple[Optional[dict], list]:
    """First pass: everything but links (they need the other services)."""
    before = len(r)
    if _mapping(r, path, doc, ("image",), _FIG_KEYS[1:], _FIG_UNSUPPORTED,
                what="a service mapping") is None:
        return None, []
    fields: Dict[str, Any] = {"name": name}
    if "image" in doc:
        fields["image"] = _image(r, path + ("image",), doc["image"])
    if doc.get("environment") is not None:
        fields["environment"] = _environment_pairs(
            r, path + ("environment",), doc["environment"], allow_list=True)
    if doc.get("ports") is not None:
        fields["ports"] = _fig_ports(r, path + ("ports",), doc["ports"], name, port_paths)
    if doc.get("volumes") is not None:
        fields["volume"] = _fig_volumes(r, path + ("volumes",), doc["volumes"])
    if doc.get("mem_limit") is not None:
        fields["mem_limit"] = _mem_limit(r, path + ("mem_limit",), doc["mem_limit"])
    if doc.get("cpu_shares") is not None:
        fields["cpu_shares"] = _cpu_shares(r, path + ("cpu_shares",), doc["cpu_shares"])
    if "restart" in doc:
        fields["restart_policy"] = _fig_restart(r, path + ("restart",), doc["restart"])
    links = []
    if doc.get("links") is not None:
        if not isinstance(doc["links"], list):
            r.error(path + ("links",), 'expected a list of "service[:alias]", got %s'
                    % (_describe(doc["links"]),))
        else:
            for i, item in enumerate(doc["links"]):
                p = path + ("links", i)
                text = _string(r, p, item, 'a link "service[:alias]"')
                if text is None:
                    continue
                target, _, alias = text.partition(":")
                alias = alias or target
                if _name(r, p, target) is None or _name(r, p, alias) is None:
                    continue
                links.append((p, target, alias))
    if len(r) > before:
        return None, []
    return fields, links


def _parse_fig(r: _Report, services: dict, base: Path, port_paths: dict
               ) -> Tuple[Dict[str, Application], set]:
    firsts: Dict[str, dict] = {}
    pending: Dict[str, list] = {}
    invalid = set()
    for name, doc in services.items():
        path = base + (name,)
        if _name(r, path, name) is None:
            continue
        fields, links = _application_fig(r, path, name, doc, port_paths)
        if fields is None:
            invalid.add(name)
            continue
        firsts[name] = fields
        pending[name] = links
    applications = {}
    for name, fields in firsts.items():
        links, ok = [], True
        for p, target, alias in pending[name]:
            if target not in services:
                r.error(p, "links to %s, which is not a service in this file"
                        % (json.dumps(target),))
                ok = False
                continue
            if target in invalid:
                continue
            target_ports = firsts.get(target, {}).get("ports") or []
            if not target_ports:
                r.error(p, "links to %s, which publishes no ports" % (target,))
                ok = False
                continue
            for port in sorted(target_ports):
                links.append(Link(local_port=port.internal_port,
                                  remote_port=port.external_port, alias=alias))
        if ok and links and not _check_links(r, base + (name, "links"), links):
            ok = False
        if not ok:
            invalid.add(name)
            continue
        applications[name] = Application(links=links, **fields)
    return applications, invalid


def _parse_applications(r: _Report, doc: Any) -> Optional[_Parsed]:
    if not isinstance(doc, dict):
        r.error((), "expected a mapping at the top level (version: 1 with "
                    "applications, or compose services), got %s" % (_describe(doc),))
        return None
    port_paths: dict = {}
    if "applications" in doc or doc.get("version") == 1:
        _mapping(r, (), doc, ("version", "applications"), ())
        _version(r, doc)
        apps_doc = doc.get("applications")
        if apps_doc is None and "applications" in doc:
            apps_doc = {}
        if not isinstance(apps_doc, dict):
            if "applications" in doc:
                r.error(("applications",), "expected a mapping of application names "
                        "to applications, got %s" % (_describe(apps_doc),))
            return None
        applications, invalid = {}, set()
        for name, app_doc in apps_doc.items():
            path = ("applications", name)
            if _name(r, path, name) is None:
                continue
            app = _application_v1(r, path, name, app_doc, port_paths)
            if app is None:
                invalid.add(name)
            else:
                applications[name] = app
        return _Parsed(applications, frozenset(invalid), port_paths)
    if "services" in doc:
        _mapping(r, (), doc, ("services",), ("version",), _COMPOSE_TOP_UNSUPPORTED)
        if "version" in doc and not (
                isinstance(doc["version"], str) and re.match(r"[23](\.\d+)?\Z", doc["version"])):
            r.error(("version",), 'expected a compose file version "2" or "3", got %s'
                    % (_describe(doc["version"]),))
        services = doc["services"]
        if not isinstance(services, dict):
            r.error(("services",), "expected a mapping of service names to services, "
                                   "got %s" % (_describe(services),))
            return None
        applications, invalid = _parse_fig(r, services, ("services",), port_paths)
        return _Parsed(applications, frozenset(invalid), port_paths)
    if "version" in doc:
        r.error(("version",), "expected version: 1 with an 'applications' mapping")
        return None
    applications, invalid = _parse_fig(r, doc, (), port_paths)
    return _Parsed(applications, frozenset(invalid), port_paths)


# --- deployment files -------------------------------------------------------------

def normalise_node_address(value: Any) -> Tuple[Optional[str], Optional[str]]:
    """(normal form, None) for an IP address or host name; (None, why)
    otherwise."""
    if not isinstance(value, str):
        return None, ("expected a node's IP address or host name, got %s"
                      % (_describe(value),))
    try:
        return str(ipaddress.ip_address(value)), None
    except ValueError:
        pass
    labels = value.rstrip(".").split(".")
    if (len(value) <= 253 and value and all(_HOSTNAME_LABEL.match(l) for l in labels)
            and not labels[-1].isdigit()):
        return value.rstrip(".").lower(), None
    return None, ("expected a node's IP address or host name, got %s"
                  % (json.dumps(value),))


def _parse_deployment(r: _Report, doc: Any) -> Optional[List[Tuple[str, Path, List[Tuple[str, Path]]]]]:
    if not isinstance(doc, dict):
        r.error((), "expected a mapping with 'version: 1' and 'nodes', got %s"
                % (_describe(doc),))
        return None
    _mapping(r, (), doc, ("version", "nodes"), ())
    _version(r, doc)
    if "nodes" not in doc:
        return None
    nodes_doc = doc["nodes"]
    if not isinstance(nodes_doc, dict):
        r.error(("nodes",), "expected a mapping of node addresses to lists of "
                            "application names, got %s" % (_describe(nodes_doc),))
        return None
    result = []
    seen: Dict[str, Path] = {}
    for key, names in nodes_doc.items():
        path = ("nodes", key)
        address, why = normalise_node_address(key)
        if address is None:
            r.error(path, why)
            continue
        if address in seen:
            r.error(path, "node %s is listed twice (also as %s)"
                    % (address, format_path(seen[address])))
            continue
        seen[address] = path
        if not isinstance(names, list):
            r.error(path, "expected a list of application names (use [] for none), "
                          "got %s" % (_describe(names),))
            continue
        entries = []
        for i, name in enumerate(names):
            if _name(r, path + (i,), name) is not None:
                entries.append((name, path + (i,)))
        result.append((address, path, entries))
    return result


# --- both files ------------------------------------------------------------------

def _read(r: _Report, data: Optional[bytes]):
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


def configuration_from_documents(
        deployment: Optional[bytes], application: Optional[bytes],
        deployment_file: str = "deployment", application_file: str = "application",
        problems: Sequence[Problem] = (),
) -> Deployment:
    """
    The ``Deployment`` two configuration documents describe, or
    ``ConfigurationError`` listing every problem in both (after any
    ``problems`` already found, such as a file that could not be read, whose
    document is then None).
    """
    dr, ar = _Report(deployment_file), _Report(application_file)
    return _validate(dr, ar, _read(dr, deployment), _read(ar, application),
                     application_file, problems)


def configuration_from_objects(
        deployment: Any, application: Any,
        deployment_file: str = "deployment", application_file: str = "application",
) -> Deployment:
    """
    Like ``configuration_from_documents`` for documents already parsed
    (JSON received by a node): the same rules, the same errors.
    """
    return _validate(_Report(deployment_file), _Report(application_file),
                     deployment, application, application_file, ())


def _validate(dr: _Report, ar: _Report, dep_doc, app_doc, application_file: str,
              problems: Sequence[Problem]) -> Deployment:
    parsed = _parse_applications(ar, app_doc) if app_doc is not None else None
    nodes = _parse_deployment(dr, dep_doc) if dep_doc is not None else None
    deployment_model = None
    if nodes is not None:
        deployment_model = _cross_check(dr, ar, nodes, parsed, application_file)
    problems = list(problems) + dr.problems + ar.problems
    if problems or deployment_model is None:
        raise ConfigurationError(problems or [
            Problem(dr.filename, "", "no deployment could be read")])
    return deployment_model


def _cross_check(dr: _Report, ar: _Report, nodes, parsed: Optional[_Parsed],
                 application_file: str) -> Deployment:
    placed: Dict[str, Path] = {}
    result = []
    for address, path, entries in nodes:
        apps = []
        for name, entry_path in entries:
            if name in placed:
                r_where = format_path(placed[name])
                dr.error(entry_path, "application %s is already placed at %s; an "
                         "application runs on at most one node" % (name, r_where))
                continue
            placed[name] = entry_path
            if parsed is None or name in parsed.invalid:
                continue
            app = parsed.applications.get(name)
            if app is None:
                known = sorted(parsed.applications) + sorted(parsed.invalid)
                hint = difflib.get_close_matches(name, known, n=1)
                dr.error(entry_path, "application %s is not defined in %s%s"
                         % (json.dumps(name), application_file,
                            " (did you mean %s?)" % (json.dumps(hint[0]),) if hint else ""))
                continue
            apps.append(app)
        result.append(Node(hostname=address, applications=apps))
    if parsed is not None:
        users: Dict[int, str] = {}
        for name in sorted(placed, key=lambda n: placed[n]):
            app = parsed.applications.get(name)
            if app is None:
                continue
            for port in sorted(app.ports):
                other = users.get(port.external_port)
                if other is not None:
                    ar.error(parsed.port_paths[(name, port.external_port)],
                             "external port %d is also used by application %s (%s); "
                             "every node forwards an external port to one application"
                             % (port.external_port, other, format_path(
                                 parsed.port_paths[(other, port.external_port)])))
                else:
                    users[port.external_port] = name
    return Deployment(nodes=result)


def _read_file(path: str) -> Tuple[Optional[bytes], Optional[Problem]]:
    try:
        with open(path, "rb") as f:
            # Read a little past the limit so load_yaml can say it is too big.
            return f.read(MAX_DOCUMENT_BYTES + 1), None
    except IsADirectoryError:
        return None, Problem(path, "", "is a directory, expected a YAML file")
    except OSError as e:
        return None, Problem(path, "", "cannot read: %s" % (e.strerror or e,))


def load_configuration(deployment_path: str, application_path: str) -> Deployment:
    """Read and validate both files; ``ConfigurationError`` lists every
    problem."""
    dep, dep_problem = _read_file(deployment_path)
    app, app_problem = _read_file(application_path)
    return configuration_from_documents(
        dep, app, deployment_path, application_path,
        [p for p in (dep_problem, app_problem) if p is not None])


def application_names(deployment: Deployment) -> List[str]:
    return sorted(app.name for _, app in deployment.applications())


# --- model -> documents (what flocker-deploy sends, and round-trip tests) --------

def _application_to_document(app: Application) -> dict:
    doc: Dict[str, Any] = {"image": app.image.full_name}
    if app.environment:
        doc["environment"] = dict(app.environment)
    if app.ports:
        doc["ports"] = [{"internal": p.internal_port, "external": p.external_port}
                        for p in sorted(app.ports)]
    if app.links:
        doc["links"] = [{"local_port": l.local_port, "remote_port": l.remote_port,
                         "alias": l.alias} for l in sorted(app.links)]
    if app.volume is not None:
        volume: Dict[str, Any] = {"mountpoint": app.volume.mountpoint}
        if app.volume.maximum_size is not None:
            volume["maximum_size"] = app.volume.maximum_size
        doc["volume"] = volume
    if app.mem_limit is not None:
        doc["mem_limit"] = app.mem_limit
    if app.cpu_shares is not None:
        doc["cpu_shares"] = app.cpu_shares
    if app.restart_policy.name != "never":
        policy: Dict[str, Any] = {"name": app.restart_policy.name}
        if app.restart_policy.maximum_retry_count is not None:
            policy["maximum_retry_count"] = app.restart_policy.maximum_retry_count
        doc["restart_policy"] = policy
    return doc


def applications_to_document(applications: Iterable[Application]) -> dict:
    """The version-1 application document for ``applications``."""
    return {"version": 1, "applications": {
        app.name: _application_to_document(app)
        for app in sorted(applications, key=lambda a: a.name)}}


def deployment_to_document(deployment: Deployment) -> dict:
    """The version-1 deployment document for ``deployment``."""
    return {"version": 1, "nodes": {
        node.hostname: sorted(app.name for app in node.applications)
        for node in sorted(deployment.nodes, key=lambda n: n.hostname)}}


def dump_yaml(document: dict) -> bytes:
    # Non-ASCII is escaped: raw NEL or LS characters would be read back as line breaks.
    return yaml.safe_dump(document, sort_keys=True, allow_unicode=False).encode("ascii")
