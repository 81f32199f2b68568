"""`flask --app wsgi sessions ...`: session administration from a terminal. Commands are thin:
the logic is chatbot/store/admin.py and chatbot/store/lifecycle.py, shared with the REST API.
Every command takes --json; tables and progress bars are for people (bars go to stderr, so
stdout stays parseable).

Its size is earned: every data command (sessions, docs, keys) in one place, each a few lines over
chatbot/store; split by group, one CLI story would be scattered over three modules."""
import json
import os
import sys
from datetime import timedelta

import click
from flask import current_app
from flask.cli import AppGroup

from chatbot import store
from chatbot.flow.flow import index_document
from chatbot.store import keys as api_keys, lifecycle, usage
from chatbot.store import admin, documents as stored, transfer
from chatbot.upstream import UpstreamError


class SessionsGroup(AppGroup):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (admin.AdminError, api_keys.KeyRefused, UpstreamError) as exc:  # one line, not a traceback
            raise click.ClickException(str(exc))


sessions = SessionsGroup(
    "sessions", help="List, inspect, export, import, archive and purge sessions.")
keys = SessionsGroup("keys", help="Create, list and revoke API keys.")
docs = SessionsGroup("docs", help="Add, list and remove a session's documents (RAG).")
as_json = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")


class MigrateCommand(click.Command):
    """`flask db ...`: Flask-Migrate's command group, loaded only when it runs
    (store.migrations): it takes over from the moment its arguments are parsed."""

    def __init__(self, app):
        super().__init__("db", help="Perform database migrations (Flask-Migrate).")
        self.app = app

    def make_context(self, info_name, args, parent=None, **extra):
        return store.migrations(self.app).make_context(info_name, args, parent=parent, **extra)


def init_app(app):
    app.cli.add_command(MigrateCommand(app))
    app.cli.add_command(sessions)
    app.cli.add_command(keys)
    app.cli.add_command(docs)


@keys.command("create")
@click.argument("name")
@click.option("--admin", is_flag=True, help="An admin key: sees every session, manages models.")
@as_json
def create_key(name, admin, as_json):
    """Make a key and print it (only once: it is stored hashed)."""
    key = api_keys.create(name, admin)
    out({"name": name, "admin": admin, "key": key}, key, as_json)


@keys.command("list")
@as_json
def list_keys(as_json):
    """Key names (never the keys), and the bytes each one's sessions store."""
    stored = usage.bytes_used()
    data = [{**k, "stored_bytes": stored.get(k["name"], 0)} for k in api_keys.listing()]
    rows = [(k["name"], "admin" if k["admin"] else "", when(k["created_at"]),
             str(k["stored_bytes"])) for k in data]
    out(data, table(("NAME", "SCOPE", "CREATED", "STORED"), rows) + _locked(), as_json)


@keys.command("revoke")
@click.argument("name")
@as_json
def revoke_key(name, as_json):
    """Remove a key: requests with it are refused from then on (within a few seconds). The
    last one leaves keys on: the server refuses everyone until a key exists again."""
    api_keys.revoke(name)
    locked = _locked()
    out({"revoked": name, "locked": bool(locked)}, f"revoked {name}" + locked, as_json)


@keys.command("off")
@as_json
def keys_off(as_json):
    """Turn keys off on purpose once none is left: one trusted user again, served to this
    machine only (ALLOW_OPEN=true to open it)."""
    api_keys.turn_off(current_app.extensions["keys"])
    out({"keys": "off"}, "keys are off: the server answers this machine and its pages only, "
                         "without a key", as_json)


def _locked():
    """A line saying the server refuses everyone, when it does (keys were on, none is left)."""
    locked = api_keys.locked(current_app.extensions["keys"])
    return f"\nwarning: {locked}" if locked else ""


@docs.command("add")
@click.argument("session_id")
@click.argument("files", nargs=-1, required=True, type=click.File("rb"))
@click.option("--name", help="The document's name (one file only) [default: the file's].")
@as_json
def add_docs(session_id, files, name, as_json):
    """Chunk, embed (EMBED_MODEL) and store Markdown, text or PDF files in a session (made if
    it does not exist)."""
    if name and len(files) > 1:
        raise click.UsageError("--name names one file")
    sid = admin.session_id(session_id)
    done = [index_document(sid, name or os.path.basename(f.name), f.read(), None) for f in files]
    out(done, "\n".join(f"added {d['id']} {d['name']} ({d['chunks']} chunks)" for d in done),
        as_json)


@docs.command("list")
@click.argument("session_id")
@as_json
def list_docs(session_id, as_json):
    """A session's documents."""
    data = stored.list_documents(admin.get(session_id).id)
    rows = [(d["id"], d["name"], d["content_type"], d["bytes"], d["chunks"], d["embed_model"],
             when(d["created_at"])) for d in data]
    out(data, table(("ID", "NAME", "TYPE", "BYTES", "CHUNKS", "MODEL", "ADDED"), rows), as_json)


@docs.command("remove")
@click.argument("session_id")
@click.argument("document_ids", nargs=-1, required=True, type=int)
@as_json
def remove_docs(session_id, document_ids, as_json):
    """Remove documents (and their chunks) from a session."""
    sid = admin.get(session_id).id
    done = []
    for doc_id in document_ids:
        gone = stored.remove_document(sid, doc_id)
        if gone is None:
            raise admin.NotFound(f"document {doc_id} not found")
        done.append(gone)
    out(done, "\n".join(f"removed {d['id']} {d['name']}" for d in done), as_json)


def table(headers, rows):
    """Plain aligned columns, a dashed rule under the headers."""
    cells = [list(headers)] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def out(data, text, json_wanted):
    click.echo(json.dumps(data, indent=2, ensure_ascii=False) if json_wanted else text)


def short(text, width):
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[:width - 1] + "…"


def when(stamp):
    return (stamp or "")[:19].replace("T", " ")


def bar(work, label):
    """A progress bar over a number of steps (advanced with .update) or over items."""
    if isinstance(work, int):
        return click.progressbar(length=work, label=label, file=sys.stderr)
    return click.progressbar(work, label=label, file=sys.stderr)


@sessions.command("list")
@click.option("--page", default=1, show_default=True)
@click.option("--per-page", default=20, show_default=True)
@click.option("--archived/--active", default=None, help="Only archived / only active sessions.")
@click.option("--model", help="Only sessions with messages of this model.")
@as_json
def list_(page, per_page, archived, model, as_json):
    """Sessions, most recently used first."""
    data = admin.list_sessions(page, per_page, archived=archived, model=model)
    rows = [(s["id"], short(s["title"], 30), s["message_count"], ",".join(s["models"]),
             when(s["last_access"]), "yes" if s["archived"] else "")
            for s in data["sessions"]]
    text = table(("ID", "TITLE", "MESSAGES", "MODELS", "LAST ACCESS", "ARCHIVED"), rows)
    out(data, f"{text}\npage {data['page']}, {data['total']} session(s) in all", as_json)


@sessions.command()
@click.argument("text")
@click.option("--page", default=1, show_default=True)
@click.option("--per-page", default=20, show_default=True)
@as_json
def search(text, page, per_page, as_json):
    """Sessions whose title contains TEXT or whose messages say its words."""
    data = admin.list_sessions(page, per_page, search=text)
    rows = [(s["id"], short(s["title"], 30), short((s.get("match") or {}).get("snippet"), 60))
            for s in data["sessions"]]
    text = table(("ID", "TITLE", "MATCH"), rows)
    out(data, f"{text}\npage {data['page']}, {data['total']} session(s) in all", as_json)


@sessions.command()
@click.argument("session_id")
@click.option("--model", help="Only this model's thread.")
@click.option("--page", default=1, show_default=True)
@click.option("--per-page", default=50, show_default=True)
@as_json
def show(session_id, model, page, per_page, as_json):
    """One session and its messages."""
    data = admin.show(session_id, page, per_page, model=model)
    head = (f"session   {data['id']}\ntitle     {data['title'] or ''}\n"
            f"created   {when(data['created_at'])}\nused      {when(data['last_access'])}\n"
            f"archived  {'yes' if data['archived'] else 'no'}\n"
            f"messages  {data['message_count']} ({', '.join(data['models'])})\n")
    rows = [(m["id"], m["model"], m["role"], m["status"], m["tokens"], short(m["content"], 60))
            for m in data["messages"]]
    text = head + "\n" + table(("ID", "MODEL", "ROLE", "STATUS", "TOKENS", "CONTENT"), rows)
    out(data, f"{text}\npage {data['page']}, {data['total']} message(s)", as_json)


@sessions.command()
@click.argument("session_id")
@click.option("--format", "fmt", type=click.Choice(["json", "markdown"]), default="json",
              show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True),
              help="Write to this file instead of stdout.")
@as_json
def export(session_id, fmt, output, as_json):
    """Export a session (JSON export version 1, or a Markdown transcript).

    With --json: without -o the JSON export; with -o a JSON summary of what was written."""
    fmt = "json" if as_json and not output else fmt
    doc = (json.dumps(transfer.export(session_id), indent=2, ensure_ascii=False) if fmt == "json"
           else transfer.export_markdown(session_id))
    if not output:
        return click.echo(doc)
    with open(output, "w", encoding="utf-8") as f:
        f.write(doc + "\n")
    out({"id": admin.session_id(session_id), "format": fmt, "path": output},
        f"wrote {output}", as_json)


@sessions.command("import")
@click.argument("files", nargs=-1, required=True, type=click.File("r", encoding="utf-8"))
@as_json
def import_(files, as_json):
    """Import session exports (files, or - for stdin); each becomes a session."""
    docs = []
    for f in files:
        try:
            docs.append(json.load(f))
        except ValueError as exc:
            raise click.ClickException(f"{f.name}: not JSON ({exc})")
    total = sum(len(t) for d in docs if isinstance(d, dict)
                for t in (d.get("threads") or {}).values() if isinstance(t, list))
    done = []
    with bar(total, "importing") as progress:
        for f, doc in zip(files, docs):
            try:
                done.append(transfer.import_session(doc, progress=progress.update))
            except admin.AdminError as exc:
                raise click.ClickException(f"{f.name}: {exc}")
    text = "\n".join(f"imported {d['id']} ({d['messages']} messages)" for d in done)
    out(done, text, as_json)


@sessions.command()
@click.argument("session_ids", nargs=-1, required=True)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@as_json
def delete(session_ids, yes, as_json):
    """Delete sessions and their messages."""
    sessions_ = [admin.get(sid).id for sid in session_ids]  # all known before any goes
    if not yes:
        click.confirm(f"Delete {len(sessions_)} session(s) and their messages?", abort=True,
                      err=True)
    done = [{"id": sid, "messages": admin.delete(sid)} for sid in sessions_]
    out(done, "\n".join(f"deleted {d['id']} ({d['messages']} messages)" for d in done), as_json)


@sessions.command()
@click.argument("session_ids", nargs=-1)
@click.option("--idle-hours", type=float,
              help="Archive sessions idle this long [default: SESSION_TIMEOUT_HOURS].")
@as_json
def archive(session_ids, idle_hours, as_json):
    """Archive the given sessions, or every session idle longer than --idle-hours."""
    if session_ids and idle_hours is not None:
        raise click.UsageError("give session ids or --idle-hours, not both")
    if session_ids:
        with bar(session_ids, "archiving") as progress:
            for sid in progress:
                admin.set_archived(sid, True)
        count = len(session_ids)
    else:
        ids, cutoff = lifecycle.find_idle(idle_hours)
        with bar(len(ids), "archiving") as progress:
            count = lifecycle.archive(ids, cutoff, progress.update)
    out({"archived": count}, f"archived {count} session(s)", as_json)


@sessions.command()
@click.argument("session_ids", nargs=-1, required=True)
@as_json
def restore(session_ids, as_json):
    """Bring archived sessions back."""
    done = [admin.set_archived(sid, False)["id"] for sid in session_ids]
    out({"restored": len(done)}, f"restored {len(done)} session(s)", as_json)


@sessions.command()
@click.option("--older-than-days", type=click.FloatRange(min=0), required=True,
              help="Delete archived sessions last used more than this many days ago.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@as_json
def purge(older_than_days, yes, as_json):
    """Delete archived sessions (and their messages) older than an age. Active sessions are
    never purged, however old."""
    ids, cutoff = lifecycle.find_purgeable(timedelta(days=older_than_days))
    if ids and not yes:
        click.confirm(f"Delete {len(ids)} archived session(s) last used before "
                      f"{cutoff:%Y-%m-%d %H:%M} UTC, with their messages?", abort=True, err=True)
    with bar(len(ids), "purging") as progress:
        count = lifecycle.delete_archived(ids, cutoff, progress.update)
    out({"purged": count}, f"purged {count} session(s)", as_json)


@sessions.command()
@as_json
def stats(as_json):
    """Totals: sessions, archived, messages, tokens, and per model."""
    data = admin.stats()
    rows = [(model, v["sessions"], v["messages"], v["tokens"])
            for model, v in data["models"].items()]
    text = (f"sessions  {data['sessions']} ({data['archived']} archived)\n"
            f"messages  {data['messages']}\ntokens    {data['tokens']}\n\n"
            + table(("MODEL", "SESSIONS", "MESSAGES", "TOKENS"), rows))
    out(data, text, as_json)
