"""Session administration shared by the REST views (chatbot/api/sessions.py) and the CLI
(chatbot/cli.py): list, read, rename, delete, archive, export/import, statistics.

Messages are only ever added through `append_messages`, which keeps the per-thread
bookkeeping; this module reads rows directly and never inserts them.
"""
import uuid
from datetime import datetime, timezone

from sqlalchemy.exc import IntegrityError

from chatbot import store
from chatbot.flow.context import count_tokens
from chatbot.store.models import ChatSession, Message, db, utcnow

EXPORT_VERSION = 1
EXTRA_FIELDS = {"images": list, "tool_calls": list, "thinking": str, "tool_name": str}
ROLES = ("system", "user", "assistant", "tool")
STATUSES = ("ok", "cancelled", "failed")
MAX_PER_PAGE = 100
MAX_TITLE = 200


class AdminError(Exception):
    """A refused request; `status` is what the REST layer answers with (the CLI prints it)."""
    status = 400


class NotFound(AdminError):
    status = 404


class Conflict(AdminError):
    status = 409


def iso(value):
    """Stored times are naive UTC; clients get RFC 3339 with a Z."""
    return value.replace(tzinfo=timezone.utc).isoformat().replace("+00:00", "Z") if value else None


def parse_time(value, what="time"):
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise AdminError(f"{what}: {value!r} is not an ISO 8601 time")
    return parsed.astimezone(timezone.utc).replace(tzinfo=None) if parsed.tzinfo else parsed


def session_id(value):
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise AdminError(f"invalid session id {value!r}: must be a UUID")


def get(sid):
    session = db.session.get(ChatSession, session_id(sid))
    if session is None:
        raise NotFound(f"session '{sid}' not found")
    return session


def paging(page=1, per_page=20):
    """Validated page numbers; per_page above the maximum is capped rather than refused."""
    try:
        page, per_page = int(page), int(per_page)
    except (TypeError, ValueError):
        raise AdminError("page and per_page must be integers")
    if page < 1 or per_page < 1:
        raise AdminError("page and per_page must be at least 1")
    return page, min(per_page, MAX_PER_PAGE)


def flag(value):
    """`?archived=true|false` (absent: None, meaning both)."""
    if value is None or isinstance(value, bool):
        return value
    if str(value).lower() not in ("true", "false"):
        raise AdminError(f"archived must be true or false, not {value!r}")
    return str(value).lower() == "true"


def _page(query, page, per_page):
    counted = db.select(db.func.count()).select_from(query.subquery())
    total = db.session.execute(counted).scalar_one()
    rows = db.session.execute(query.limit(per_page).offset((page - 1) * per_page)).scalars().all()
    return rows, {"page": page, "per_page": per_page, "total": total}


def _thread_counts(ids):
    """{session id: {model: message count}} for a page of sessions, in one grouped query."""
    counts = {}
    if ids:
        rows = db.session.execute(
            db.select(Message.session_id, Message.model, db.func.count())
            .where(Message.session_id.in_(ids)).group_by(Message.session_id, Message.model))
        for sid, model, n in rows:
            counts.setdefault(sid, {})[model] = n
    return counts


def summary(session, threads=None):
    if threads is None:
        threads = _thread_counts([session.id]).get(session.id, {})
    return {"id": session.id, "title": session.title, "created_at": iso(session.created_at),
            "last_access": iso(session.last_access), "archived": session.archived,
            "message_count": sum(threads.values()), "models": sorted(threads),
            "meta": session.meta or {}}


def list_sessions(page=1, per_page=20, archived=None, model=None):
    """Newest use first; `model` keeps sessions having at least one message of that model."""
    (page, per_page), archived = paging(page, per_page), flag(archived)
    query = db.select(ChatSession)
    if archived is not None:
        query = query.where(ChatSession.archived.is_(archived))
    if model:
        query = query.where(db.select(Message.id).where(
            Message.session_id == ChatSession.id, Message.model == model).exists())
    query = query.order_by(ChatSession.last_access.desc(), ChatSession.id)
    rows, info = _page(query, page, per_page)
    counts = _thread_counts([row.id for row in rows])
    return {"sessions": [summary(row, counts.get(row.id, {})) for row in rows], **info}


def message_dict(row):
    return {"id": row.id, "model": row.model, "role": row.role, "content": row.content,
            "tokens": row.tokens, "status": row.status, "request_id": row.request_id,
            "created_at": iso(row.created_at), **(row.extra or {})}


def show(sid, page=1, per_page=20, model=None):
    session, (page, per_page) = get(sid), paging(page, per_page)
    query = db.select(Message).where(Message.session_id == session.id)
    if model:
        query = query.where(Message.model == model)
    rows, info = _page(query.order_by(Message.id), page, per_page)
    return {**summary(session), "messages": [message_dict(row) for row in rows], **info}


def rename(sid, title):
    if title is not None and not isinstance(title, str):
        raise AdminError("title must be a string")
    if title is not None and len(title) > MAX_TITLE:
        raise AdminError(f"title must be at most {MAX_TITLE} characters")
    session = get(sid)
    session.title = (title or "").strip() or None
    db.session.commit()
    return summary(session)


def set_archived(sid, archived):
    """Archive or restore one session by hand (restoring does not count as using it)."""
    session = get(sid)
    session.archived = archived
    db.session.commit()
    return summary(session)


def delete(sid):
    """Delete a session and its messages; returns how many messages went with it."""
    session = get(sid)
    gone = db.session.execute(db.delete(Message).where(Message.session_id == session.id)).rowcount
    db.session.delete(session)
    db.session.commit()
    return gone


def export(sid):
    """The versioned export: {version, id, title, created_at, meta, threads: {model: [...]}}."""
    session = get(sid)
    threads = {}
    rows = db.session.execute(
        db.select(Message).where(Message.session_id == session.id).order_by(Message.id)).scalars()
    for row in rows:
        message = message_dict(row)
        del message["id"], message["model"]  # the database's row id and the thread's key
        threads.setdefault(row.model, []).append(message)
    return {"version": EXPORT_VERSION, "id": session.id, "title": session.title,
            "created_at": iso(session.created_at), "meta": session.meta or {},
            "threads": threads}


def export_markdown(sid):
    doc = export(sid)
    lines = [f"# {doc['title'] or 'Session ' + doc['id']}", "",
             f"- session: `{doc['id']}`", f"- created: {doc['created_at']}", ""]
    for model, messages in doc["threads"].items():
        lines += [f"## {model}", ""]
        for message in messages:
            lines += [_markdown_message(message), ""]
    return "\n".join(lines)


def _markdown_message(m):
    head = f"**{m['role']}**"
    if m.get("tool_name"):
        head += f" ({m['tool_name']})"
    if m["status"] != "ok":
        head += f" _[{m['status']}]_"
    lines = [f"{head}: {m['content']}"]
    if m.get("thinking"):
        lines += ["> " + line for line in f"thinking: {m['thinking']}".splitlines()]
    for call in m.get("tool_calls") or []:
        function = call.get("function", {}) if isinstance(call, dict) else {}
        lines.append(f"- tool call: `{function.get('name', '?')}({function.get('arguments', '')})`")
    if m.get("images"):
        lines.append(f"_[{len(m['images'])} image(s)]_")
    return "\n".join(lines)


def import_session(doc, progress=None):
    """Create a session from an export (its own id if given and unused). Everything is checked
    before anything is written, so a refused import leaves nothing behind."""
    session, runs = _checked_export(doc)
    if db.session.get(ChatSession, session.id) is not None:
        raise Conflict(f"session '{session.id}' already exists")
    db.session.add(session)
    try:
        db.session.commit()
    except IntegrityError:  # created by someone else since the check above
        db.session.rollback()
        raise Conflict(f"session '{session.id}' already exists")
    total = 0
    for model, status, request_id, messages in runs:
        store.append_messages(session.id, model, messages, request_id, status=status)
        total += len(messages)
        if progress:
            progress(len(messages))
    return {"id": session.id, "messages": total}


def _checked_export(doc):
    if not isinstance(doc, dict):
        raise AdminError("body must be a JSON object: a session export")
    if doc.get("version", EXPORT_VERSION) != EXPORT_VERSION:
        raise AdminError(f"unsupported export version {doc['version']!r} "
                         f"(expected {EXPORT_VERSION})")
    threads, title, meta = doc.get("threads", {}), doc.get("title"), doc.get("meta") or {}
    if not isinstance(threads, dict):
        raise AdminError("threads must be an object mapping model names to message lists")
    if title is not None and (not isinstance(title, str) or len(title) > MAX_TITLE):
        raise AdminError(f"title must be a string of at most {MAX_TITLE} characters")
    if not isinstance(meta, dict):
        raise AdminError("meta must be an object")
    now = utcnow()
    created = parse_time(doc["created_at"], "created_at") if doc.get("created_at") else now
    session = ChatSession(id=session_id(doc["id"]) if doc.get("id") else str(uuid.uuid4()),
                          title=title, meta=meta, created_at=created, last_access=now,
                          archived=False)
    runs, fresh_ids = [], {}
    for model, messages in threads.items():
        if not model or len(model) > 200 or not isinstance(messages, list):
            raise AdminError(f"threads[{model!r}] must be a list under a model name of 1-200 chars")
        for i, raw in enumerate(messages):
            message, status = _checked_message(f"threads[{model!r}][{i}]", raw)
            # Fresh request ids (one per original request) so that importing the same export
            # twice never makes two sessions share a request id, while a turn stays grouped.
            request_id = fresh_ids.setdefault((model, raw.get("request_id") or i),
                                              str(uuid.uuid4()))
            if runs and runs[-1][:3] == (model, status, request_id):
                runs[-1][3].append(message)
            else:
                runs.append((model, status, request_id, [message]))
    return session, runs


def _checked_message(where, raw):
    if not isinstance(raw, dict):
        raise AdminError(f"{where} must be an object")
    if raw.get("role") not in ROLES:
        raise AdminError(f"{where}.role {raw.get('role')!r} must be one of {', '.join(ROLES)}")
    if not isinstance(raw.get("content") or "", str):
        raise AdminError(f"{where}.content must be a string")
    status = raw.get("status", "ok")
    if status not in STATUSES:
        raise AdminError(f"{where}.status {status!r} must be one of {', '.join(STATUSES)}")
    message = {"role": raw["role"], "content": raw.get("content") or ""}
    for field, kind in EXTRA_FIELDS.items():
        if raw.get(field) is not None and not isinstance(raw[field], kind):
            raise AdminError(f"{where}.{field} must be a {kind.__name__}")
        if raw.get(field):
            message[field] = raw[field]
    if not all(isinstance(image, str) for image in message.get("images", [])):
        raise AdminError(f"{where}.images must be base64 strings")
    message["tokens"] = count_tokens(message)  # our tokenizer's count, whatever the file says
    return message, status


def stats():
    count = lambda *cols: db.select(*cols).select_from(Message)  # noqa: E731
    per_model = db.session.execute(
        count(Message.model, db.func.count(db.distinct(Message.session_id)), db.func.count(),
              db.func.coalesce(db.func.sum(Message.tokens), 0)).group_by(Message.model)
        .order_by(Message.model))
    archived = db.select(db.func.count(ChatSession.id)).where(ChatSession.archived.is_(True))
    return {
        "sessions": db.session.execute(db.select(db.func.count(ChatSession.id))).scalar_one(),
        "archived": db.session.execute(archived).scalar_one(),
        "messages": db.session.execute(count(db.func.count())).scalar_one(),
        "tokens": db.session.execute(count(db.func.coalesce(db.func.sum(Message.tokens), 0)))
        .scalar_one(),
        "models": {model: {"sessions": s, "messages": m, "tokens": t}
                   for model, s, m, t in per_model},
    }
