"""
The lab's network: a switch namespace holding a bridge, one namespace per
node plugged into it, and one veth that gives the host a lab address.

The host's own network is never touched: the bridge lives in its own
namespace, nodes get no default route (nothing they send can leave the
machine), and the lab subnet is chosen so that it overlaps no route the
host has.  Everything is named with the ``flab-`` prefix.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Iterable, List, Optional, Sequence, Tuple

from ._system import LabError, run

__all__ = [
    "PREFIX", "SWITCH", "HOST_VETH", "SWITCH_HOST_PORT", "LAB_RANGE",
    "BRIDGE_RANGE", "Route", "parse_routes", "host_routes", "choose_subnet",
    "choose_bridge_subnets", "netns_path", "nsenter_prefix", "namespaces",
    "ensure_namespace", "delete_namespace", "ensure_switch", "ensure_host_link",
    "remove_host_link", "ensure_node_link", "link_exists", "set_node_link",
    "node_link_up",
]

PREFIX = "flab-"
SWITCH = PREFIX + "sw"             # the default lab's names; see LabNames
HOST_VETH = PREFIX + "host"        # the host's end (in the host namespace)
SWITCH_HOST_PORT = "host0"         # its peer, a port of the bridge
BRIDGE = "br0"
# Lab subnets are /24s of these ranges, the first that is free.
LAB_RANGE = ipaddress.IPv4Network("10.237.0.0/16")
BRIDGE_RANGE = ipaddress.IPv4Network("10.238.0.0/16")  # the nodes' docker0s
HOST_INDEX = 1
FIRST_NODE_INDEX = 11

Route = Tuple[ipaddress.IPv4Network, Optional[str]]


def parse_routes(text: str) -> List[Route]:
    """
    ``(network, device)`` for every IPv4 destination in ``ip -o -4 route
    show table all`` output; ``default`` and other keywords are skipped (a
    default route covers everything and would leave no subnet free).
    """
    routes = []
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        if fields[0] in ("local", "broadcast", "unicast", "anycast",
                         "multicast", "unreachable", "blackhole", "prohibit",
                         "throw", "nat") and len(fields) > 1:
            fields = fields[1:]
        try:
            network = ipaddress.ip_network(fields[0], strict=False)
        except ValueError:
            continue
        if network.version != 4:
            continue
        device = None
        if "dev" in fields[:-1]:
            device = fields[fields.index("dev") + 1]
        routes.append((network, device))
    return routes


def host_routes() -> List[Route]:
    return parse_routes(run(["ip", "-o", "-4", "route", "show", "table",
                             "all"]).stdout.decode("utf-8", "replace"))


def _clashes(candidate, routes: Iterable[Route], own_device: str):
    return [str(net) for net, dev in routes
            if dev != own_device and candidate.overlaps(net)]


def choose_subnet(routes: Sequence[Route],
                  preferred: Optional[str] = None,
                  own_device: str = HOST_VETH) -> ipaddress.IPv4Network:
    """
    The lab /24: ``preferred`` (the one the lab state records) if given,
    else the first /24 of ``LAB_RANGE`` that overlaps no host route.
    Routes through the lab's own host veth do not count: they are ours.
    """
    if preferred is not None:
        subnet = ipaddress.IPv4Network(preferred)
        clash = _clashes(subnet, routes, own_device)
        if clash:
            raise LabError(
                "the lab subnet %s recorded in the lab state overlaps the "
                "host's route(s) %s; run 'flocker-lab down' and 'up' again "
                "to pick another subnet" % (subnet, ", ".join(clash)))
        return subnet
    for subnet in LAB_RANGE.subnets(new_prefix=24):
        if not _clashes(subnet, routes, own_device):
            return subnet
    raise LabError("every /24 of %s overlaps a route of this host (see 'ip "
                   "route'); no lab subnet is free" % (LAB_RANGE,))


def choose_bridge_subnets(routes: Sequence[Route], count: int, lab_subnet,
                          own_device: str = HOST_VETH) -> List[ipaddress.IPv4Network]:
    """
    One /24 per node for its docker0 bridge: distinct (so a container
    address names its node), overlapping no host route and not the lab.
    """
    chosen: List[ipaddress.IPv4Network] = []
    for subnet in BRIDGE_RANGE.subnets(new_prefix=24):
        if subnet.network_address == BRIDGE_RANGE.network_address:
            continue  # .0.x reads like a mistake in logs; start at .1
        if subnet.overlaps(lab_subnet) or _clashes(subnet, routes, own_device):
            continue
        chosen.append(subnet)
        if len(chosen) == count:
            return chosen
    raise LabError("no free /24 for the nodes' docker bridges in %s"
                   % (BRIDGE_RANGE,))


def host_address(subnet) -> ipaddress.IPv4Address:
    return subnet.network_address + HOST_INDEX


def node_address(subnet, index: int) -> ipaddress.IPv4Address:
    """Node ``index`` (1-based): .11, .12, ..."""
    address = subnet.network_address + FIRST_NODE_INDEX + index - 1
    if address not in subnet or address == subnet.broadcast_address:
        raise LabError("too many nodes for the lab subnet %s" % (subnet,))
    return address


def netns_path(name: str) -> str:
    return "/var/run/netns/" + name


def nsenter_prefix(name: str) -> List[str]:
    """
    The argv prefix that runs a command in namespace ``name``.  nsenter
    enters the network namespace only: ``ip netns exec`` would remount /sys,
    which dockerd cannot live with; iptables needs nothing more.
    """
    return ["nsenter", "--net=" + netns_path(name)]


def namespaces() -> List[str]:
    out = run(["ip", "netns", "list"], check=False).stdout.decode()
    return [line.split()[0] for line in out.splitlines() if line.split()]


def ensure_namespace(name: str) -> bool:
    """Create namespace ``name`` (loopback up) unless it exists; True if made."""
    made = False
    if not os.path.exists(netns_path(name)) or name not in namespaces():
        if name in namespaces():  # listed but its file is gone: recreate
            run(["ip", "netns", "del", name], check=False)
        run(["ip", "netns", "add", name])
        made = True
    run(nsenter_prefix(name) + ["ip", "link", "set", "lo", "up"])
    return made


def delete_namespace(name: str) -> None:
    if name in namespaces() or os.path.exists(netns_path(name)):
        run(["ip", "netns", "del", name], check=False)


def link_exists(name: str, namespace: Optional[str] = None) -> bool:
    prefix = nsenter_prefix(namespace) if namespace else []
    return run(prefix + ["ip", "link", "show", "dev", name],
               check=False).returncode == 0


def _addresses(name: str, namespace: Optional[str] = None) -> List[str]:
    prefix = nsenter_prefix(namespace) if namespace else []
    out = run(prefix + ["ip", "-o", "-4", "addr", "show", "dev", name],
              check=False).stdout.decode()
    found = []
    for line in out.splitlines():
        fields = line.split()
        if "inet" in fields:
            found.append(fields[fields.index("inet") + 1])
    return found


def _ensure_address(name: str, cidr: str, namespace: Optional[str] = None):
    prefix = nsenter_prefix(namespace) if namespace else []
    for other in _addresses(name, namespace):
        if other != cidr:
            run(prefix + ["ip", "addr", "del", other, "dev", name], check=False)
    if cidr not in _addresses(name, namespace):
        run(prefix + ["ip", "addr", "add", cidr, "dev", name])


def ensure_switch(switch: str = SWITCH) -> None:
    ensure_namespace(switch)
    sw = nsenter_prefix(switch)
    if not link_exists(BRIDGE, switch):
        run(sw + ["ip", "link", "add", BRIDGE, "type", "bridge"])
    run(sw + ["ip", "link", "set", BRIDGE, "up"])


def ensure_host_link(subnet, switch: str = SWITCH,
                     host_veth: str = HOST_VETH) -> None:
    """
    The host's veth into the switch, with the host's lab address.  Only
    this one device (and the connected route of the lab subnet that comes
    with its address) is added to the host.
    """
    sw = nsenter_prefix(switch)
    if link_exists(host_veth) and not link_exists(SWITCH_HOST_PORT, switch):
        run(["ip", "link", "del", host_veth], check=False)  # half a pair
    if not link_exists(host_veth):
        if link_exists(SWITCH_HOST_PORT, switch):
            run(sw + ["ip", "link", "del", SWITCH_HOST_PORT], check=False)
        run(["ip", "link", "add", host_veth, "type", "veth", "peer", "name",
             SWITCH_HOST_PORT, "netns", switch])
        # No IPv6 link-local address: the lab is IPv4 only.
        run(["ip", "link", "set", host_veth, "addrgenmode", "none"],
            check=False)
    run(sw + ["ip", "link", "set", SWITCH_HOST_PORT, "master", BRIDGE, "up"])
    _ensure_address(host_veth, "%s/%d" % (host_address(subnet),
                                          subnet.prefixlen))
    run(["ip", "link", "set", host_veth, "up"])


def remove_host_link(host_veth: str = HOST_VETH) -> None:
    if link_exists(host_veth):
        run(["ip", "link", "del", host_veth], check=False)


def ensure_node_link(namespace: str, port: str, address, subnet,
                     switch: str = SWITCH, link_up: bool = True) -> None:
    """
    Plug ``namespace`` into the switch (its eth0 on bridge port ``port``);
    with ``link_up`` false the port stays down (see ``set_node_link``).
    """
    sw = nsenter_prefix(switch)
    node = nsenter_prefix(namespace)
    have_port = link_exists(port, switch)
    have_eth = link_exists("eth0", namespace)
    if have_port != have_eth:  # half a pair from an interrupted up
        if have_port:
            run(sw + ["ip", "link", "del", port], check=False)
        if have_eth:
            run(node + ["ip", "link", "del", "eth0"], check=False)
        have_port = have_eth = False
    if not have_port:
        run(["ip", "link", "add", port, "netns", switch, "type", "veth",
             "peer", "name", "eth0", "netns", namespace])
    run(sw + ["ip", "link", "set", port, "master", BRIDGE,
              "up" if link_up else "down"])
    _ensure_address("eth0", "%s/%d" % (address, subnet.prefixlen), namespace)
    run(node + ["ip", "link", "set", "eth0", "up"])
    run(node + ["ip", "link", "set", "lo", "up"])
    # Forwarding for the proxies' DNAT, inside this namespace only; /proc/sys
    # follows the network namespace of the writer.
    run(node + ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])


def set_node_link(port: str, up: bool, switch: str = SWITCH) -> None:
    """
    Bring a node's bridge port up or down: down, nothing reaches the node
    and its eth0 loses carrier, so it cannot send either; inside its
    namespace (loopback, its own address, its containers) all still works.
    Taking down a port that is missing is no error: it carries nothing.
    """
    if not up and not link_exists(port, switch):
        return
    run(nsenter_prefix(switch) + ["ip", "link", "set", port,
                                  "up" if up else "down"])


def node_link_up(port: str, switch: str = SWITCH) -> bool:
    """Whether a node's bridge port exists and is administratively up."""
    result = run(nsenter_prefix(switch) + ["ip", "-o", "link", "show", "dev",
                                           port], check=False)
    return result.returncode == 0 and _link_flags_up(result.stdout.decode())


def _link_flags_up(line: str) -> bool:
    """Whether ``ip -o link`` output shows the UP flag: ``<...,UP,...>``."""
    flags = line.partition("<")[2].partition(">")[0]
    return "UP" in flags.split(",")
