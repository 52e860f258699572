"""
A small sd_notify(3): tell systemd (``Type=notify``) that the daemon is
ready, what it is doing, and that it is stopping.

The protocol is one datagram of ``KEY=VALUE`` lines to the AF_UNIX socket
named by ``$NOTIFY_SOCKET`` (a path, or an abstract socket when it starts
with ``@``).  Without ``$NOTIFY_SOCKET`` (not run by systemd) nothing is
sent.  A failure to notify is logged, never raised: the daemon's work does
not depend on it, and systemd's start timeout reports a missing READY=1.
"""

from __future__ import annotations

import os
import socket
from typing import Mapping, Optional, Union

from twisted.logger import Logger

__all__ = ["SystemdNotifier", "notify_socket_address"]

_log = Logger()


def notify_socket_address(value: Optional[str]) -> Optional[Union[str, bytes]]:
    """
    The address to send to for a ``$NOTIFY_SOCKET`` value: the path itself,
    or, for ``@name``, the abstract address ``\\0name``.  None when unset or
    not a form we support (systemd also knows ``vsock:``, unused here).
    """
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + os.fsencode(value[1:])
    if value.startswith("/"):
        return value
    return None


def _field(value: str) -> str:
    # One assignment per line: a newline in a value would start a new one.
    return " ".join(str(value).splitlines())


class SystemdNotifier:
    """
    Sends notifications to the socket ``$NOTIFY_SOCKET`` names in
    ``environ`` (``os.environ`` by default, read at each send).
    """

    def __init__(self, environ: Optional[Mapping[str, str]] = None):
        self._environ = os.environ if environ is None else environ

    @property
    def enabled(self) -> bool:
        """Whether there is a socket to notify."""
        return notify_socket_address(self._environ.get("NOTIFY_SOCKET")) is not None

    def notify(self, **fields: Union[str, int]) -> bool:
        """
        Send ``KEY=VALUE`` assignments in one datagram (``READY=1``,
        ``STATUS=...``); True if systemd's socket took it, False if there is
        no socket or the send failed.
        """
        raw = self._environ.get("NOTIFY_SOCKET")
        address = notify_socket_address(raw)
        if address is None:
            if raw:
                _log.warn("ignoring NOTIFY_SOCKET={socket}: not a path or "
                          "@abstract name", socket=raw)
            return False
        message = "".join("%s=%s\n" % (key, _field(str(value)))
                          for key, value in fields.items()).encode("utf-8")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            # Never block the reactor on a busy systemd.
            sock.setblocking(False)
            sock.sendto(message, address)
        except OSError as e:
            _log.error("could not notify systemd at {socket} ({fields}): {error}",
                       socket=raw, fields=" ".join(sorted(fields)), error=e)
            return False
        finally:
            sock.close()
        return True

    def ready(self, status: Optional[str] = None) -> bool:
        """The service is up (systemd starts units ordered after it)."""
        if status is None:
            return self.notify(READY=1)
        return self.notify(READY=1, STATUS=status)

    def status(self, text: str) -> bool:
        """A one-line status shown by ``systemctl status``."""
        return self.notify(STATUS=text)

    def stopping(self, status: Optional[str] = None) -> bool:
        """The service is shutting down."""
        if status is None:
            return self.notify(STOPPING=1)
        return self.notify(STOPPING=1, STATUS=status)
