"""API keys: `API_KEYS` / `ADMIN_API_KEYS` ("name=key,name2=key2") and the keys made with
`flask keys create`, stored as SHA-256 only. Keys are off while none has ever been: a local
single user needs none (and is served locally only, chatbot.api.local). Keys fail closed: once
keys have been on (a key made, or a server started with API_KEYS/ADMIN_API_KEYS), the database
remembers it (the settings row "keys_on"), and with no key left every route but the open ones
is refused until a key exists again, or until `flask keys off` turns keys off on purpose. A
database without these tables (not migrated) is refused the same way. Lookups are cached
briefly per process, so a request costs no query."""
import hashlib
import logging
import secrets
import time
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from chatbot.store import UPGRADE, missing_table
from chatbot.store.models import ApiKey, db, utcnow

log = logging.getLogger(__name__)
CACHE_SECONDS = 5.0
NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-@")
SETTINGS = db.Table("settings", db.Column("name", db.String(100), primary_key=True),
                    db.Column("value", db.String(200), nullable=False),
                    db.Column("updated_at", db.DateTime, nullable=False))
KEYS_ON = "keys_on"
LOCKED = ("keys were on and no key is left: every route but the open ones answers 401 until "
          "a key exists (flask --app wsgi keys create NAME --admin, or API_KEYS/ADMIN_API_KEYS), "
          "or until keys are turned off on purpose (flask --app wsgi keys off)")
UNMIGRATED = ("the database is not migrated: every route but the open ones answers 401 until "
              f"it is ({UPGRADE})")


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
        # (when read, {hash: Identity} of the api_keys table, why everyone is refused or None)
        self._stored = (0.0, {}, None)

    def _state(self):
        read_at, stored, refusal = self._stored
        if time.monotonic() - read_at > CACHE_SECONDS:
            try:
                rows = db.session.execute(db.select(ApiKey)).scalars().all()
                refusal = LOCKED if not rows and not self.configured and were_on() else None
            except (OperationalError, ProgrammingError) as exc:
                db.session.rollback()
                if not missing_table(exc):
                    raise  # the database is away: refuse rather than let anyone in
                rows, refusal = [], UNMIGRATED  # nothing says keys were never on
            stored = {row.key_hash: Identity(row.name, row.admin) for row in rows}
            if refusal and refusal != self._stored[2]:
                log.error(refusal)  # when it begins, not on every read
            self._stored = (time.monotonic(), stored, refusal)
        return stored, refusal

    def enabled(self):
        """Whether a request needs a key: keys exist, or they were on and are all gone."""
        if self.configured:
            return True
        stored, refusal = self._state()
        return bool(stored) or refusal is not None

    def exist(self):
        """Whether some key exists (configured or stored)."""
        return bool(self.configured) or bool(self._state()[0])

    def identify(self, key):
        """The Identity a presented key stands for, or None."""
        if not key:
            return None
        hashed = digest(key)
        return self.configured.get(hashed) or self._state()[0].get(hashed)

    def forget(self):
        self._stored = (0.0, {}, self._stored[2])


def were_on():
    """Whether keys have ever been on in this database."""
    found = db.session.execute(db.select(SETTINGS.c.name).where(SETTINGS.c.name == KEYS_ON))
    return found.first() is not None


def remember_on():
    """Note in the database that keys are on (kept until `flask keys off`)."""
    _note_on()
    try:
        db.session.commit()
    except IntegrityError:  # another process noted it at the same moment
        db.session.rollback()


def _note_on():
    if not were_on():
        db.session.execute(SETTINGS.insert().values(name=KEYS_ON, value="true",
                                                    updated_at=utcnow()))


def create(name, admin=False):
    """Make a key; returns it (shown once: only its hash is kept)."""
    if not name or len(name) > 100 or not set(name) <= NAME_CHARS:
        raise KeyRefused("a key name is 1-100 of letters, digits and ._-@")
    if db.session.get(ApiKey, name) is not None:
        raise KeyRefused(f"key {name!r} exists already")
    key = "cb-" + secrets.token_urlsafe(32)
    db.session.add(ApiKey(name=name, key_hash=digest(key), admin=admin))
    _note_on()
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


def locked(keys):
    """LOCKED when keys were on and none is left (`keys`: this process's Keys), else None."""
    if keys.configured or db.session.execute(db.select(ApiKey.name)).first() is not None:
        return None
    return LOCKED if were_on() else None


def turn_off(keys):
    """Keys off on purpose, once none is left: one trusted user again, served locally only."""
    if keys.configured or db.session.execute(db.select(ApiKey.name)).first() is not None:
        raise KeyRefused("keys exist: revoke them (and unset API_KEYS/ADMIN_API_KEYS) first")
    db.session.execute(SETTINGS.delete().where(SETTINGS.c.name == KEYS_ON))
    db.session.commit()


def init_app(app):
    app.extensions["keys"] = Keys(app.config["API_KEYS"], app.config["ADMIN_API_KEYS"])
