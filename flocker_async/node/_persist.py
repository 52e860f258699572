"""
The desired state a node last received, kept so a restarted daemon
converges to it again (written crash-safely, see ``flocker_async._fs``).
"""

from __future__ import annotations

import os
from typing import Optional

from twisted.logger import Logger

from .._fs import (
    PathLike,
    read_if_exists,
    remove_stale_temporaries,
    write_atomically,
)

__all__ = ["write_atomically", "read_if_exists", "remove_stale_temporaries",
           "DesiredStateStore", "DESIRED_STATE_FILE"]

_log = Logger()

DESIRED_STATE_FILE = "desired-state"


class DesiredStateStore:
    """
    The desired state this node last received through ``apply``, kept in
    ``directory`` so a restarted daemon converges to it again.  The bytes are
    stored as given; their format belongs to the caller.
    """

    def __init__(self, directory: PathLike, filename: str = DESIRED_STATE_FILE):
        self.directory = os.fspath(directory)
        self.path = os.path.join(self.directory, filename)

    def __repr__(self) -> str:
        return "<DesiredStateStore %s>" % (self.path,)

    def save(self, data: bytes) -> None:
        """Persist ``data``; when this returns, it survives a crash."""
        if not isinstance(data, bytes):
            raise TypeError("desired state must be bytes, got %s"
                            % (type(data).__name__,))
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        stale = remove_stale_temporaries(self.path)
        if stale:
            _log.info("removed {count} temporary file(s) left by an interrupted "
                      "save of {path}", count=stale, path=self.path)
        write_atomically(self.path, data, 0o600)
        _log.info("saved desired state {path} ({size} bytes)",
                  path=self.path, size=len(data))

    def load(self) -> Optional[bytes]:
        """The last saved desired state, or None if nothing was ever saved."""
        return read_if_exists(self.path)
