"""
SSH for flocker_async: a conch command server (public-key auth mapped to a
role, one fixed command set, nothing else) and a client (known_hosts
checked, timeouts, streams with backpressure both ways).

Server::

    factory = make_ssh_factory(reactor, node_keys.host_key, authorizer,
                               {"version": Command({OPERATOR, PEER}, version)},
                               limits=ServerLimits(login_timeout=30))
    TCP4ServerEndpoint(reactor, 4522).listen(factory)

Client::

    client = SSHClient(reactor, node_keys.node_key, known_hosts_path)
    result = await client.run("10.0.0.2", 4522, ["snapshots", "vol1"])
"""

from ._client import (
    AuthenticationRefused, CommandResult, ConnectFailed, HostKeyMismatch,
    OutputTooLarge, RemoteCommandFailed, SSHClient, SSHClientConnection,
    SSHError, SSHTimeout, UnknownHostKey, run_command)
from ._flow import DEFAULT_MAX_PACKET, DEFAULT_WINDOW_SIZE
from ._interfaces import OPERATOR, PEER, ROLES, ICommand, ICommandSession
from ._keys import (
    HOST_KEY_FILE, NODE_KEY_FILE, HostKeyStatus, KeyFileError, NodeKeys,
    add_known_host, check_known_host, ensure_private_directory, fingerprint,
    generate_key, known_hosts_line, known_hosts_name, load_or_create_key,
    load_or_create_node_keys, parse_public_keys, public_key_line)
from ._server import (
    EXIT_NOT_PERMITTED, EXIT_UNKNOWN_COMMAND, EXIT_USAGE, Command, CommandError,
    CommandSession, KeyAuthorizer, ServerLimits, StdinTooLarge, make_ssh_factory)

__all__ = [
    # server
    "make_ssh_factory", "ICommand", "ICommandSession", "Command", "CommandError",
    "CommandSession", "KeyAuthorizer", "ServerLimits", "StdinTooLarge", "OPERATOR",
    "PEER", "ROLES",
    "EXIT_USAGE", "EXIT_NOT_PERMITTED", "EXIT_UNKNOWN_COMMAND",
    # client
    "SSHClient", "SSHClientConnection", "CommandResult", "run_command",
    "SSHError", "ConnectFailed", "SSHTimeout", "UnknownHostKey", "HostKeyMismatch",
    "AuthenticationRefused", "RemoteCommandFailed", "OutputTooLarge",
    # keys
    "HOST_KEY_FILE", "NODE_KEY_FILE", "NodeKeys", "KeyFileError", "HostKeyStatus",
    "generate_key", "load_or_create_key", "load_or_create_node_keys",
    "ensure_private_directory", "fingerprint", "public_key_line", "parse_public_keys",
    "known_hosts_name", "known_hosts_line", "add_known_host", "check_known_host",
    # tuning
    "DEFAULT_WINDOW_SIZE", "DEFAULT_MAX_PACKET",
]
