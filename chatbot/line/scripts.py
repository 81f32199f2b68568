"""The line's Redis scripts: one file each in lua/, loaded once per Redis client, called by
name. A script's header names its keys and arguments (`-- KEYS: info, beat`, `-- ARGV: now`,
several lines allowed), which become its locals, and `-- include: helpers` puts lua/helpers.lua
before it. Every script also gets KEY, the key prefixes of chatbot.redis_keys, so no key name
is spelled in Lua. Each script's comment says what it guarantees; tests/test_line_scripts.py
holds it to that, script by script."""
import re
from pathlib import Path

import redis

from chatbot.redis_keys import lua_prefixes

LUA = Path(__file__).with_name("lua")
HEADER = re.compile(r"^-- (KEYS|ARGV|include): *(.+)$", re.M)
NAMES = ("admit", "announce", "beat", "check", "claim", "detach", "emit", "move", "release",
         "resume")


def source(name):
    """The script as Redis runs it (prelude, included helpers, the file), and its key and
    argument names in order."""
    text = (LUA / f"{name}.lua").read_text()
    parts = {"KEYS": [], "ARGV": [], "include": []}
    for kind, names in HEADER.findall(text):
        parts[kind] += [n.strip() for n in names.split(",")]
    prelude = ["local KEY = {", *(f"  {k} = '{v}'," for k, v in lua_prefixes().items()), "}"]
    prelude += [(LUA / f"{inc}.lua").read_text() for inc in parts["include"]]
    for kind in ("KEYS", "ARGV"):
        prelude += [f"local {name} = {kind}[{i}]" for i, name in enumerate(parts[kind], 1)]
    return "\n".join(prelude + [text]), parts["KEYS"], parts["ARGV"]


class Script:
    """One script: `call(**named)` runs it; `bound(**named)` is (script, keys, args) for a
    pipeline (see Line.one_trip). Every key and argument must be named, and nothing else."""

    def __init__(self, client, name):
        self.name = name
        text, self.keys, self.args = source(name)
        self.script = client.register_script(text)

    @property
    def sha(self):
        return self.script.sha

    def bound(self, **named):
        missing = set(self.keys + self.args) - named.keys()
        extra = named.keys() - set(self.keys + self.args)
        if missing or extra:
            raise TypeError(f"{self.name}.lua: missing {sorted(missing)}, unknown {sorted(extra)}")
        return self, [named[k] for k in self.keys], [named[a] for a in self.args]

    def call(self, **named):
        _, keys, args = self.bound(**named)
        return self.script(keys=keys, args=args)


def load(client):
    """Every script of the line, by name."""
    return {name: Script(client, name) for name in NAMES}


def load_all(client, named):
    """Every script of `named` (as load returns them) loaded into Redis, in one round trip."""
    pipe = client.pipeline(transaction=False)
    for script in named.values():
        pipe.script_load(script.script.script)
    pipe.execute()


NoScriptError = redis.exceptions.NoScriptError
