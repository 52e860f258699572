"""
node.yml: the configuration of one flocker-node daemon.

Reported like the application files: every problem in the file at once,
each as ``FILE: KEY.PATH: message``, raised as one ``ConfigurationError``.
Only ``address`` is required; everything else has a default.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import pwd
import re
import stat
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from attrs import Factory, field, frozen
from twisted.conch.ssh import keys

from .._yaml import MAX_DOCUMENT_BYTES
from ..validation import (
    ConfigurationError,
    Problem,
    Report,
    describe,
    read_document,
    read_file,
    valid_mapping,
    valid_port,
    valid_string,
)

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_SSH_PORT",
    "DEFAULT_STATE_DIRECTORY",
    "DEFAULT_ZFS_POOL",
    "DEFAULT_MOUNT_ROOT",
    "DEFAULT_DOCKER_SOCKET",
    "DEFAULT_CONVERGENCE_INTERVAL",
    "DEFAULT_LISTEN_ADDRESS",
    "DEFAULT_LOGIN_TIMEOUT",
    "MAX_LOGIN_TIMEOUT",
    "OPERATOR_KEYS_FILE",
    "ZFSConfiguration",
    "NodeConfiguration",
    "check_pool_name",
    "node_configuration_from_document",
    "load_node_configuration",
    "operator_keys_from_text",
    "load_operator_keys",
]

DEFAULT_CONFIG_PATH = "/etc/flocker/node.yml"
DEFAULT_SSH_PORT = 4522
DEFAULT_STATE_DIRECTORY = "/var/lib/flocker-async"
DEFAULT_ZFS_POOL = "flocker"
DEFAULT_MOUNT_ROOT = "/flocker"
DEFAULT_DOCKER_SOCKET = "/var/run/docker.sock"
DEFAULT_CONVERGENCE_INTERVAL = 10.0
DEFAULT_LISTEN_ADDRESS = "0.0.0.0"
# Seconds an SSH client has from connecting to authenticating (the SSH
# server's ServerLimits.login_timeout).
DEFAULT_LOGIN_TIMEOUT = 30.0
MAX_LOGIN_TIMEOUT = 3600
OPERATOR_KEYS_FILE = "operator_keys"

# Room under ZFS's 255-character limit for "/<volume>@<snapshot>".
MAX_POOL_NAME = 100
_POOL_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.:-]*\Z")
# zpool refuses these at create time: vdev keywords, and Solaris disk names.
_RESERVED_POOL_PREFIXES = ("mirror", "raidz", "draid", "spare")
_RESERVED_POOL_NAMES = ("log",)
_DISK_LIKE = re.compile(r"c[0-9]")
# The same rule ZFSStoragePool applies to its mount root.
_MOUNT_COMPONENT = re.compile(r"[A-Za-z0-9_.+-]+\Z")

_TOP_KEYS = ("address", "ssh_port", "state_directory", "zfs", "docker_socket",
             "operator_keys", "convergence_interval", "listen_address",
             "login_timeout")
_ZFS_KEYS = ("pool", "mount_root")


@frozen
class ZFSConfiguration:
    """Where this node keeps volumes: one pool, datasets mounted under a root."""

    pool: str = DEFAULT_ZFS_POOL
    mount_root: str = DEFAULT_MOUNT_ROOT


@frozen
class NodeConfiguration:
    """Everything node.yml says, with the defaults filled in."""

    address: str
    ssh_port: int = DEFAULT_SSH_PORT
    state_directory: str = DEFAULT_STATE_DIRECTORY
    zfs: ZFSConfiguration = Factory(ZFSConfiguration)
    docker_socket: str = DEFAULT_DOCKER_SOCKET
    operator_keys: str = field(default=Factory(
        lambda self: os.path.join(self.state_directory, OPERATOR_KEYS_FILE),
        takes_self=True))
    convergence_interval: float = DEFAULT_CONVERGENCE_INTERVAL
    listen_address: str = DEFAULT_LISTEN_ADDRESS
    login_timeout: float = DEFAULT_LOGIN_TIMEOUT


# --- checks ---------------------------------------------------------------------

def check_pool_name(value: Any) -> Optional[str]:
    """Why ``value`` is not a ZFS pool name we accept, or None if it is."""
    if not isinstance(value, str):
        return "expected a ZFS pool name, got %s" % (describe(value),)
    if not value:
        return "expected a ZFS pool name, got an empty string"
    if len(value) > MAX_POOL_NAME:
        return ("ZFS pool name is %d characters long; at most %d are allowed "
                "(volume and snapshot names are added to it)"
                % (len(value), MAX_POOL_NAME))
    if not _POOL_NAME.match(value):
        return ("invalid ZFS pool name %s: use letters, digits, '_', '-', '.' "
                "and ':', starting with a letter" % (json.dumps(value),))
    if value in _RESERVED_POOL_NAMES or value.startswith(_RESERVED_POOL_PREFIXES):
        return ("ZFS pool name %s is reserved (zpool refuses names that are "
                "'log' or start with %s)"
                % (json.dumps(value), ", ".join(_RESERVED_POOL_PREFIXES)))
    if _DISK_LIKE.match(value):
        return ("ZFS pool name %s looks like a disk name (c followed by a digit), "
                "which zpool refuses" % (json.dumps(value),))
    return None


def _absolute_path(r: Report, path, value: Any) -> Optional[str]:
    text = valid_string(r, path, value, "an absolute path")
    if text is None:
        return None
    if not text.startswith("/"):
        r.error(path, "expected an absolute path (starting with /), got %s"
                % (json.dumps(text),))
        return None
    if any(part in (".", "..") for part in text.split("/")):
        r.error(path, "path must not contain '.' or '..' components, got %s"
                % (json.dumps(text),))
        return None
    if any(ord(c) < 32 for c in text):
        r.error(path, "path must not contain control characters")
        return None
    return "/" + "/".join(part for part in text.split("/") if part)


def _directory(r: Report, path, value: Any) -> Optional[str]:
    directory = _absolute_path(r, path, value)
    if directory == "/":
        r.error(path, "must be a directory of its own, not /")
        return None
    return directory


def _mount_root(r: Report, path, value: Any) -> Optional[str]:
    root = _directory(r, path, value)
    if root is None:
        return None
    if not all(_MOUNT_COMPONENT.match(part) for part in root.split("/")[1:]):
        r.error(path, "mount root %s may only contain letters, digits, '_', "
                      "'.', '+', '-' and '/'" % (json.dumps(root),))
        return None
    return root


def _ip_address(r: Report, path, value: Any, what: str,
                allow_unspecified: bool, ipv4_only: bool = False) -> Optional[str]:
    if not isinstance(value, str):
        r.error(path, "expected %s, got %s" % (what, describe(value)))
        return None
    try:
        address = ipaddress.ip_address(value.strip())
    except ValueError:
        r.error(path, "expected %s, got %s" % (what, json.dumps(value)))
        return None
    if address.is_unspecified and not allow_unspecified:
        r.error(path, "%s is not an address other machines can reach; use the "
                      "address of this node's network interface" % (address,))
        return None
    if address.is_multicast:
        r.error(path, "%s is a multicast address; expected %s" % (address, what))
        return None
    if ipv4_only and address.version != 4:
        # Proxies are iptables (IPv4) rules.
        r.error(path, "%s is an IPv6 address; flocker_async routes IPv4 only, "
                      "expected %s" % (address, what))
        return None
    return str(address)


def _interval(r: Report, path, value: Any) -> Optional[float]:
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value)):
        r.error(path, "expected a number of seconds, got %s" % (describe(value),))
        return None
    if value <= 0:
        r.error(path, "expected a positive number of seconds, got %s"
                % (describe(value),))
        return None
    return float(value)


def _login_timeout(r: Report, path, value: Any) -> Optional[float]:
    seconds = _interval(r, path, value)
    if seconds is not None and seconds > MAX_LOGIN_TIMEOUT:
        r.error(path, "expected at most %d seconds (an hour), got %s; a client "
                      "authenticates in well under a second"
                % (MAX_LOGIN_TIMEOUT, describe(value)))
        return None
    return seconds


# --- the file ---------------------------------------------------------------------

def _parse(r: Report, doc: Any) -> Optional[NodeConfiguration]:
    if not isinstance(doc, dict):
        r.error((), "expected a mapping with at least 'address', got %s"
                % (describe(doc),))
        return None
    valid_mapping(r, (), doc, ("address",), _TOP_KEYS[1:])
    before = len(r)
    values: Dict[str, Any] = {}
    for key, value in doc.items():  # in file order, so problems are too
        path = (key,)
        if key == "address":
            values[key] = _ip_address(
                r, path, value,
                "the IP address other nodes and clients reach this node at",
                allow_unspecified=False, ipv4_only=True)
        elif key == "ssh_port":
            values[key] = valid_port(r, path, value)
        elif key == "state_directory":
            values[key] = _directory(r, path, value)
        elif key in ("docker_socket", "operator_keys"):
            values[key] = _absolute_path(r, path, value)
        elif key == "convergence_interval":
            values[key] = _interval(r, path, value)
        elif key == "login_timeout":
            values[key] = _login_timeout(r, path, value)
        elif key == "listen_address":
            values[key] = _ip_address(
                r, path, value,
                "an IP address to listen on (0.0.0.0 for every interface)",
                allow_unspecified=True)
        elif key == "zfs":
            values[key] = _zfs(r, path, value)
    if len(r) > before or "address" not in doc:
        return None
    return NodeConfiguration(**values)


def _zfs(r: Report, path, value: Any) -> Optional[ZFSConfiguration]:
    if valid_mapping(r, path, value, (), _ZFS_KEYS,
                     what="a mapping with 'pool' and 'mount_root'") is None:
        return None
    before = len(r)
    values: Dict[str, Any] = {}
    for key, item in value.items():
        if key == "pool":
            problem = check_pool_name(item)
            if problem:
                r.error(path + (key,), problem)
            values[key] = item
        elif key == "mount_root":
            values[key] = _mount_root(r, path + (key,), item)
    if len(r) > before:
        return None
    return ZFSConfiguration(**values)


def node_configuration_from_document(
        data: Optional[bytes], filename: str = "node.yml",
        problems: Sequence[Problem] = ()) -> NodeConfiguration:
    """
    The ``NodeConfiguration`` a node.yml document describes, or
    ``ConfigurationError`` listing every problem (after ``problems`` already
    found, such as a file that could not be read, whose ``data`` is then None).
    """
    r = Report(filename)
    doc = read_document(r, data)
    configuration = _parse(r, doc) if doc is not None else None
    found = list(problems) + r.problems
    if found or configuration is None:
        raise ConfigurationError(found or [
            Problem(filename, "", "no configuration could be read")])
    return configuration


def load_node_configuration(path: str = DEFAULT_CONFIG_PATH) -> NodeConfiguration:
    """Read and validate node.yml; ``ConfigurationError`` lists every problem."""
    data, problem = read_file(path)
    if problem is not None and data is None and not os.path.exists(path):
        problem = Problem(path, "", "%s; create it (config/node.yml in the "
                          "source is a commented example) or pass --config"
                          % (problem.message,))
    return node_configuration_from_document(
        data, path, [problem] if problem is not None else [])


# --- operator keys ------------------------------------------------------------------

_KEY_TYPE = re.compile(r"(ssh-|ecdsa-sha2-|sk-)[A-Za-z0-9@.-]+\Z")


def _line_problem(source: str, number: int, message: str) -> Problem:
    return Problem(source, "line %d" % (number,), message)


def operator_keys_from_text(text: Union[str, bytes],
                            source: str = "operator_keys") -> Tuple[keys.Key, ...]:
    """
    The distinct public keys, in file order (conch keys are not hashable, so
    not a set), in authorized_keys-style ``text``: one ``TYPE BASE64
    [comment]`` per line, blank lines and ``#`` comments ignored.  Every bad
    line is reported, by number, in one ``ConfigurationError``; options
    before the key type (``command=...``, ``no-pty``) are refused because
    the daemon grants roles by key and would silently ignore them.
    """
    problems: List[Problem] = []
    if isinstance(text, bytes):
        data = text
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConfigurationError([_line_problem(
                source, data[:e.start].count(b"\n") + 1,
                "not valid UTF-8 (byte 0x%02x)" % (data[e.start],))])
    result: List[keys.Key] = []
    seen = set()
    in_private_key = False
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if in_private_key:
            in_private_key = not stripped.startswith("-----END")
            continue
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("-----BEGIN"):
            problems.append(_line_problem(
                source, number, "this is a private key; put only public keys "
                "here (the contents of the .pub file)"))
            in_private_key = "PRIVATE KEY" in stripped
            continue
        fields = stripped.split()
        if not _KEY_TYPE.match(fields[0]):
            at = next((i for i, f in enumerate(fields) if _KEY_TYPE.match(f)), None)
            if at is not None:
                problems.append(_line_problem(
                    source, number, "options before the key type are not "
                    "supported (%s); remove them: operators are authorised by "
                    "key alone" % (" ".join(fields[:at])[:60],)))
            else:
                problems.append(_line_problem(
                    source, number, "not a public key line: expected "
                    "'TYPE BASE64 [comment]' like 'ssh-ed25519 AAAA... "
                    "user@host', got %s" % (json.dumps(stripped[:40]),)))
            continue
        if len(fields) < 2:
            problems.append(_line_problem(
                source, number, "%s key has no key data after the type"
                % (fields[0],)))
            continue
        try:
            key = keys.Key.fromString(
                (fields[0] + " " + fields[1]).encode("ascii"), type="public_openssh")
            key_type = key.sshType().decode("ascii")
        except Exception as e:  # any malformed key data, reported by line
            problems.append(_line_problem(
                source, number, "cannot parse the %s key: %s"
                % (fields[0], str(e) or type(e).__name__)))
            continue
        if key_type != fields[0]:
            problems.append(_line_problem(
                source, number, "the key data is a %s key but the line says %s"
                % (key_type, fields[0])))
            continue
        if key.blob() not in seen:
            seen.add(key.blob())
            result.append(key)
    if problems:
        raise ConfigurationError(problems)
    return tuple(result)


def _untrusted_keys_file(path: str, info: os.stat_result) -> Optional[str]:
    """
    Why a keys file with ``info`` cannot be trusted, or None: as OpenSSH's
    StrictModes, it must be owned by root or by us, and not be writable by
    its group or by others (who could add their own key).
    """
    if info.st_uid not in (0, os.geteuid()):
        try:
            owner = " (%s)" % (pwd.getpwuid(info.st_uid).pw_name,)
        except KeyError:
            owner = ""
        me = pwd.getpwuid(os.geteuid()).pw_name if os.geteuid() else "root"
        return ("owned by uid %d%s, not by root or by the daemon's user: whoever "
                "owns it decides who may deploy; if its contents are right, run "
                "'chown %s %s'" % (info.st_uid, owner, me, path))
    mode = stat.S_IMODE(info.st_mode)
    writers = [who for who, bit in (("its group", stat.S_IWGRP),
                                    ("other users", stat.S_IWOTH)) if mode & bit]
    if writers:
        return ("writable by %s (mode %04o), who could add their own key; refused "
                "until you run 'chmod go-w %s' (and check its contents)"
                % (" and ".join(writers), mode, path))
    return None


def load_operator_keys(path: str) -> Tuple[keys.Key, ...]:
    """
    The operators' public keys from the authorized_keys-style file at
    ``path``; ``ConfigurationError`` naming the file (and line) otherwise.
    A file owned by another user, or writable by its group or others, is
    refused as OpenSSH refuses such an authorized_keys file.
    """
    try:
        with open(path, "rb") as f:
            # The file we read, not whatever is at the path a moment later.
            untrusted = _untrusted_keys_file(path, os.fstat(f.fileno()))
            if untrusted is not None:
                raise ConfigurationError([Problem(
                    path, "", "operator keys file is " + untrusted)])
            data = f.read(MAX_DOCUMENT_BYTES + 1)
    except FileNotFoundError:
        raise ConfigurationError([Problem(
            path, "", "operator keys file does not exist; put the operators' "
            "public keys there, one per line as in ~/.ssh/authorized_keys "
            "(or set operator_keys in node.yml)")])
    except IsADirectoryError:
        raise ConfigurationError([Problem(
            path, "", "is a directory, expected an authorized_keys-style file")])
    except OSError as e:
        raise ConfigurationError([Problem(
            path, "", "cannot read: %s" % (e.strerror or e,))])
    if len(data) > MAX_DOCUMENT_BYTES:
        raise ConfigurationError([Problem(
            path, "", "file is larger than %d bytes (1 MiB), too large for a "
            "list of keys" % (MAX_DOCUMENT_BYTES,))])
    return operator_keys_from_text(data, path)
