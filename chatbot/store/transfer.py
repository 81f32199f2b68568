"""Sessions in and out as documents: the versioned JSON export, a Markdown transcript, and
import (checked whole before anything is written, then written in one transaction). Shared by
the REST views and the CLI; the REST views run them off the web's loop (chatbot.ops.offload)."""
import uuid

from flask import current_app
from sqlalchemy.exc import IntegrityError

from chatbot.tokens import count_tokens
from chatbot.store.admin import (EXPORT_VERSION, EXTRA_FIELDS, MAX_TITLE, ROLES, STATUSES,
                                 AdminError, Conflict, TooLarge, get, iso, message_dict,
                                 parse_time, session_id, summaries)
from chatbot.store.sessions import chain
from chatbot.store.models import ChatSession, Message, db, utcnow

IMPORT_BATCH = 1000  # rows an INSERT (executemany)


def export(sid):
    """The versioned export: {version, id, title, created_at, meta, threads: {model: [...]},
    summaries: [...]} (summaries are shown, not imported: the next turn that needs one makes
    it again). A thread with branches carries its tree: each ok message its `parent` (the
    index of its parent in the thread's list; null for a first message), and a message off
    the active path `"active": false`."""
    session = get(sid)
    threads, places = {}, {}
    rows = db.session.execute(
        db.select(Message).where(Message.session_id == session.id).order_by(Message.id)).scalars()
    rows = list(rows)
    branched = {row.model for row in rows if row.seq is None and row.pos is not None}
    for row in rows:
        message = message_dict(row)
        del message["id"], message["model"]  # the database's row id and the thread's key
        listed = threads.setdefault(row.model, [])
        if row.model in branched and row.pos is not None:
            at = places.setdefault(row.model, {})
            message["parent"] = at.get(row.prev_chain)
            if row.seq is None:
                message["active"] = False
            at.setdefault(row.chain, len(listed))
        listed.append(message)
    return {"version": EXPORT_VERSION, "id": session.id, "title": session.title,
            "created_at": iso(session.created_at), "meta": session.meta or {},
            "threads": threads, "summaries": summaries(session.id)}


def export_markdown(sid):
    doc = export(sid)
    lines = [f"# {doc['title'] or 'Session ' + doc['id']}", "",
             f"- session: `{doc['id']}`", f"- created: {doc['created_at']}", ""]
    summarized = {s["model"]: s for s in doc["summaries"]}
    for model, messages in doc["threads"].items():
        lines += [f"## {model}", ""]
        if model in summarized:
            s = summarized[model]
            lines += [f"> _summary of messages {s['first_seq']}-{s['last_seq']}, sent in their "
                      f"place:_ " + s["content"].replace("\n", "\n> "), ""]
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


def import_session(doc, progress=None, owner=None):
    """Create a session from an export (its own id if given and unused), owned by `owner` (a
    key's name). Everything is checked before anything is written, and then written in one
    transaction (IMPORT_BATCH rows an INSERT): a refused or failed import leaves nothing."""
    session, runs = _checked_export(doc, current_app.config["MAX_IMPORT_MESSAGES"])
    session.owner = owner
    if db.session.get(ChatSession, session.id) is not None:
        raise Conflict(f"session '{session.id}' already exists")
    rows = _rows(session.id, runs)
    try:
        db.session.add(session)
        db.session.flush()
    except IntegrityError:  # created by someone else since the check above
        db.session.rollback()
        raise Conflict(f"session '{session.id}' already exists")
    try:
        for start in range(0, len(rows), IMPORT_BATCH):
            batch = rows[start:start + IMPORT_BATCH]
            db.session.execute(Message.__table__.insert(), batch)
            if progress:
                progress(len(batch))
        db.session.commit()
    except BaseException:
        db.session.rollback()
        raise
    return {"id": session.id, "messages": len(rows)}


def _rows(sid, runs):
    """The messages' rows as append_messages writes them, for a new session: ok messages
    numbered and chained in their thread (on their path, for an export with branches), the
    others kept aside; a request's rows numbered on across runs (its reply may differ in
    status)."""
    rows, tails, parts, now = [], {}, {}, utcnow()
    placed, taken = {}, set()  # (model, index) -> (pos, chain, active); active (model, pos)
    for model, status, request_id, messages in runs:
        for message in messages:
            seq, last = tails.get(model, (0, ""))
            parent, pos = last, None
            if status == "ok" and "_parent" in message:  # a tree: the message's own path
                pos, parent, active = _place(placed, model, message)
                last = chain(parent, message["role"], message.get("content"))
                placed[model, message["_index"]] = pos, last, active
                seq = pos if active else None
                if active and (model, pos) in taken:
                    raise AdminError(f"threads[{model!r}][{message['_index']}]: two active "
                                     "messages at one place")
                taken.add((model, pos)) if active else None
            elif status == "ok":
                seq, last = seq + 1, chain(last, message["role"], message.get("content"))
                tails[model], pos = (seq, last), seq
            part = parts.get(request_id, 0)
            parts[request_id] = part + 1
            extra = {k: message[k] for k in EXTRA_FIELDS if message.get(k)}
            rows.append(dict(
                session_id=sid, model=model, role=message["role"],
                content=message.get("content") or "", extra=extra or None,
                tokens=message.get("tokens", 0), status=status, request_id=request_id,
                started_at=None, seq=seq if status == "ok" else None,
                chain=last if status == "ok" else None, part=part, created_at=now,
                pos=pos, prev_chain=parent if status == "ok" else None))
    return rows


def _place(placed, model, message):
    """(pos, parent's chain, active) of a tree export's ok message, its parent placed before it."""
    parent, active, where = message["_parent"], message["_active"], \
        f"threads[{model!r}][{message['_index']}]"
    if parent is None:
        return 1, "", active
    if (model, parent) not in placed:
        raise AdminError(f"{where}.parent must be the index of an ok message before it")
    pos, last, parent_active = placed[model, parent]
    if active and not parent_active:
        raise AdminError(f"{where}: an active message's parent must be active")
    return pos + 1, last, active


def _checked_export(doc, max_messages):
    if not isinstance(doc, dict):
        raise AdminError("body must be a JSON object: a session export")
    threads = doc.get("threads", {})
    count = sum(len(m) for m in threads.values() if isinstance(m, list)) \
        if isinstance(threads, dict) else 0
    if count > max_messages:
        raise TooLarge(f"export too large: {count} messages, at most {max_messages} "
                       "(MAX_IMPORT_MESSAGES)")
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
            message, status = _checked_message(f"threads[{model!r}][{i}]", raw, i)
            # Fresh request ids (one per original request) so that importing the same export
            # twice never makes two sessions share a request id, while a turn stays grouped.
            request_id = fresh_ids.setdefault((model, raw.get("request_id") or i),
                                              str(uuid.uuid4()))
            if runs and runs[-1][:3] == (model, status, request_id):
                runs[-1][3].append(message)
            else:
                runs.append((model, status, request_id, [message]))
    return session, runs


def _checked_message(where, raw, index):
    if not isinstance(raw, dict):
        raise AdminError(f"{where} must be an object")
    if raw.get("role") not in ROLES:
        raise AdminError(f"{where}.role {raw.get('role')!r} must be one of {', '.join(ROLES)}")
    if not isinstance(raw.get("content") or "", str):
        raise AdminError(f"{where}.content must be a string")
    if raw.get("request_id") is not None and not isinstance(raw["request_id"], str):
        raise AdminError(f"{where}.request_id must be a string")
    status = raw.get("status", "ok")
    if not isinstance(status, str) or status not in STATUSES:
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
    if "parent" in raw and status == "ok":  # an export with branches
        parent, active = raw["parent"], raw.get("active", True)
        if parent is not None and (not isinstance(parent, int) or isinstance(parent, bool)
                                   or not 0 <= parent < index):
            raise AdminError(f"{where}.parent must be null or the index of a message before it")
        if not isinstance(active, bool):
            raise AdminError(f"{where}.active must be a boolean")
        message.update(_parent=parent, _active=active, _index=index)
    return message, status
