"""What was said, searched: message text through the database's own full-text index (SQLite
FTS5, PostgreSQL's to_tsvector; migrations/versions/0009_search.py). Each word of the query
must occur (any case, whole words); a session is found by its first matching message."""
import re

from chatbot.store.models import ChatSession, Message, db

WORD = re.compile(r"\w+", re.UNICODE)
MAX_HITS = 1000  # matching messages looked at per search


def matches(text, visible_to=None):
    """{session id: {"message_id", "snippet"}}: for each session with a message matching
    `text`, its first such message (oldest), with a few words around the match."""
    words = WORD.findall(text)[:16]
    if not words:
        return {}
    if db.engine.dialect.name == "sqlite":
        query = db.text(
            "SELECT m.session_id AS sid, m.id AS id, "
            "snippet(messages_fts, 0, '[', ']', '…', 12) AS snippet "
            "FROM messages_fts JOIN messages m ON m.id = messages_fts.rowid "
            "JOIN sessions s ON s.id = m.session_id "
            "WHERE messages_fts MATCH :q AND (:owner IS NULL OR s.owner = :owner) "
            "ORDER BY m.id LIMIT :limit")
        q = " ".join('"' + w.replace('"', "") + '"' for w in words)
    else:
        query = db.text(
            "SELECT m.session_id AS sid, m.id AS id, ts_headline('simple', m.content, "
            "plainto_tsquery('simple', :q), 'StartSel=[,StopSel=],MaxWords=12,MinWords=4') "
            "AS snippet FROM messages m JOIN sessions s ON s.id = m.session_id "
            "WHERE to_tsvector('simple', m.content) @@ plainto_tsquery('simple', :q) "
            "AND (CAST(:owner AS TEXT) IS NULL OR s.owner = :owner) ORDER BY m.id LIMIT :limit")
        q = " ".join(words)
    found = {}
    for row in db.session.execute(query, {"q": q, "owner": visible_to, "limit": MAX_HITS}):
        found.setdefault(row.sid, {"message_id": row.id, "snippet": row.snippet})
    return found


def where(text, visible_to=None):
    """(the sessions filter for `text`: its title contains it or a message matches; the
    matches, for their snippets)."""
    found = matches(text, visible_to)
    title = ChatSession.title.icontains(text, autoescape=True)
    return (db.or_(title, ChatSession.id.in_(list(found))) if found else title), found
