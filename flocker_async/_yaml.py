"""
Safe, bounded YAML loading that remembers where every value came from.

PyYAML's ``safe_load`` is not enough for a tool that must never lose a
user's data: it silently keeps the last of two duplicate keys (an
application vanishes), expands aliases without limit (a few hundred bytes
can ask for gigabytes), and forgets line numbers.  Here we let PyYAML
compose the node graph, then build plain Python values ourselves, walking
the graph with a budget and reporting problems as ``(path, message)``.

The budget is counted on the expanded document: every value an alias
copies costs again, both one value of ``MAX_NODES`` and its bytes of
``MAX_EXPANDED_BYTES``, so a small file cannot ask for a huge request.
"""

from __future__ import annotations

import json
import re
from typing import Any, List, Optional, Tuple

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

__all__ = ["MAX_DOCUMENT_BYTES", "MAX_NODES", "MAX_EXPANDED_BYTES", "MAX_DEPTH",
           "YAMLProblem", "format_path", "load_yaml"]

MAX_DOCUMENT_BYTES = 1024 * 1024
MAX_NODES = 100_000
# The UTF-8 bytes of every scalar once aliases are expanded: as much as a
# node accepts in one apply request (wire.MAX_REQUEST_BYTES).  A file
# without aliases never reaches it: its scalars are at most its own size.
MAX_EXPANDED_BYTES = 4 * 1024 * 1024
MAX_DEPTH = 64

_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_SCALAR_TAGS = {
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
}


_SIMPLE_KEY = re.compile(r"[A-Za-z0-9_-]+\Z")


class YAMLProblem(Exception):
    """The document cannot be read at all; ``location`` is a path or
    ``line L, column C``."""

    def __init__(self, location: str, message: str):
        super().__init__(location, message)
        self.location = location
        self.message = message


def _where(node) -> str:
    mark = node.start_mark
    return "line %d, column %d" % (mark.line + 1, mark.column + 1)


class _Alias:
    """Where an alias (``*name``) was written, around the node it copies:
    PyYAML's composer hands back the anchored node itself, so without this
    an error could only name the anchor."""

    __slots__ = ("node", "anchor", "start_mark")

    def __init__(self, node, anchor: str, start_mark):
        self.node = node
        self.anchor = anchor
        self.start_mark = start_mark


class _Loader(yaml.SafeLoader):
    def compose_node(self, parent, index):
        if self.check_event(AliasEvent):
            event = self.peek_event()
            return _Alias(super().compose_node(parent, index), event.anchor,
                          event.start_mark)
        return super().compose_node(parent, index)


def format_path(path) -> str:
    """``applications.db.ports[0].external``; odd keys in brackets."""
    text = ""
    for part in path:
        if isinstance(part, int) and not isinstance(part, bool):
            text += "[%d]" % (part,)
        elif isinstance(part, str) and _SIMPLE_KEY.match(part):
            text += ("." if text else "") + part
        else:
            text += "[%s]" % (json.dumps(part if isinstance(part, str) else repr(part)),)
    return text


class _Builder:
    def __init__(self):
        self.budget = MAX_NODES
        self.bytes_left = MAX_EXPANDED_BYTES
        # The outermost alias being expanded: the place in the file that
        # asked for the copy that went over the budget.
        self.expanding: Optional[_Alias] = None
        self.scalars = SafeConstructor()
        self.problems: List[Tuple[str, str]] = []

    def build(self, node, depth: int, path=()) -> Any:
        if isinstance(node, _Alias):
            if self.expanding is not None:
                return self.build(node.node, depth, path)
            self.expanding = node
            try:
                return self.build(node.node, depth, path)
            finally:
                self.expanding = None
        self.budget -= 1
        if self.budget < 0:
            raise YAMLProblem(
                _where(self.expanding or node),
                "document too large once aliases are expanded "
                "(more than %d values)" % (MAX_NODES,))
        if depth > MAX_DEPTH:
            raise YAMLProblem(
                _where(node), "nested more than %d levels deep" % (MAX_DEPTH,))
        if isinstance(node, MappingNode):
            if node.tag != _MAP_TAG:
                raise YAMLProblem(_where(node),
                                  "unsupported YAML tag %s" % (node.tag,))
            result: dict = {}
            result_lines: dict = {}
            for key_node, value_node in node.value:
                plain = key_node.node if isinstance(key_node, _Alias) else key_node
                if not isinstance(plain, ScalarNode):
                    raise YAMLProblem(
                        _where(key_node),
                        "mapping keys must be plain values, not a list or mapping")
                key = self.build(key_node, depth + 1, path)
                if plain.tag == "tag:yaml.org,2002:merge":
                    raise YAMLProblem(_where(key_node),
                                      "merge keys (<<) are not supported")
                try:
                    duplicate = key in result
                except TypeError:
                    raise YAMLProblem(_where(key_node), "invalid mapping key")
                if duplicate:
                    # Keep the first; report, so nothing is silently replaced.
                    self.problems.append((
                        format_path(path + (key,)),
                        "duplicate key %s at %s (first at line %d); each key may "
                        "appear once" % (json.dumps(key) if isinstance(key, str)
                                         else repr(key), _where(key_node),
                                         result_lines[key])))
                    self.build(value_node, depth + 1, path + (key,))
                    continue
                result_lines[key] = key_node.start_mark.line + 1
                result[key] = self.build(value_node, depth + 1, path + (key,))
            return result
        if isinstance(node, SequenceNode):
            if node.tag != _SEQ_TAG:
                raise YAMLProblem(_where(node),
                                  "unsupported YAML tag %s" % (node.tag,))
            return [self.build(item, depth + 1, path + (i,))
                    for i, item in enumerate(node.value)]
        if node.tag == "tag:yaml.org,2002:merge":
            return "<<"
        if node.tag not in _SCALAR_TAGS:
            raise YAMLProblem(_where(node),
                              "unsupported YAML tag %s" % (node.tag,))
        self.bytes_left -= len(node.value.encode("utf-8", "surrogatepass"))
        if self.bytes_left < 0:
            self._too_large(path)
        try:
            return self.scalars.construct_object(node)
        except (ConstructorError, ValueError, OverflowError) as e:
            raise YAMLProblem(_where(node), "invalid value: %s" % (e,))

    def _too_large(self, path):
        # Only aliases can get here: a file's own scalars fit in its size.
        alias = self.expanding
        where = (", at %s" % (format_path(path),)) if path else ""
        if alias is None:
            raise YAMLProblem("", "values larger than %d bytes%s"
                              % (MAX_EXPANDED_BYTES, where))
        raise YAMLProblem(
            _where(alias),
            "alias *%s (a copy of the value at %s) takes the document past "
            "%d bytes (%d MiB) of values once aliases are expanded%s, more than "
            "a node accepts in one request; write the values out, or share less"
            % (alias.anchor, _where(alias.node), MAX_EXPANDED_BYTES,
               MAX_EXPANDED_BYTES >> 20, where))


def load_yaml(data: bytes) -> Tuple[Any, List[Tuple[str, str]]]:
    """
    Parse one YAML document from ``data`` into plain dicts, lists and
    scalars.  Returns the value and the non-fatal problems found (duplicate
    keys, as ``(key path, message)``); raises ``YAMLProblem`` when the
    document cannot be read at all.
    """
    if len(data) > MAX_DOCUMENT_BYTES:
        raise YAMLProblem(
            "", "file is larger than %d bytes (1 MiB), the limit for a "
                "configuration file" % (MAX_DOCUMENT_BYTES,))
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise YAMLProblem(
            "line %d" % (line,),
            "not valid UTF-8 (byte 0x%02x at offset %d)" % (data[e.start], e.start))
    if not text.strip() or all(
            not line.strip() or line.lstrip().startswith("#")
            for line in text.splitlines()):
        raise YAMLProblem("", "file is empty")
    try:
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = ("line %d, column %d" % (mark.line + 1, mark.column + 1)
                 if mark is not None else "")
        problem = e.problem or e.context or "invalid YAML"
        raise YAMLProblem(where, "YAML syntax error: %s" % (problem,))
    except yaml.YAMLError as e:
        raise YAMLProblem("", "YAML error: %s" % (e,))
    except RecursionError:
        raise YAMLProblem("", "nested more than %d levels deep" % (MAX_DEPTH,))
    if node is None:
        raise YAMLProblem("", "file is empty")
    builder = _Builder()
    try:
        return builder.build(node, 0), builder.problems
    except RecursionError:
        raise YAMLProblem("", "nested more than %d levels deep" % (MAX_DEPTH,))
