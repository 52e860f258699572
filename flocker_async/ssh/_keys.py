"""
SSH keys on disk and in known_hosts files.

A node keeps two ed25519 keys in its state directory: the host key its SSH
server presents, and the node key it authenticates with when it pushes a
volume to a peer.  Private key files are 0600 in a 0700 directory and are
written so that a crash never leaves a half-written key behind.
"""

from __future__ import annotations

import os
import stat
from typing import List, Union

from attrs import frozen
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.conch.client.knownhosts import KnownHostsFile
from twisted.conch.ssh import keys
from twisted.logger import Logger
from twisted.python.filepath import FilePath

from .._fs import write_atomically

__all__ = [
    "HOST_KEY_FILE",
    "NODE_KEY_FILE",
    "NodeKeys",
    "KeyFileError",
    "generate_key",
    "load_or_create_key",
    "load_or_create_node_keys",
    "ensure_private_directory",
    "fingerprint",
    "public_key_line",
    "parse_public_keys",
    "known_hosts_name",
    "known_hosts_line",
    "add_known_host",
    "HostKeyStatus",
    "check_known_host",
]

HOST_KEY_FILE = "ssh_host_ed25519_key"
NODE_KEY_FILE = "id_ed25519"

_log = Logger()

PathLike = Union[str, bytes, os.PathLike, FilePath]


def _path(path: PathLike) -> str:
    if isinstance(path, FilePath):
        return path.path
    return os.fsdecode(path)


class KeyFileError(Exception):
    """A key file exists but cannot be used; the message says which and why."""


def generate_key() -> keys.Key:
    """A new ed25519 private key."""
    return keys.Key(Ed25519PrivateKey.generate())


def fingerprint(key: keys.Key) -> str:
    """The key's fingerprint as OpenSSH prints it: ``SHA256:<base64>``."""
    digest = key.fingerprint(keys.FingerprintFormats.SHA256_BASE64)
    return "SHA256:" + digest.rstrip("=")


def public_key_line(key: keys.Key, comment: str = "") -> str:
    """The public half as one authorized_keys / .pub line."""
    line = key.public().toString("openssh").decode("ascii")
    if comment:
        line += " " + comment
    return line


def parse_public_keys(text: Union[str, bytes], source: str = "<keys>") -> List[keys.Key]:
    """
    Parse authorized_keys-style text: one ``TYPE BASE64 [comment]`` per line,
    blank lines and ``#`` comments ignored.  Options before the key type are
    not supported and are reported, with the line number, like any other
    malformed line.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    result = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        try:
            key = keys.Key.fromString(" ".join(fields[:2]).encode("ascii"))
        except (keys.BadKeyError, ValueError, UnicodeError, IndexError) as e:
            raise KeyFileError(
                "%s line %d: not a public key (%s): %s" % (source, number, e, line[:60]))
        if not key.isPublic():
            raise KeyFileError("%s line %d: a private key where a public key belongs"
                               % (source, number))
        result.append(key)
    return result


def ensure_private_directory(path: PathLike) -> FilePath:
    """Create ``path`` (and parents) if needed and make it 0700."""
    directory = _path(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    mode = stat.S_IMODE(os.stat(directory).st_mode)
    if mode != 0o700:
        os.chmod(directory, 0o700)
    return FilePath(directory)


def load_or_create_key(path: PathLike, comment: str = "") -> keys.Key:
    """
    Load the ed25519 private key at ``path``, creating it (0600, with a
    ``.pub`` beside it) if it does not exist.  A key file readable by others
    is tightened to 0600; a file that is not an ed25519 private key is an
    error naming the file.
    """
    path = _path(path)
    ensure_private_directory(os.path.dirname(os.path.abspath(path)))
    if not os.path.exists(path):
        key = generate_key()
        write_atomically(path, key.toString("openssh"), 0o600)
        write_atomically(path + ".pub",
                          (public_key_line(key, comment) + "\n").encode("ascii"), 0o644)
        _log.info("created SSH key {path} {fingerprint}", path=path,
                  fingerprint=fingerprint(key))
        return key
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        _log.warn("tightening permissions of {path} from {mode:o} to 600",
                  path=path, mode=mode)
        os.chmod(path, 0o600)
    try:
        with open(path, "rb") as f:
            key = keys.Key.fromString(f.read())
    except (keys.BadKeyError, keys.EncryptedKeyError, ValueError) as e:
        raise KeyFileError("%s: not a usable SSH private key: %s" % (path, e))
    if key.isPublic() or key.type() != "Ed25519":
        raise KeyFileError("%s: expected an ed25519 private key, found %s %s"
                           % (path, key.type(), "public key" if key.isPublic()
                              else "private key"))
    return key


@frozen
class NodeKeys:
    """The two keys of a node: the SSH server's host key and its own identity."""
    host_key: keys.Key
    node_key: keys.Key


def load_or_create_node_keys(state_directory: PathLike, name: str = "flocker-node") -> NodeKeys:
    """Load (or create on first start) both keys in ``state_directory``."""
    directory = ensure_private_directory(state_directory)
    return NodeKeys(
        host_key=load_or_create_key(directory.child(HOST_KEY_FILE), name + " host key"),
        node_key=load_or_create_key(directory.child(NODE_KEY_FILE), name),
    )


def known_hosts_name(host: str, port: int) -> str:
    """The host field OpenSSH writes for ``host``/``port`` in known_hosts."""
    if port == 22:
        return host
    return "[%s]:%d" % (host, port)


def known_hosts_line(host: str, port: int, key: keys.Key) -> str:
    """The line that makes both OpenSSH and our client trust ``key`` for the host."""
    return "%s %s" % (known_hosts_name(host, port), public_key_line(key))


def add_known_host(path: PathLike, host: str, port: int, key: keys.Key) -> None:
    """
    Append a trust line for ``key`` unless the file already has one in the
    form OpenSSH looks up (``[host]:port`` for ports other than 22).
    """
    path = _path(path)
    if check_known_host(path, host, port, key, exact=True).trusted:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    line = known_hosts_line(host, port, key) + "\n"
    existing = b""
    if os.path.exists(path):
        with open(path, "rb") as f:
            existing = f.read()
    if existing and not existing.endswith(b"\n"):
        existing += b"\n"
    write_atomically(path, existing + line.encode("ascii"), 0o644)


@frozen
class HostKeyStatus:
    """
    What a known_hosts file says about a key a host offered: ``trusted``, or
    else the lines (1-based) that name the host with a different key.
    """
    trusted: bool
    conflicting_lines: tuple = ()


def check_known_host(path: PathLike, host: str, port: int, key: keys.Key,
                     exact: bool = False) -> HostKeyStatus:
    """
    Look ``key`` up for ``host``/``port`` in the known_hosts file at ``path``
    (a missing file trusts nothing).  Both ``[host]:port`` (OpenSSH's form
    for a port other than 22) and a plain ``host`` entry trust a key they
    list; hashed entries work too.  ``exact`` honours only the first form.
    A plain entry is the key of the host's port 22 (its sshd), so on
    another port a plain entry with a different key is no conflict: the
    key is merely unknown there.
    """
    key = key.public()
    own_name = known_hosts_name(host, port).encode("utf-8")
    plain_name = host.encode("utf-8")
    known = KnownHostsFile.fromPath(FilePath(_path(path)))
    conflicts = []
    for number, entry in enumerate(known.iterentries(), 1):
        key_type = getattr(entry, "keyType", None)
        if key_type != key.sshType():
            continue
        if entry.matchesHost(own_name):
            if entry.matchesKey(key):
                return HostKeyStatus(trusted=True)
            conflicts.append(number)
        elif not exact and entry.matchesHost(plain_name) and entry.matchesKey(key):
            return HostKeyStatus(trusted=True)
    return HostKeyStatus(trusted=False, conflicting_lines=tuple(conflicts))

