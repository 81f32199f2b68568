"""API keys: `API_KEYS` / `ADMIN_API_KEYS` ("name=key,name2=key2") and the keys made with
`flask keys create`, stored as SHA-256 only. Keys are off while none exists: a local single
user needs none. Lookups are cached briefly per process, so a request costs no query."""
import hashlib
import secrets
import time
from dataclasses import dataclass

from sqlalchemy.exc import OperationalError, ProgrammingError

from chatbot.store.models import ApiKey, db

CACHE_SECONDS = 5.0
NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-@")


class KeyRefused(Exception):
    """A refused key operation (the CLI prints it)."""


@dataclass(frozen=True)
class Identity:
    name: str
    admin: bool


def digest(key):
    return hashlib.sha256(key.encode()).hexdigest()


def parse(setting, admin):
    """{hash: Identity} from "name=key,name2=key2"."""
    found = {}
    for entry in filter(None, (part.strip() for part in (setting or "").split(","))):
        name, sep, key = entry.partition("=")
        if not sep or not name.strip() or not key.strip():
            raise ValueError(f"API keys are name=key pairs, not {entry.split('=')[0]!r}=...")
        found[digest(key.strip())] = Identity(name.strip(), admin)
    return found


class Keys:
    def __init__(self, api_keys="", admin_api_keys=""):
        self.configured = {**parse(api_keys, False), **parse(admin_api_keys, True)}
        self._stored = (0.0, {})  # (when read, {hash: Identity}) of the api_keys table

    def _table(self):
        read_at, stored = self._stored
        if time.monotonic() - read_at > CACHE_SECONDS:
            try:
                rows = db.session.execute(db.select(ApiKey)).scalars().all()
            except (OperationalError, ProgrammingError) as exc:
                db.session.rollback()
                if not _missing_table(exc):
                    raise  # the database is away: refuse rather than let anyone in
                rows = []  # not migrated yet: no key was ever made there
            stored = {row.key_hash: Identity(row.name, row.admin) for row in rows}
            self._stored = (time.monotonic(), stored)
        return stored

    def enabled(self):
        return bool(self.configured) or bool(self._table())

    def identify(self, key):
        """The Identity a presented key stands for, or None."""
        if not key:
            return None
        hashed = digest(key)
        return self.configured.get(hashed) or self._table().get(hashed)

    def forget(self):
        self._stored = (0.0, {})


def _missing_table(exc):
    text = str(exc.orig).lower()
    return "no such table" in text or ("api_keys" in text and "does not exist" in text)


def create(name, admin=False):
    """Make a key; returns it (shown once: only its hash is kept)."""
    if not name or len(name) > 100 or not set(name) <= NAME_CHARS:
        raise KeyRefused("a key name is 1-100 of letters, digits and ._-@")
    if db.session.get(ApiKey, name) is not None:
        raise KeyRefused(f"key {name!r} exists already")
    key = "cb-" + secrets.token_urlsafe(32)
    db.session.add(ApiKey(name=name, key_hash=digest(key), admin=admin))
    db.session.commit()
    return key


def listing():
    rows = db.session.execute(db.select(ApiKey).order_by(ApiKey.name)).scalars().all()
    return [{"name": r.name, "admin": r.admin, "created_at": r.created_at.isoformat() + "Z"}
            for r in rows]


def revoke(name):
    row = db.session.get(ApiKey, name)
    if row is None:
        raise KeyRefused(f"no key named {name!r}")
    db.session.delete(row)
    db.session.commit()


def init_app(app):
    app.extensions["keys"] = Keys(app.config["API_KEYS"], app.config["ADMIN_API_KEYS"])
