"""
``INetwork`` on Linux iptables, in chains flocker owns.

Rule layout (tables and chains, each jumped to once from the built-in chain
of the same name):

``raw`` FLOCKER-HOLD-PREROUTING, FLOCKER-HOLD-OUTPUT
    Held ports: a TCP SYN to the port on a local address is dropped.  The raw
    table runs before connection tracking and before DNAT, so the same rule
    holds traffic for a local application and traffic that a proxy would
    forward, both from outside (PREROUTING) and from this node (OUTPUT), and a
    dropped SYN leaves no conntrack entry behind.  The client retransmits
    (after about 1 s, then 3 s) and gets through once the hold is released.
``nat`` FLOCKER-PREROUTING, FLOCKER-OUTPUT
    Proxies: ``-m addrtype --dst-type LOCAL -p tcp --dport P -j DNAT
    --to-destination TARGET``, for connections from outside and from this
    node.
``nat`` FLOCKER-POSTROUTING
    Proxies: MASQUERADE of DNATed connections towards TARGET:P, so the target
    answers through this node.
``filter`` FLOCKER-FORWARD
    Proxies: accept DNATed connections to and from TARGET:P (a FORWARD policy
    of DROP, as Docker sets, would otherwise stop them).
``filter`` FLOCKER-INPUT
    Open ports: accept TCP to the port.

Every rule carries ``-m comment --comment "flocker <application>"`` and only
rules with such a comment are read back.  ``set_state`` writes all of this in
one ``iptables-restore --noflush`` call: each table block redeclares (so
flushes) and refills the flocker chains of that table, and iptables commits
each table atomically, so a rule present before and after never disappears.
Tables are committed one after another; the order keeps every intermediate
state safe: holds are first extended to the union of old and new, then
filter (FORWARD accepts exist before DNAT points at them), then nat, and
last the holds being released are dropped.

Forwarding: a node that proxies needs ``net.ipv4.ip_forward=1`` in its own
network namespace.  ``set_state`` enables it there when proxies are
requested (``manage_forwarding``); the node daemon runs in the node's
namespace, and tests only ever run this inside namespaces they created
(``run_in``).
"""

from __future__ import annotations

import re
import shlex
from typing import Dict, List, Optional, Sequence, Tuple

from attrs import field, frozen
from twisted.internet.defer import Deferred, DeferredLock, fail
from twisted.logger import Logger
from zope.interface import implementer

from .._process import CommandFailed, run_process
from ._interfaces import (
    HeldPort,
    INetwork,
    NetworkState,
    OpenPort,
    Proxy,
    desired_state,
)

__all__ = [
    "IPTablesNetwork",
    "IPTablesRestoreFailed",
    "FLOCKER_CHAINS",
    "parse_save",
    "parse_state",
    "restore_script",
    "removal_script",
]

COMMENT_PREFIX = "flocker "

HOLD_PREROUTING = "FLOCKER-HOLD-PREROUTING"
HOLD_OUTPUT = "FLOCKER-HOLD-OUTPUT"
NAT_PREROUTING = "FLOCKER-PREROUTING"
NAT_OUTPUT = "FLOCKER-OUTPUT"
NAT_POSTROUTING = "FLOCKER-POSTROUTING"
FILTER_FORWARD = "FLOCKER-FORWARD"
FILTER_INPUT = "FLOCKER-INPUT"

# table -> ((flocker chain, built-in chain that jumps to it), ...)
FLOCKER_CHAINS: Dict[str, Tuple[Tuple[str, str], ...]] = {
    "raw": ((HOLD_PREROUTING, "PREROUTING"), (HOLD_OUTPUT, "OUTPUT")),
    "filter": ((FILTER_FORWARD, "FORWARD"), (FILTER_INPUT, "INPUT")),
    "nat": ((NAT_PREROUTING, "PREROUTING"), (NAT_OUTPUT, "OUTPUT"),
            (NAT_POSTROUTING, "POSTROUTING")),
}


# --- reading iptables-save output -------------------------------------------

@frozen
class SavedRule:
    """One ``-A CHAIN ...`` line of iptables-save."""

    chain: str
    args: Tuple[str, ...]
    line: str

    @property
    def target(self) -> Optional[str]:
        values = _options(self.args).get("-j")
        return values[0] if values else None


@frozen
class SavedTable:
    chains: Tuple[str, ...] = ()
    rules: Tuple[SavedRule, ...] = ()

    def jumps_to(self, chain: str) -> List[SavedRule]:
        """Rules in other chains of this table that jump to ``chain``."""
        return [rule for rule in self.rules
                if rule.target == chain and rule.chain != chain]


@frozen
class SavedTables:
    tables: Dict[str, SavedTable] = field(factory=dict)

    def table(self, name: str) -> SavedTable:
        return self.tables.get(name, SavedTable())


def parse_save(text: str) -> SavedTables:
    """Parse ``iptables-save`` output into its tables, chains and rules."""
    tables = {}
    name = None
    chains: List[str] = []
    rules: List[SavedRule] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            name, chains, rules = line[1:], [], []
        elif line == "COMMIT":
            if name is not None:
                tables[name] = SavedTable(tuple(chains), tuple(rules))
            name = None
        elif name is None:
            continue
        elif line.startswith(":"):
            chains.append(line[1:].split()[0])
        elif line.startswith("-A "):
            try:
                tokens = shlex.split(line)
            except ValueError:
                # A foreign rule with odd quoting is never ours; keep its
                # target readable for jump detection all the same.
                tokens = line.split()
            if len(tokens) >= 2:
                rules.append(SavedRule(tokens[1], tuple(tokens[2:]), line))
    return SavedTables(tables)


def _options(args: Sequence[str]) -> Dict[str, List[str]]:
    """Map each option of a rule to the words that follow it."""
    options: Dict[str, List[str]] = {}
    key = None
    for token in args:
        if token.startswith("-") and len(token) > 1:
            key = token
            options.setdefault(key, [])
        elif key is not None:
            options[key].append(token)
    return options


def _single(options, name) -> Optional[str]:
    values = options.get(name)
    if values is None or len(values) != 1:
        return None
    return values[0]


def _application(options) -> Optional[str]:
    comment = _single(options, "--comment")
    if comment is None or not comment.startswith(COMMENT_PREFIX):
        return None
    return comment[len(COMMENT_PREFIX):]


def _port(options) -> Optional[int]:
    text = _single(options, "--dport")
    if text is None or not text.isdigit():
        return None
    return int(text)


def _value_from_rule(table: str, rule: SavedRule):
    """The flocker value a rule stands for, or None if it is not ours."""
    options = _options(rule.args)
    application = _application(options)
    port = _port(options)
    if application is None or port is None:
        return None
    if _single(options, "-p") != "tcp":
        return None
    target = rule.target
    try:
        if table == "nat" and rule.chain == NAT_PREROUTING \
                and target == "DNAT":
            address = _single(options, "--to-destination")
            if address is None:
                return None
            return Proxy(application, port, address)
        if table == "filter" and rule.chain == FILTER_INPUT \
                and target == "ACCEPT":
            return OpenPort(application, port)
        if table == "raw" and rule.chain == HOLD_PREROUTING \
                and target == "DROP":
            return HeldPort(application, port)
    except ValueError:
        return None
    return None


def parse_state(saved: SavedTables) -> NetworkState:
    """
    The flocker routing recorded in iptables: proxies from nat
    FLOCKER-PREROUTING, open ports from filter FLOCKER-INPUT, held ports from
    raw FLOCKER-HOLD-PREROUTING; rules without our comment are ignored.
    """
    found: Dict[type, set] = {Proxy: set(), OpenPort: set(), HeldPort: set()}
    for table_name, table in saved.tables.items():
        for rule in table.rules:
            value = _value_from_rule(table_name, rule)
            if value is not None:
                found[type(value)].add(value)
    return NetworkState(found[Proxy], found[OpenPort], found[HeldPort])


# --- writing iptables-restore input -----------------------------------------

def _comment(application: str) -> str:
    return '-m comment --comment "%s%s"' % (COMMENT_PREFIX, application)


def _hold_rules(held_ports) -> Dict[str, List[str]]:
    rules = []
    for held in sorted(held_ports):
        rules.append(
            "-p tcp -m tcp --dport %d --syn -m addrtype --dst-type LOCAL "
            "%s -j DROP" % (held.port, _comment(held.application)))
    return {HOLD_PREROUTING: rules, HOLD_OUTPUT: rules}


def _filter_rules(state: NetworkState) -> Dict[str, List[str]]:
    forward = []
    for proxy in sorted(state.proxies):
        common = "-m conntrack --ctstate DNAT %s -j ACCEPT" % (
            _comment(proxy.application),)
        forward.append("-p tcp -d %s/32 -m tcp --dport %d %s"
                       % (proxy.target_address, proxy.port, common))
        forward.append("-p tcp -s %s/32 -m tcp --sport %d %s"
                       % (proxy.target_address, proxy.port, common))
    inputs = ["-p tcp -m tcp --dport %d %s -j ACCEPT"
              % (open_port.port, _comment(open_port.application))
              for open_port in sorted(state.open_ports)]
    return {FILTER_FORWARD: forward, FILTER_INPUT: inputs}


def _nat_rules(state: NetworkState) -> Dict[str, List[str]]:
    dnat = []
    masquerade = []
    for proxy in sorted(state.proxies):
        dnat.append(
            "-p tcp -m addrtype --dst-type LOCAL -m tcp --dport %d %s "
            "-j DNAT --to-destination %s"
            % (proxy.port, _comment(proxy.application), proxy.target_address))
        masquerade.append(
            "-p tcp -d %s/32 -m tcp --dport %d -m conntrack --ctstate DNAT "
            "%s -j MASQUERADE"
            % (proxy.target_address, proxy.port, _comment(proxy.application)))
    return {NAT_PREROUTING: dnat, NAT_OUTPUT: dnat,
            NAT_POSTROUTING: masquerade}


def _table_block(table: str, saved: SavedTables,
                 rules: Dict[str, List[str]]) -> List[str]:
    """
    One table's transaction: redeclaring a chain under --noflush flushes it;
    the jump from the built-in chain is added only where none exists, and
    surplus jumps are deleted so there is always exactly one.
    """
    current = saved.table(table)
    lines = ["*" + table]
    for chain, _builtin in FLOCKER_CHAINS[table]:
        lines.append(":%s - [0:0]" % (chain,))
    for chain, builtin in FLOCKER_CHAINS[table]:
        jumps = [rule for rule in current.jumps_to(chain)
                 if rule.chain == builtin]
        if not jumps:
            lines.append("-I %s -j %s" % (builtin, chain))
        for surplus in jumps[1:]:
            lines.append("-D" + surplus.line[2:])
    for chain, _builtin in FLOCKER_CHAINS[table]:
        lines.extend("-A %s %s" % (chain, rule) for rule in rules[chain])
    lines.append("COMMIT")
    return lines


def restore_script(saved: SavedTables, state: NetworkState) -> str:
    """
    The ``iptables-restore --noflush`` input that turns the routing in
    ``saved`` into ``state`` (see the module docstring for the order).
    """
    holding = state.held_ports | parse_state(saved).held_ports
    lines = _table_block("raw", saved, _hold_rules(holding))
    lines += _table_block("filter", saved, _filter_rules(state))
    lines += _table_block("nat", saved, _nat_rules(state))
    if holding != state.held_ports:
        # The jumps exist now: the first raw block made them.
        lines += ["*raw"]
        lines += [":%s - [0:0]" % (chain,)
                  for chain, _ in FLOCKER_CHAINS["raw"]]
        for chain, rules in _hold_rules(state.held_ports).items():
            lines.extend("-A %s %s" % (chain, rule) for rule in rules)
        lines += ["COMMIT"]
    return "\n".join(lines) + "\n"


def removal_script(saved: SavedTables) -> Optional[str]:
    """
    The ``iptables-restore --noflush`` input that deletes every jump to a
    flocker chain and the chains themselves, or None if there are none.
    """
    lines = []
    for table, chains in FLOCKER_CHAINS.items():
        current = saved.table(table)
        ours = [chain for chain, _ in chains if chain in current.chains]
        jumps = [rule for chain, _ in chains
                 for rule in current.jumps_to(chain)]
        if not ours and not jumps:
            continue
        lines.append("*" + table)
        lines.extend("-D" + rule.line[2:] for rule in jumps)
        lines.extend("-F %s" % (chain,) for chain in ours)
        lines.extend("-X %s" % (chain,) for chain in ours)
        lines.append("COMMIT")
    if not lines:
        return None
    return "\n".join(lines) + "\n"


# --- running the commands ---------------------------------------------------

class IPTablesRestoreFailed(CommandFailed):
    """iptables-restore refused our input; ``failed_line`` is the culprit."""

    def __init__(self, result, script: str):
        super().__init__(result)
        self.script = script
        self.failed_line = None
        match = re.search(r"line (\d+) failed", self.stderr_text)
        if match is not None:
            lines = script.splitlines()
            number = int(match.group(1))
            if 1 <= number <= len(lines):
                self.failed_line = lines[number - 1]

    def __str__(self):
        text = super().__str__()
        if self.failed_line is not None:
            text += " (input: %s)" % (self.failed_line,)
        return text


@implementer(INetwork)
class IPTablesNetwork:
    """
    The routing of the network namespace the commands run in.

    ``run_in`` is an argv prefix that puts the commands in the node's
    namespace, e.g. ``("ip", "netns", "exec", "fat-h1-abc123")`` or
    ``("nsenter", "--net=/var/run/netns/NAME")``; empty (the daemon's case)
    means the namespace this process runs in.  Every command is bounded by
    ``timeout`` seconds; changes are serialised.
    """

    log = Logger()

    def __init__(self, reactor, run_in: Sequence[str] = (),
                 manage_forwarding: bool = True, timeout: float = 30.0):
        if isinstance(run_in, (str, bytes)):
            raise TypeError("run_in must be an argv prefix (a sequence of "
                            "strings), not one string: %r" % (run_in,))
        run_in = tuple(run_in)
        if not all(isinstance(word, str) for word in run_in):
            raise TypeError("run_in must be a sequence of strings: %r"
                            % (run_in,))
        self._reactor = reactor
        self._run_in = run_in
        self._manage_forwarding = manage_forwarding
        self._timeout = timeout
        self._lock = DeferredLock()

    def _run(self, argv, stdin=None) -> Deferred:
        return run_process(self._reactor, self._run_in + tuple(argv),
                           stdin=stdin, timeout=self._timeout)

    async def _saved(self) -> SavedTables:
        result = await self._run(["iptables-save"])
        return parse_save(result.stdout.decode("utf-8", "replace"))

    async def _restore(self, script: str):
        try:
            await self._run(["iptables-restore", "--noflush", "--wait", "10"],
                            stdin=script.encode("ascii"))
        except CommandFailed as e:
            raise IPTablesRestoreFailed(e.result, script) from e

    def get_state(self):
        async def get_state():
            return parse_state(await self._saved())
        return Deferred.fromCoroutine(get_state())

    def enumerate_proxies(self):
        return self.get_state().addCallback(lambda state: state.proxies)

    def enumerate_open_ports(self):
        return self.get_state().addCallback(lambda state: state.open_ports)

    def enumerate_held_ports(self):
        return self.get_state().addCallback(lambda state: state.held_ports)

    def ensure_forwarding(self):
        """
        Enable ``net.ipv4.ip_forward`` in the namespace the commands run in,
        if it is not already; fire with True if it had to be changed.
        """
        async def ensure_forwarding():
            result = await self._run(["sysctl", "-n", "net.ipv4.ip_forward"])
            if result.stdout.strip() == b"1":
                return False
            await self._run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
            self.log.info("Enabled IPv4 forwarding for proxies")
            return True
        return Deferred.fromCoroutine(ensure_forwarding())

    def set_state(self, proxies, open_ports, held_ports):
        try:
            state = desired_state(proxies, open_ports, held_ports)
        except (TypeError, ValueError):
            return fail()

        async def apply():
            if state.proxies and self._manage_forwarding:
                await self.ensure_forwarding()
            await self._restore(restore_script(await self._saved(), state))
            self.log.info(
                "Routing set: {proxies} proxies, {open_ports} open ports, "
                "{held_ports} held ports",
                proxies=len(state.proxies), open_ports=len(state.open_ports),
                held_ports=len(state.held_ports))

        return self._lock.run(lambda: Deferred.fromCoroutine(apply()))

    def remove_all(self):
        async def remove_all():
            script = removal_script(await self._saved())
            if script is not None:
                await self._restore(script)
                self.log.info("Removed every flocker rule and chain")

        return self._lock.run(lambda: Deferred.fromCoroutine(remove_all()))
