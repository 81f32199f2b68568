"""Bounds on a `format` JSON schema before llama.cpp makes a grammar of it, for the web
(before a request is queued) and the bundled engine alike.

llama-cpp-python writes a bounded repetition (`maxLength: n`, `maxItems: n`, a pattern's
`{n,m}`) as n nested optional groups, and llama.cpp's grammar parser recurses once per group
with no depth limit: a 39-byte schema with a large maxLength crashed the engine (SIGSEGV),
and one of a few thousand made the parser fail, which llama-cpp-python then uses as a null
grammar (SIGSEGV too). So repetitions, enum sizes and nesting are bounded here, and the
engine also test-builds each grammar (chatbot.engine.grammar) before it samples with it.

Settings (environment, read when the process starts): FORMAT_MAX_REPEAT (default 500: a string of up to 1,000
characters made 20 tokens take 8 s here, 500 about 1.3 s),
FORMAT_MAX_ENUM (1000), FORMAT_MAX_DEPTH (32), FORMAT_MAX_NODES (10000).
"""
import os
import re
from dataclasses import dataclass

REPEATS = ("maxLength", "minLength", "maxItems", "minItems", "maxProperties",
           "minProperties", "maxContains", "minContains")
COUNTS = re.compile(r"\{\s*(\d+)\s*(?:,\s*(\d*)\s*)?\}")  # a pattern's {n}, {n,} and {n,m}


class SchemaError(ValueError):
    """A schema over a bound: str(error) says which, answered with status 400."""


@dataclass(frozen=True)
class Bounds:
    max_repeat: int = 500
    max_enum: int = 1000
    max_depth: int = 32
    max_nodes: int = 10000

    @classmethod
    def from_env(cls, environ=None):
        environ = os.environ if environ is None else environ
        names = {"max_repeat": "FORMAT_MAX_REPEAT", "max_enum": "FORMAT_MAX_ENUM",
                 "max_depth": "FORMAT_MAX_DEPTH", "max_nodes": "FORMAT_MAX_NODES"}
        given = {}
        for field, name in names.items():
            raw = (environ.get(name) or "").strip()
            if raw:
                if not raw.isdigit() or int(raw) < 1:
                    raise ValueError(f"{name} must be a positive integer, got {raw!r}")
                given[field] = int(raw)
        return cls(**given)

    def check(self, schema):
        """Nothing, or SchemaError naming the first bound the schema goes over."""
        if not isinstance(schema, (dict, list)):
            return
        todo, nodes = [(schema, 1)], 0
        while todo:
            node, depth = todo.pop()
            nodes += 1
            if nodes > self.max_nodes:
                raise _over("the schema has more than", self.max_nodes, "parts",
                            "FORMAT_MAX_NODES")
            if depth > self.max_depth:
                raise _over("the schema nests deeper than", self.max_depth, "levels",
                            "FORMAT_MAX_DEPTH")
            if isinstance(node, dict):
                self._check_object(node)
                children = node.values()
            else:
                children = node
            todo.extend((child, depth + 1) for child in children
                        if isinstance(child, (dict, list)))

    def _check_object(self, node):
        for key in REPEATS:
            value = node.get(key)
            if _number(value) and value > self.max_repeat:
                raise _over(f"{key} {value} is above", self.max_repeat, "",
                            "FORMAT_MAX_REPEAT")
        pattern = node.get("pattern")
        if isinstance(pattern, str):
            for low, high in COUNTS.findall(pattern):
                if max(int(low), int(high or 0)) > self.max_repeat:
                    raise _over(f"pattern repeats {{{low},{high}}}, above", self.max_repeat,
                                "", "FORMAT_MAX_REPEAT")
        enum = node.get("enum")
        if isinstance(enum, list) and len(enum) > self.max_enum:
            raise _over(f"enum has {len(enum)} values, above", self.max_enum, "",
                        "FORMAT_MAX_ENUM")


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _over(what, bound, unit, setting):
    unit = f" {unit}" if unit else ""
    return SchemaError(f"invalid format: {what} {bound}{unit} ({setting})")
