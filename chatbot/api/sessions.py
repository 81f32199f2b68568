"""Session administration over HTTP: /api/sessions... . The views only read the request and
shape the response; the logic is chatbot/store/admin.py, shared with `flask sessions`."""
import json

from flask import Blueprint, Response, current_app, jsonify, request

from chatbot.flow.flow import index_document
from chatbot.ops import offload
from chatbot.api import auth, embeddings, quota, validate
from chatbot.api.errors import error_response
from chatbot.store import admin, branches, documents as stored, session_owner, transfer

bp = Blueprint("sessions", __name__, url_prefix="/api/sessions")


@bp.errorhandler(admin.AdminError)
def _refused(exc):
    return error_response(exc.status, str(exc))


def _mine(sid):
    """The session's id if the asking key may see it; else 404, as for an unknown id."""
    return admin.get(sid, visible_to=auth.restriction()).id


@bp.before_request
def _body_cap():
    """Session routes carry no images: a body cap of their own, below MAX_CONTENT_LENGTH (a
    document's: MAX_DOCUMENT_BYTES and its form around it)."""
    config = current_app.config
    cap = (config["MAX_DOCUMENT_BYTES"] + FORM_SLACK if request.path.endswith("/documents")
           else config["MAX_SESSION_BODY_BYTES"])
    cap = min(cap, config["MAX_CONTENT_LENGTH"] or cap)
    if (request.content_length or 0) > cap:
        raise admin.TooLarge(f"request body too large: at most {cap} bytes")
    request.max_content_length = cap  # a body without a length is cut there (413)


FORM_SLACK = 64 * 1024  # a multipart form's bytes around the document


def _body():
    # Read on the loop (the socket yields), parsed off it when big. Any JSON, as get_json's
    # force: curl -d sends form encoding by default, and Ollama clients omit the header too.
    raw = offload.body()
    body = offload.run(_parsed, raw) if len(raw) > validate.BIG_BODY else _parsed(raw)
    if not isinstance(body, dict):
        raise admin.AdminError("request body must be a JSON object")
    return body


def _parsed(raw):
    limit = current_app.config["MAX_JSON_VALUES"]
    if validate.json_values(raw, limit) > limit:
        raise admin.TooLarge(f"request body too large: more than {limit} JSON values "
                             "(MAX_JSON_VALUES)")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


def _json(fn, *args, status=200):
    """fn(*args) as a JSON response, made and serialized off the web's loop."""
    body = offload.run(lambda: current_app.json.dumps(fn(*args)))
    return Response(body + "\n", status=status, mimetype="application/json")


@bp.get("")
def index():
    args = request.args
    return jsonify(admin.list_sessions(args.get("page", 1), args.get("per_page", 20),
                                       archived=args.get("archived"),
                                       model=args.get("model") or None,
                                       visible_to=auth.restriction(),
                                       search=args.get("q") or None))


@bp.get("/<sid>")
def show(sid):
    args = request.args
    return jsonify(admin.show(_mine(sid), args.get("page", 1), args.get("per_page", 20),
                              model=args.get("model") or None))


@bp.post("/<sid>/branch")
def switch_branch(sid):
    """{"message_id": N}: the path through that message becomes the thread's active one."""
    sid, body = _mine(sid), _body()
    message_id = body.get("message_id")
    if not isinstance(message_id, int) or isinstance(message_id, bool) or \
            not 0 < message_id < 2 ** 31:
        raise admin.AdminError("message_id must be a message's id (an integer)")
    if branches.switch(sid, message_id) is None:
        raise admin.NotFound(f"message {message_id} not found in session '{sid}'")
    args = request.args
    return jsonify(admin.show(sid, args.get("page", 1), args.get("per_page", 20)))


@bp.patch("/<sid>")
def update(sid):
    body = _body()
    unknown = sorted(set(body) - {"title"})
    if unknown:
        raise admin.AdminError(f"unknown field {unknown[0]!r}: only title can be changed")
    if "title" not in body:
        raise admin.AdminError("title is required")
    return jsonify(admin.rename(_mine(sid), body["title"]))


@bp.delete("/<sid>")
def delete(sid):
    sid = _mine(sid)
    deleted = offload.run(admin.delete, sid)
    quota.storage().forget(auth.key_name())  # room again for its key at once
    return jsonify(id=sid, deleted=True, messages=deleted)


@bp.post("/<sid>/archive")
def archive(sid):
    return jsonify(admin.set_archived(_mine(sid), True))


@bp.post("/<sid>/restore")
def restore(sid):
    return jsonify(admin.set_archived(_mine(sid), False))


@bp.get("/<sid>/export")
def export(sid):
    fmt, sid = request.args.get("format", "json"), _mine(sid)
    if fmt == "json":
        return _json(transfer.export, sid)
    if fmt in ("markdown", "md"):
        return Response(offload.run(transfer.export_markdown, sid), mimetype="text/markdown")
    raise admin.AdminError(f"unknown format {fmt!r}: use json or markdown")


@bp.post("/import")
def import_():
    owner = auth.key_name()
    body = _body()
    quota.storage().check(owner, request.content_length or 0)
    made = _json(transfer.import_session, body, None, owner, status=201)
    quota.storage().forget(owner)
    return made


@bp.post("/<sid>/documents")
def add_document(sid):
    """Multipart (a `file`, optional `name`) or JSON {name, content}. A session that does not
    exist yet is made, owned by the asking key."""
    sid = admin.session_id(sid)
    exists, owner = session_owner(sid)
    if exists and not auth.owns(owner):
        raise admin.NotFound(f"session '{sid}' not found")
    offload.body()  # read on the loop; a form is parsed from it off the loop
    if offload.run(lambda: request.files):
        upload = request.files.get("file") or next(iter(request.files.values()))
        name = request.form.get("name") or upload.filename
        data, declared = upload.read(), upload.mimetype
    else:
        body = _body()
        name, data = body.get("name"), body.get("content")
        if not isinstance(data, str):
            raise admin.AdminError("content is required: the document's text (or upload a "
                                   "file as multipart form data)")
        if name is not None and not isinstance(name, str):
            raise admin.AdminError("name must be a string")
        declared = body.get("content_type") or "text/plain"
        if not isinstance(declared, str):
            raise admin.AdminError("content_type must be a string")
        # Lone surrogates become U+FFFD, as for a chat message (they cannot be stored).
        data = validate.SURROGATE.sub("\ufffd", data).encode()
        name = validate.SURROGATE.sub("\ufffd", name or "document.txt")
    owner = auth.key_name()
    quota.storage().check(owner, len(data))
    # Its embeddings are its asker's jobs in the fair line, cancelled if the client leaves.
    model = current_app.config["EMBED_MODEL"]
    post = lambda path, body: embeddings.embed(model, path, body)  # noqa: E731
    made = index_document(sid, name, data, declared, owner=owner, post=post)
    quota.storage().forget(owner)
    return jsonify(made), 201


@bp.get("/<sid>/documents")
def list_documents(sid):
    return jsonify(documents=stored.list_documents(_mine(sid)))


@bp.delete("/<sid>/documents/<int:doc_id>")
def remove_document(sid, doc_id):
    sid = _mine(sid)
    # An id past the column's range names no document (the database would refuse the query).
    gone = stored.remove_document(sid, doc_id) if doc_id < 2 ** 31 else None
    if gone is None:
        raise admin.NotFound(f"document {doc_id} not found")
    return jsonify({**gone, "deleted": True})
