"""
The contract between the SSH command server and the commands plugged into it.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface

__all__ = ["ICommand", "ICommandSession", "OPERATOR", "PEER", "ROLES"]

OPERATOR = "operator"
PEER = "peer"
ROLES = frozenset({OPERATOR, PEER})


class ICommand(Interface):
    """
    One command of the fixed command set, e.g. ``version`` or ``receive``.
    """

    roles = Attribute(
        "A collection of role names (``OPERATOR``, ``PEER``) allowed to run "
        "this command; anyone else is refused before ``run`` is called.")

    large_input = Attribute(
        "Optional, default False: True for a command that streams a large "
        "stdin (``receive``, ``apply``).  Its session's receive window is "
        "widened from the server's small initial window to the full one "
        "once it reads stdin; any other command's stdin is held to the "
        "small window.")

    def run(role, args, session):
        """
        Start the command.

        @param role: the role of the authenticated key.
        @param args: the arguments after the command name, a list of str.
        @param session: the L{ICommandSession} carrying stdin, stdout, stderr.

        @return: the exit status, or a Deferred firing with it.  Raising (or
            failing with) L{CommandError} puts its message on stderr and exits
            with its status; any other failure is logged and exits 1.  If the
            client goes away first, the Deferred is cancelled: a command that
            started a process should kill it in its canceller.
        """


class ICommandSession(Interface):
    """
    A running command's view of its SSH channel.

    It is an C{IConsumer} for stdout: register an C{IPushProducer} (a process
    transport, a file reader) and it is paused while the client's window is
    closed and resumed when it reopens.
    """

    role = Attribute("The role of the authenticated key.")
    args = Attribute("The arguments after the command name (list of str).")
    key_fingerprint = Attribute("SHA256 fingerprint of the client's key.")
    peer = Attribute("The client's address (an IAddress).")

    def write(data):
        """Write bytes to stdout (buffered beyond the client's window)."""

    def writeSequence(data):
        """Write a list of byte strings to stdout."""

    def registerProducer(producer, streaming):
        """Pace ``producer`` by the client's window (IConsumer)."""

    def unregisterProducer():
        """Forget the registered producer."""

    def write_stderr(data):
        """Write bytes to stderr."""

    def stream_stdin(consumer):
        """
        Deliver stdin to ``consumer`` (an C{IConsumer}: C{write},
        C{registerProducer}, C{unregisterProducer}).  The session registers
        itself as a streaming producer; the client's window reopens only as
        fast as ``consumer`` takes bytes.  Returns a Deferred that fires with
        the number of bytes delivered at end of input, or fails if the
        channel closes first.  Call at most once.
        """

    def read_stdin(max_bytes):
        """
        Collect all of stdin; fails with L{StdinTooLarge} beyond ``max_bytes``.
        """

    def exit(status):
        """
        Finish: flush stdout/stderr, send the exit status, close the channel.
        Only the first call counts.
        """
