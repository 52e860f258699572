"""
Flow control for SSH channels, shared by the server and the client.

conch's ``SSHConnection`` reopens a channel's receive window as soon as a
packet arrives, before anyone has consumed the bytes, so a slow consumer
(``zfs recv``) lets memory grow without bound.  Here a channel that sets
``manual_window`` takes charge of its window: bytes are handed to a
consumer as a push stream and the window is reopened only for bytes the
consumer has taken.  On the sending side the channel is a consumer whose
producer is paused while the peer's window is closed.
"""

from __future__ import annotations

import struct
from collections import deque
from typing import Deque

from twisted.conch.ssh.connection import SSHConnection
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = [
    "DEFAULT_WINDOW_SIZE",
    "DEFAULT_MAX_PACKET",
    "FlowControlledConnection",
    "InboundStream",
    "OutboundStream",
    "BytesCollector",
    "OutputTooLarge",
]

# Measured with bench/ssh_stream.py over loopback: conch's defaults (128 KiB
# window) stall on window round trips (~27 MB/s); a 2 MiB window (OpenSSH's
# own) reaches OpenSSH's rate between two processes.  A volume push between
# two daemons, with zfs-fuse competing for the same cores, stalled at 2 MiB
# (75-105 MB/s in bench/transfer.py) and ran at ~230 MB/s with 8 MiB; 16 MiB
# was no faster and doubled the sender's memory growth.  Packets above 32 KiB
# were slower, as conch reassembles each incoming packet by concatenating its
# receive buffer.  The window is also the memory bound per stream in each
# direction.
DEFAULT_WINDOW_SIZE = 8 * 1024 * 1024
DEFAULT_MAX_PACKET = 32 * 1024

_log = Logger(namespace="flocker_async.ssh")


class FlowControlledConnection(SSHConnection):
    """
    An ``SSHConnection`` that leaves the receive window of channels with a
    true ``manual_window`` attribute to the channel itself.
    """

    def ssh_CHANNEL_DATA(self, packet):
        local_channel, length = struct.unpack(">2L", packet[:8])
        channel = self.channels.get(local_channel)
        if not getattr(channel, "manual_window", False):
            return SSHConnection.ssh_CHANNEL_DATA(self, packet)
        if self._over_limit(channel, length):
            return
        channel.localWindowLeft -= length
        channel.dataReceived(packet[8:8 + length])

    def ssh_CHANNEL_EXTENDED_DATA(self, packet):
        local_channel, data_type, length = struct.unpack(">3L", packet[:12])
        channel = self.channels.get(local_channel)
        if not getattr(channel, "manual_window", False):
            return SSHConnection.ssh_CHANNEL_EXTENDED_DATA(self, packet)
        if self._over_limit(channel, length):
            return
        channel.localWindowLeft -= length
        channel.extReceived(data_type, packet[12:12 + length])

    def _over_limit(self, channel, length):
        if length > channel.localWindowLeft or length > channel.localMaxPacket:
            _log.error("peer sent {length} bytes with only {window} of window "
                       "(max packet {packet}); closing the channel",
                       length=length, window=channel.localWindowLeft,
                       packet=channel.localMaxPacket)
            self.sendClose(channel)
            return True
        return False


class OutputTooLarge(Exception):
    """More bytes arrived than the collector was allowed to keep."""

    def __init__(self, limit):
        self.limit = limit
        super().__init__("more than %d bytes of output" % (limit,))


@implementer(IPushProducer)
class InboundStream:
    """
    Bytes arriving on a channel, delivered to one consumer as a push stream.

    The channel's receive window is reopened only for bytes the consumer has
    taken, so at most the window size (``max_buffered`` shows it) waits
    here while the consumer is paused or not yet attached.
    """

    def __init__(self, channel):
        self._channel = channel
        self._pending: Deque[bytes] = deque()
        self.buffered = 0
        self.max_buffered = 0
        self.delivered = 0
        self._consumer = None
        self._done = None
        self._paused = False
        self._stopped = False
        self._delivering = False
        self._end = None  # None while open; a Failure (or True for EOF) after
        self._finished = False
        self._unreleased = 0

    @property
    def attached(self):
        return self._consumer is not None

    @property
    def paused(self):
        """True while the consumer holds us back (so silence is our doing)."""
        return self._paused and not self._finished

    def attach(self, consumer) -> Deferred:
        """
        Deliver to ``consumer``; the result fires with the byte count at end
        of input or fails if the channel closes first.
        """
        if self._consumer is not None:
            raise RuntimeError("the stream already has a consumer")
        self._consumer = consumer
        self._done = Deferred()
        consumer.registerProducer(self, True)
        self._deliver()
        return self._done

    # From the channel.

    def data_received(self, data):
        if self._stopped or self._finished:
            self.release(len(data))
            return
        self._pending.append(data)
        self.buffered += len(data)
        if self.buffered > self.max_buffered:
            self.max_buffered = self.buffered
        self._deliver()

    def eof_received(self):
        if self._end is None:
            self._end = True
        self._deliver()

    def connection_lost(self, reason=None):
        if self._end is None:
            self._end = reason or Failure(ConnectionLost("the SSH channel closed"))
        self._deliver()

    def release(self, size):
        """``size`` bytes were taken: reopen the window in big enough steps."""
        self._unreleased += size
        channel = self._channel
        if self._unreleased >= channel.localWindowSize // 4 and channel.conn is not None:
            size, self._unreleased = self._unreleased, 0
            channel.conn.adjustWindow(channel, size)

    # IPushProducer, called by the consumer.

    def pauseProducing(self):
        self._paused = True

    def resumeProducing(self):
        self._paused = False
        self._deliver()

    def stopProducing(self):
        # The consumer has gone; keep the peer flowing so it can see the
        # command's exit rather than stall on a closed window.
        self._stopped = True
        dropped = self.buffered
        self._pending.clear()
        self.buffered = 0
        self.release(dropped)
        self._finish(Failure(ConnectionDone("the consumer stopped reading")))

    def _deliver(self):
        if self._delivering or self._finished:
            return
        self._delivering = True
        try:
            while self._pending and not self._paused and self._consumer is not None:
                chunk = self._pending.popleft()
                self.buffered -= len(chunk)
                self._consumer.write(chunk)
                self.delivered += len(chunk)
                self.release(len(chunk))
                if self._finished:
                    return
        finally:
            self._delivering = False
        if not self._pending and self._end is not None and self._consumer is not None:
            self._finish(None if self._end is True else self._end)

    def _finish(self, failure):
        if self._finished:
            return
        self._finished = True
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            consumer.unregisterProducer()
        done, self._done = self._done, None
        if done is not None:
            if failure is None:
                done.callback(self.delivered)
            else:
                done.errback(failure)


@implementer(IConsumer)
class OutboundStream:
    """
    The sending half of a channel as an ``IConsumer``: a registered
    streaming producer is paused while the peer's window is closed and
    resumed once the channel's buffer has been flushed into a reopened
    window.  Call ``window_closed`` from the channel's ``stopWriting`` and
    ``window_opened`` after its ``addWindowBytes``.
    """

    def __init__(self, channel):
        self._channel = channel
        self._producer = None
        self._paused = False
        self.pauses = 0
        self.max_buffered = 0
        self.written = 0

    @property
    def buffered(self):
        channel = self._channel
        return len(channel.buf) + sum(len(data) for _, data in channel.extBuf)

    def write(self, data):
        self.written += len(data)
        self._channel.write(data)
        self._after_write()

    def write_extended(self, data_type, data):
        self._channel.writeExtended(data_type, data)
        self._after_write()

    def writeSequence(self, data):
        self.write(b"".join(data))

    def _after_write(self):
        buffered = self.buffered
        if buffered > self.max_buffered:
            self.max_buffered = buffered
        if buffered:
            self.window_closed()

    def registerProducer(self, producer, streaming):
        if self._producer is not None:
            raise RuntimeError("a producer is already registered")
        if not streaming:
            raise TypeError("only streaming (push) producers can be paced by "
                            "the SSH window")
        self._producer = producer
        self._paused = False
        if self.buffered:
            self.window_closed()

    def unregisterProducer(self):
        self._producer = None
        self._paused = False

    def stop_producer(self):
        """The channel has closed: nobody will read what the producer makes."""
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.stopProducing()

    def window_closed(self):
        if self._producer is not None and not self._paused:
            self._paused = True
            self.pauses += 1
            self._producer.pauseProducing()

    def window_opened(self):
        if self.buffered:
            return
        if self._producer is not None and self._paused:
            self._paused = False
            self._producer.resumeProducing()


@implementer(IConsumer)
class BytesCollector:
    """A consumer that keeps everything it is given, up to ``limit`` bytes."""

    def __init__(self, limit):
        self.limit = limit
        self._chunks = []
        self.size = 0
        self.producer = None
        self.overflowed = False

    def registerProducer(self, producer, streaming):
        self.producer = producer

    def unregisterProducer(self):
        self.producer = None

    def write(self, data):
        if self.overflowed:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.overflowed = True
            self._chunks = []
            if self.producer is not None:
                self.producer.stopProducing()
            return
        self._chunks.append(data)

    def value(self) -> bytes:
        if self.overflowed:
            raise OutputTooLarge(self.limit)
        return b"".join(self._chunks)
