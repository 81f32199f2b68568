"""What a server checks once, before it serves (the web's gunicorn workers, `chatbot up`): the
database is at the newest migration, a key exists when REQUIRE_KEYS=true, and a server without
keys listens on loopback only unless ALLOW_OPEN=true. It also notes in the database that keys
are on when API_KEYS/ADMIN_API_KEYS are set, so that a later start without them fails closed
(chatbot.store.keys)."""
from chatbot.store import keys as api_keys
from chatbot import store
from chatbot.api import local


def refusal(app, binds):
    """Why `app`, listening on `binds` ("host:port", ...), must not start: a message saying what
    to do; None when it may."""
    with app.app_context():
        problem = store.unmigrated(app)
        if problem:
            return problem
        keys = app.extensions["keys"]
        if keys.configured:
            api_keys.remember_on()
        if app.config["REQUIRE_KEYS"] and not keys.exist():
            return ("REQUIRE_KEYS=true and no key exists: set API_KEYS/ADMIN_API_KEYS, or make "
                    "one with `flask --app wsgi keys create NAME --admin`")
        enabled = keys.enabled()  # logs it when keys were on and none is left
        open_binds = [bind for bind in binds if not local.loopback_bind(bind)]
        if open_binds and not enabled and not app.config["ALLOW_OPEN"]:
            return (f"{open_binds[0]} is not a loopback address and keys are off: anyone who "
                    "reaches it would be served. Set API_KEYS (or make a key with "
                    "`flask --app wsgi keys create NAME --admin`), bind 127.0.0.1, or set "
                    "ALLOW_OPEN=true to serve it without keys")
    return None
