"""
The node's own SSH keys in its state directory: the host key its SSH
server presents and the node key it pushes volumes to peers with.

Created on first start (directory 0700, private keys 0600), loaded on later
starts.  Unlike OpenSSH's client we do not tighten or ignore a key whose
file others could read or replace: the daemon refuses to start and says
what to fix, because such a key may already be known to someone else.
Creating and parsing keys is ``flocker_async.ssh._keys``'s job.
"""

from __future__ import annotations

import os
import stat
from typing import Union

from twisted.conch.ssh import keys

from ..ssh._keys import (
    HOST_KEY_FILE,
    NODE_KEY_FILE,
    KeyFileError,
    NodeKeys,
    load_or_create_key,
)

__all__ = ["check_private_directory", "check_private_file", "load_node_keys",
           "KeyFileError", "NodeKeys", "HOST_KEY_FILE", "NODE_KEY_FILE"]

PathLike = Union[str, os.PathLike]


def _owner_problem(path: str, st: os.stat_result) -> str:
    return ("%s is owned by uid %d but the daemon runs as uid %d; "
            "run: chown %d %s" % (path, st.st_uid, os.geteuid(), os.geteuid(), path))


def check_private_directory(path: PathLike) -> str:
    """
    Create ``path`` as a 0700 directory if it does not exist; refuse (with
    ``KeyFileError``) one that is not a directory, belongs to another user,
    or that group or others can enter.  An existing directory is never
    chmod-ed: a state_directory pointed at a shared directory by mistake
    must not have its permissions changed under the other users.
    """
    path = os.path.abspath(os.fspath(path))
    if not os.path.exists(path):
        os.makedirs(path, mode=0o700)
        os.chmod(path, 0o700)  # whatever the umask was
        return path
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise KeyFileError("%s: the state directory is not a directory" % (path,))
    if st.st_uid != os.geteuid():
        raise KeyFileError(_owner_problem(path, st))
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise KeyFileError(
            "%s: the state directory holds the node's private keys but has mode "
            "%03o (group or others have access); if it belongs to flocker-node "
            "alone, run: chmod 700 %s" % (path, mode, path))
    return path


def check_private_file(path: PathLike) -> None:
    """
    Refuse (``KeyFileError``) a private key file that is not a regular file,
    belongs to another user, or that group or others may read or write.
    """
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise KeyFileError("%s: a symbolic link to a file that does not exist"
                           % (path,))
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError("%s: expected a private key file, found something "
                           "else (a directory or device)" % (path,))
    if st.st_uid != os.geteuid():
        raise KeyFileError(_owner_problem(path, st))
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise KeyFileError(
            "%s: private key has unsafe permissions %03o (group or others have "
            "access), so it may be known to someone else; if you are sure it is "
            "not, run: chmod 600 %s; otherwise remove it (a new key is created "
            "on the next start)" % (path, mode, path))


def _load_or_create(path: str, comment: str) -> keys.Key:
    if os.path.lexists(path):
        check_private_file(path)
    try:
        return load_or_create_key(path, comment)
    except KeyFileError as e:
        raise KeyFileError(
            "%s; move the file aside and a new key is created on the next start "
            "(clients and peers that trusted the old key must then be told the "
            "new one)" % (e,))


def load_node_keys(state_directory: PathLike, name: str = "flocker-node") -> NodeKeys:
    """
    The node's host key and node key from ``state_directory``, each created
    (ed25519) if it does not exist yet.  ``KeyFileError`` names the file and
    what to do when the directory or a key is unsafe or unreadable.
    """
    directory = check_private_directory(state_directory)
    return NodeKeys(
        host_key=_load_or_create(os.path.join(directory, HOST_KEY_FILE),
                                 name + " host key"),
        node_key=_load_or_create(os.path.join(directory, NODE_KEY_FILE), name),
    )
