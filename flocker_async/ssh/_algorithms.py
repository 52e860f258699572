"""
The SSH algorithms our server and client offer: modern ones only.

Removed from conch's defaults: the CBC ciphers (3des-cbc, aes*-cbc), HMACs
over MD5 and SHA-1, the key exchanges that hash with SHA-1
(diffie-hellman-group1/group14/group-exchange-sha1), zlib compression (it
would let an unauthenticated client make the server inflate its packets),
and, for host keys the client accepts, ssh-dss and ssh-rsa (SHA-1
signatures).  conch has no encrypt-then-MAC modes, chacha20-poly1305 or
AES-GCM; CTR with HMAC-SHA-2 is what it has that OpenSSH 7.4 and later
still offer.  Each list is also filtered by what the installed conch
supports, so an older conch drops what it lacks rather than failing.
"""

from __future__ import annotations

from typing import List, Sequence

from twisted.conch.ssh.transport import SSHClientTransport, SSHServerTransport

__all__ = ["CIPHERS", "SERVER_MACS", "CLIENT_MACS", "SERVER_KEY_EXCHANGES",
           "CLIENT_KEY_EXCHANGES", "COMPRESSIONS", "HOST_KEY_ALGORITHMS",
           "USER_AUTH_SIGNATURES", "modern"]


def modern(wanted: Sequence[bytes], supported: Sequence[bytes]) -> List[bytes]:
    """``wanted``, in its order, keeping only what conch ``supported``."""
    return [name for name in wanted if name in supported]


CIPHERS = modern([b"aes256-ctr", b"aes192-ctr", b"aes128-ctr"],
                 SSHClientTransport.supportedCiphers)

# The server takes the first of the client's it supports, so its own order
# matters only for clients without a preference.
SERVER_MACS = modern([b"hmac-sha2-512", b"hmac-sha2-256"],
                     SSHServerTransport.supportedMACs)
# HMAC-SHA-256 first: CPUs with the SHA extensions hash it several times
# faster than SHA-512, and a volume push spends much of its CPU on the MAC.
CLIENT_MACS = modern([b"hmac-sha2-256", b"hmac-sha2-512"],
                     SSHClientTransport.supportedMACs)

_KEY_EXCHANGES = [
    b"mlkem768x25519-sha256",
    b"curve25519-sha256",
    b"curve25519-sha256@libssh.org",
    b"ecdh-sha2-nistp256",
    b"ecdh-sha2-nistp384",
    b"ecdh-sha2-nistp521",
]
# conch's client lacks the post-quantum hybrid its server has.  Neither
# offers diffie-hellman-group-exchange-sha256: the server has no moduli
# file, and our servers never need it.
SERVER_KEY_EXCHANGES = modern(_KEY_EXCHANGES, SSHServerTransport.supportedKeyExchanges)
CLIENT_KEY_EXCHANGES = modern(_KEY_EXCHANGES, SSHClientTransport.supportedKeyExchanges)

COMPRESSIONS = [b"none"]

HOST_KEY_ALGORITHMS = modern([
    b"ssh-ed25519",
    b"ecdsa-sha2-nistp256",
    b"ecdsa-sha2-nistp384",
    b"ecdsa-sha2-nistp521",
    b"rsa-sha2-512",
    b"rsa-sha2-256",
], SSHClientTransport.supportedPublicKeys)

# What the server says (RFC 8308 server-sig-algs) it verifies for user keys.
# conch would advertise its host key's algorithms only (ssh-ed25519), and
# OpenSSH 8.8 and later then offer no RSA key at all.  ssh-rsa (SHA-1) is
# not advertised, though conch's own client still signs with it.
USER_AUTH_SIGNATURES = [
    b"ssh-ed25519",
    b"sk-ssh-ed25519@openssh.com",
    b"ecdsa-sha2-nistp256",
    b"ecdsa-sha2-nistp384",
    b"ecdsa-sha2-nistp521",
    b"sk-ecdsa-sha2-nistp256@openssh.com",
    b"rsa-sha2-512",
    b"rsa-sha2-256",
]
