"""`flask sessions ...` through the app's own CLI runner, against the stack's database."""
import json
import os
import uuid
from datetime import timedelta

import ollama
import pytest

from chatbot.tokens import count_tokens
from chatbot.store import ChatSession, db
from chatbot.store.models import utcnow
from tests.conftest import MODEL, OPTIONS


@pytest.fixture(scope="module")
def cli(stack):
    runner = stack.app.test_cli_runner()

    def run(*args, code=0, input=None):
        result = runner.invoke(args=["sessions", *args], input=input)
        assert result.exit_code == code, result.output
        return result
    return run


def as_json(cli, *args):
    return json.loads(cli(*args, "--json").stdout)


@pytest.fixture(scope="module")
def chatted(stack):
    sid = str(uuid.uuid4())
    ollama.Client(host=stack.url, headers={"X-Session-ID": sid}).chat(
        MODEL, messages=[{"role": "user", "content": "What is 2+2?"}], stream=False,
        options={**OPTIONS, "num_predict": 4})
    return sid


def export_file(tmp_path, model, contents, **fields):
    path = tmp_path / f"{uuid.uuid4().hex}.json"
    messages = [{"role": role, "content": text} for role, text in contents]
    path.write_text(json.dumps({"version": 1, "threads": {model: messages}, **fields}))
    return path


def new_session(cli, tmp_path, model=None, n=1):
    model = model or "cli-" + uuid.uuid4().hex[:8]
    path = export_file(tmp_path, model, [("user", f"q{i}") for i in range(n)])
    return as_json(cli, "import", str(path))[0]["id"], model


def set_session(stack, sid, **values):
    with stack.app.app_context():
        db.session.execute(db.update(ChatSession).where(ChatSession.id == sid).values(**values))
        db.session.commit()


def exists(stack, sid):
    with stack.app.app_context():
        return db.session.get(ChatSession, sid) is not None


def test_list_table_and_json(cli, tmp_path):
    older, model = new_session(cli, tmp_path, n=2)
    newer, _ = new_session(cli, tmp_path, model)
    lines = cli("list", "--model", model).stdout.splitlines()
    assert lines[0].split() == ["ID", "TITLE", "MESSAGES", "MODELS", "LAST", "ACCESS", "ARCHIVED"]
    assert set(lines[1]) <= {"-", " "}
    assert [line.split()[0] for line in lines[2:4]] == [newer, older]
    assert lines[3][lines[0].index("MESSAGES")] == "2"  # columns line up
    assert lines[-1] == "page 1, 2 session(s) in all"
    data = as_json(cli, "list", "--model", model, "--per-page", "1", "--page", "2")
    assert data["total"] == 2 and [s["id"] for s in data["sessions"]] == [older]
    cli("archive", older)
    for which, expected in (("--archived", [older]), ("--active", [newer])):
        listed = as_json(cli, "list", "--model", model, which)["sessions"]
        assert [s["id"] for s in listed] == expected


def test_show_table_and_json(cli, chatted, stack):
    text = cli("show", chatted).stdout
    assert f"session   {chatted}" in text and "ROLE" in text and "What is 2+2?" in text
    data = as_json(cli, "show", chatted)
    assert [m["content"] for m in data["messages"]] == [r.content for r in stack.rows(chatted)]
    assert as_json(cli, "show", chatted, "--model", "other")["messages"] == []


def test_export_and_import_round_trip(cli, chatted, tmp_path):
    doc = json.loads(cli("export", chatted).stdout)
    assert doc["version"] == 1 and doc == as_json(cli, "export", chatted)
    assert "**user**: What is 2+2?" in cli("export", chatted, "--format", "markdown").stdout
    path = tmp_path / "copy.json"
    written = as_json(cli, "export", chatted, "-o", str(path))
    assert written == {"id": chatted, "format": "json", "path": str(path)}
    saved = json.loads(path.read_text())
    del saved["id"]  # else the import would collide with the original
    path.write_text(json.dumps(saved))
    made = as_json(cli, "import", str(path))
    assert len(made) == 1 and made[0]["messages"] == len(doc["threads"][MODEL])
    copy = as_json(cli, "export", made[0]["id"])
    assert [(m["role"], m["content"]) for m in copy["threads"][MODEL]] == [
        (m["role"], m["content"]) for m in doc["threads"][MODEL]]
    assert "imported" in cli("import", str(path)).stdout


def test_import_errors_name_the_file(cli, tmp_path):
    bad = export_file(tmp_path, "m", [("robot", "beep")])
    result = cli("import", str(bad), code=1)
    assert bad.name in result.output and "role" in result.output
    taken = export_file(tmp_path, "m", [], id=new_session(cli, tmp_path)[0])
    assert "already exists" in cli("import", str(taken), code=1).output


def test_delete_asks_unless_yes(cli, tmp_path, stack):
    sid, _ = new_session(cli, tmp_path)
    cli("delete", sid, input="n\n", code=1)
    assert exists(stack, sid)
    assert "deleted" in cli("delete", sid, input="y\n").stdout
    assert not exists(stack, sid) and stack.rows(sid) == []
    other, _ = new_session(cli, tmp_path, n=3)
    assert as_json(cli, "delete", other, "--yes") == [{"id": other, "messages": 3}]
    assert "not found" in cli("delete", other, "--yes", code=1).output


def test_archive_idle_and_restore(cli, tmp_path, stack):
    idle, _ = new_session(cli, tmp_path)
    fresh, _ = new_session(cli, tmp_path)
    set_session(stack, idle, last_access=utcnow() - timedelta(hours=1000))
    # >= : sessions other modules left idle may be archived too
    assert as_json(cli, "archive", "--idle-hours", "500")["archived"] >= 1
    assert as_json(cli, "show", idle)["archived"] and not as_json(cli, "show", fresh)["archived"]
    assert cli("restore", idle).stdout.strip() == "restored 1 session(s)"
    assert not as_json(cli, "show", idle)["archived"]
    assert "archived 2 session(s)" in cli("archive", idle, fresh).stdout
    cli("archive", idle, "--idle-hours", "1", code=2)  # one or the other


def test_purge_only_old_archived(cli, tmp_path, stack):
    old, _ = new_session(cli, tmp_path)
    old_active, _ = new_session(cli, tmp_path)
    young, _ = new_session(cli, tmp_path)
    long_ago = utcnow() - timedelta(days=4000)
    set_session(stack, old, last_access=long_ago, archived=True)
    set_session(stack, old_active, last_access=long_ago)
    set_session(stack, young, last_access=utcnow() - timedelta(days=2), archived=True)
    cli("purge", "--older-than-days", "3650", input="n\n", code=1)
    assert exists(stack, old)
    assert as_json(cli, "purge", "--older-than-days", "3650", "--yes")["purged"] >= 1
    assert not exists(stack, old) and stack.rows(old) == []
    assert exists(stack, old_active) and exists(stack, young)
    assert "purged 0 session(s)" in cli("purge", "--older-than-days", "3650").stdout


def test_stats_table_and_json(cli, tmp_path, stack):
    _, model = new_session(cli, tmp_path, n=3)
    new_session(cli, tmp_path, model, n=2)
    tokens = sum(count_tokens({"content": f"q{i}"}) for i in (0, 1, 2, 0, 1))
    data = as_json(cli, "stats")
    assert data["models"][model] == {"sessions": 2, "messages": 5, "tokens": tokens}
    assert data["sessions"] == stack.count("sessions")
    assert data["messages"] == stack.count("messages")
    assert 0 <= data["archived"] <= data["sessions"] and data["tokens"] > 0
    text = cli("stats").stdout
    assert text.startswith(f"sessions  {data['sessions']} (") and "MODEL" in text
    assert any(line.split() == [model, "2", "5", str(tokens)] for line in text.splitlines())


def test_refusals_are_one_line_errors(cli):
    result = cli("show", "nope", code=1)
    assert "Error: invalid session id 'nope': must be a UUID" in result.output
    assert "Traceback" not in result.output


def test_flask_db_migrates_and_a_server_never_loads_alembic(tmp_path):
    """`flask db` is Flask-Migrate's, its options included, loaded only when it runs: the app
    a server makes has no alembic in it."""
    import subprocess
    import sys

    from chatbot.ops import procs

    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'fresh.db'}"}
    flask = [procs.bin_path("flask"), "--app", "wsgi", "db"]
    run = lambda *args: subprocess.run([*flask, *args], env=env, cwd=procs.PROJECT_ROOT,  # noqa: E731
                                       capture_output=True, text=True, timeout=120)
    assert run("upgrade").returncode == 0
    current = run("-d", str(procs.PROJECT_ROOT / "migrations"), "current")
    assert current.returncode == 0 and "(head)" in current.stdout, current.stderr
    server = subprocess.run(
        [sys.executable, "-c", "import sys; from chatbot import create_app; create_app(); "
                               "print(sorted({'alembic', 'flask_migrate'} & set(sys.modules)))"],
        env=env, cwd=procs.PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert server.stdout.strip() == "[]", server.stderr
