"""
What a node's network routing looks like, and the interface that changes it.

A node routes every application's external ports: a port of an application
running elsewhere is proxied (DNAT) to the node running it, a port of an
application running here is opened, and while an application is moving its
ports are held (new connection attempts dropped so clients retransmit).

Every value is validated when it is made, so nothing that reaches an
iptables rule can change the rule's meaning: application names come from one
strict character set, ports are 1..65535, and addresses are IPv4 addresses
(host names must be resolved by the caller).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Dict, FrozenSet, List, Set, Union

from attrs import field, frozen
from zope.interface import Interface

__all__ = [
    "INetwork",
    "Proxy",
    "OpenPort",
    "HeldPort",
    "NetworkState",
    "RouteConflict",
    "desired_state",
]

# The same character set as application names everywhere else: it ends up in
# an iptables comment, so no quote, space or newline may get through.
APPLICATION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")


def _check_application(instance, attribute, value):
    if not isinstance(value, str) or APPLICATION_NAME.fullmatch(value) is None:
        raise ValueError(
            "%s.%s must be an application name (letters, digits, '_' and '-', "
            "starting with a letter or digit, at most 63 characters), got %r"
            % (type(instance).__name__, attribute.name, value))


def _check_port(instance, attribute, value):
    if (isinstance(value, bool) or not isinstance(value, int)
            or not 1 <= value <= 65535):
        raise ValueError("%s.%s must be a TCP port number 1..65535, got %r"
                         % (type(instance).__name__, attribute.name, value))


def _address_text(value):
    if isinstance(value, ipaddress.IPv4Address):
        return str(value)
    return value


def _check_address(instance, attribute, value):
    problem = None
    if not isinstance(value, str):
        problem = "not a string"
    else:
        try:
            address = ipaddress.IPv4Address(value)
        except ValueError:
            problem = "not an IPv4 address (resolve host names first)"
        else:
            if str(address) != value:
                problem = "not in canonical form (%s)" % (address,)
            elif (address.is_unspecified or address.is_loopback
                  or address.is_multicast or address.is_reserved):
                problem = "not a node's unicast address"
    if problem is not None:
        raise ValueError("%s.%s must be a node's IPv4 address, got %r: %s"
                         % (type(instance).__name__, attribute.name, value,
                            problem))


@frozen(order=True)
class Proxy:
    """
    Connections to ``port`` on any local address go to the same port of
    ``target_address``, the node now running ``application``.
    """

    application: str = field(validator=_check_application)
    port: int = field(validator=_check_port)
    target_address: str = field(converter=_address_text,
                                validator=_check_address)


@frozen(order=True)
class OpenPort:
    """``port`` accepts traffic for ``application``, which runs here."""

    application: str = field(validator=_check_application)
    port: int = field(validator=_check_port)


@frozen(order=True)
class HeldPort:
    """
    New connections (TCP SYN) to ``port`` on a local address are dropped, so
    clients retransmit until the hold is released instead of being refused.
    """

    application: str = field(validator=_check_application)
    port: int = field(validator=_check_port)


def _members_of(kind):
    def check(instance, attribute, value):
        for item in value:
            if not isinstance(item, kind):
                raise TypeError("%s.%s must hold %s values, got %r"
                                % (type(instance).__name__, attribute.name,
                                   kind.__name__, item))
    return check


@frozen
class NetworkState:
    """The routing of one node: its proxies, open ports and held ports."""

    proxies: FrozenSet[Proxy] = field(
        default=frozenset(), converter=frozenset, validator=_members_of(Proxy))
    open_ports: FrozenSet[OpenPort] = field(
        default=frozenset(), converter=frozenset,
        validator=_members_of(OpenPort))
    held_ports: FrozenSet[HeldPort] = field(
        default=frozenset(), converter=frozenset,
        validator=_members_of(HeldPort))


class RouteConflict(ValueError):
    """The desired routing gives one port two meanings."""


def desired_state(proxies=(), open_ports=(), held_ports=()) -> NetworkState:
    """
    Check a desired routing and return it as a ``NetworkState``.

    A port belongs to one application; a port is proxied to one node or
    open here, never both.  Holding a proxied or open port is the normal
    state of a move.  Raises ``TypeError`` for values of the wrong kind and
    ``RouteConflict`` naming every conflicting port.
    """
    for name, value in (("proxies", proxies), ("open_ports", open_ports),
                        ("held_ports", held_ports)):
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
            raise TypeError("%s must be a collection of values, got %r"
                            % (name, value))
    state = NetworkState(proxies, open_ports, held_ports)
    owners: Dict[int, Set[str]] = {}
    routes: Dict[int, List[Union[Proxy, OpenPort]]] = {}
    for value in state.proxies | state.open_ports | state.held_ports:
        owners.setdefault(value.port, set()).add(value.application)
    for value in state.proxies | state.open_ports:
        routes.setdefault(value.port, []).append(value)
    problems = []
    for port in sorted(owners):
        if len(owners[port]) > 1:
            problems.append("port %d is used by applications %s"
                            % (port, ", ".join(sorted(owners[port]))))
        elif len(routes.get(port, ())) > 1:
            problems.append("port %d is routed more than one way: %s"
                            % (port, ", ".join(
                                repr(r) for r in sorted(
                                    routes[port], key=repr))))
    if problems:
        raise RouteConflict("conflicting routes: " + "; ".join(problems))
    return state


class INetwork(Interface):
    """
    The routing of one node.  Every method returns a ``Deferred``.
    """

    def get_state():
        """
        Fire with the current ``NetworkState``: only what flocker itself set.
        """

    def enumerate_proxies():
        """Fire with the current frozenset of ``Proxy``."""

    def enumerate_open_ports():
        """Fire with the current frozenset of ``OpenPort``."""

    def enumerate_held_ports():
        """Fire with the current frozenset of ``HeldPort``."""

    def set_state(proxies, open_ports, held_ports):
        """
        Replace the whole routing with the given proxies, open ports and held
        ports, as one transaction.  Routes present both before and after are
        never interrupted, so connections through them survive.  Fails with
        ``TypeError`` or ``RouteConflict`` (see ``desired_state``) without
        changing anything if the desired state is invalid.
        """

    def remove_all():
        """Remove every flocker rule; afterwards the node routes nothing."""
