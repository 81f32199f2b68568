"""Ollama's generic tools parser (tools/tools.go), reading a reply as it streams.

Text before the tag is content, sent at once but for a tail that may be the tag's start.
From the tag on everything is buffered; each call found in it (a tool's name, then the
first JSON object holding its arguments) is emitted once complete.
"""
import json
import random
import string


def call_id():
    """server/routes.go toolCallId: "call_" and 8 random lowercase letters and digits."""
    return "call_" + "".join(random.choices(string.ascii_lowercase + string.digits, k=8))


class Parser:
    def __init__(self, tools, tag):
        fns = [t.get("function") for t in tools if isinstance(t, dict)]
        self.names = [f["name"] for f in fns
                      if isinstance(f, dict) and isinstance(f.get("name"), str) and f["name"]]
        self.tag, self.buffer, self.calling, self.n = tag, "", False, 0

    def add(self, text):
        """(calls, content) for the next piece of the reply."""
        self.buffer += text
        content = ""
        if not self.calling:
            at, found = self._find_tag()
            cut = len(self.buffer) if at < 0 else at
            content, self.buffer = self.buffer[:cut], self.buffer[cut:]
            if not found:
                return [], content
            self.calling = True
        calls = []
        while (call := self._next_call()) is not None:
            calls.append(call)
        return calls, content

    def finish(self):
        """What is still held when the reply ends. Ollama drops it; a reply in which no call
        was found (a tag's start, a malformed call) is given back as content instead."""
        rest, self.buffer = self.buffer, ""
        return "" if self.n else rest

    def _find_tag(self):
        """Where the tag starts and whether it is whole; a tail that could begin it counts."""
        at = self.buffer.find(self.tag)
        if at >= 0:
            return at, True
        for n in range(min(len(self.buffer), len(self.tag)), 0, -1):
            if self.buffer.endswith(self.tag[:n]):
                return len(self.buffer) - n, False
        return -1, False

    def _next_call(self):
        name, end = self._find_tool()
        if name is None:
            return None
        args, close = _find_arguments(name, self.buffer)
        if args is None:
            return None
        call = {"function": {"index": self.n, "name": name, "arguments": args}}
        self.n += 1
        self.buffer = self.buffer[max(end, close):]
        return call

    def _find_tool(self):
        """The tool named first in the buffer (the longest at one position); none while the
        buffer ends with part of a name."""
        buf = self.buffer
        longest = max(map(len, self.names), default=0)
        for i in range(1, min(len(buf), longest) + 1):
            tail = buf[-i:]
            if any(len(tail) < len(name) and name.startswith(tail) for name in self.names):
                return None, 0
        found, start = None, -1
        for name in self.names:
            pos = buf.find(name)
            if pos >= 0 and (start < 0 or pos < start or
                             (pos == start and len(name) > len(found))):
                found, start = name, pos
        return (found, start + len(found)) if found else (None, 0)


def _find_arguments(name, buffer):
    """The arguments in the first complete JSON object of the buffer, and where it closes.
    Key order is kept (Ollama's ordered map is filled from a Go map, in random order)."""
    start, braces, in_string, escaped = -1, 0, False, False
    for i, c in enumerate(buffer):
        if escaped:
            escaped = False
        elif c == "\\":
            escaped = True
        elif c == '"':
            in_string = not in_string
        elif in_string:
            continue
        elif c == "{":
            if braces == 0:
                start = i
            braces += 1
        elif c == "}":
            braces -= 1
            if braces == 0 and start >= 0:
                try:
                    data = json.loads(buffer[start:i + 1])
                except ValueError:  # not an object after all: keep looking
                    start = -1
                    continue
                found, args = _find_object(name, data)
                return (args if found else data), i
            braces = max(braces, 0)
    return None, 0


def _find_map(key, obj):
    value = obj.get(key)
    if isinstance(value, dict):
        return value
    if isinstance(value, str):  # arguments as a JSON string
        try:
            value = json.loads(value)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None
    return None


def _find_object(name, obj):
    """(found, arguments): {"name", "arguments"|"parameters"} (found without arguments when
    neither is there), {name: arguments}, or either nested in the object."""
    if "name" in obj:
        for key in ("arguments", "parameters"):
            args = _find_map(key, obj)
            if args is not None:
                return True, args
        return True, None
    args = _find_map(name, obj)
    if args is not None:
        return True, args
    for value in obj.values():
        for child in (value if isinstance(value, list) else [value]):
            if isinstance(child, dict):
                found, args = _find_object(name, child)
                if found:
                    return True, args
    return False, None
