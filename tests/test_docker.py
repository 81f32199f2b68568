"""The Docker files, checked by reading them (no Docker daemon needed): the image runs as a
non-root user, the build context leaves out local chats and secrets, Flower and Redis are not
open to the network, and no secret has a default. Each check is a function that raises
AssertionError, run on the real files and, to show it can fail, on broken copies of them."""
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
DOCKERFILE = (DOCKER / "Dockerfile").read_text()
COMPOSE = (DOCKER / "compose.yaml").read_text()
DOCKERIGNORE = (ROOT / ".dockerignore").read_text() if (ROOT / ".dockerignore").exists() else ""
ENTRYPOINT = DOCKER / "entrypoint.sh"

SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|API_KEY|AUTH|CREDENTIAL", re.I)
# ${NAME}, ${NAME:?msg}, ${NAME?msg}, ${NAME:-default}, ${NAME-default}, ${NAME:+x}, ${NAME+x}
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-+?])([^}]*))?\}")


# --- Dockerfile ------------------------------------------------------------------------------

def instructions(text):
    """[(INSTRUCTION, arguments)], continuation lines joined and comment lines dropped."""
    result, pending = [], ""
    for line in text.splitlines():
        if line.strip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def exec_form(args):
    """The words of an instruction in exec (JSON) or shell form."""
    if args.startswith("["):
        return yaml.safe_load(args)
    return shlex.split(args)


def is_root(user):
    name, _, group = user.partition(":")
    return name in ("root", "0") or group in ("root", "0")


def check_dockerfile(text):
    steps = instructions(text)
    names = [name for name, _ in steps]
    users = [(i, args) for i, (name, args) in enumerate(steps) if name == "USER"]
    assert users, "the Dockerfile has no USER: the image would run as root"
    last_index, user = users[-1]
    assert not is_root(user), f"the image runs as {user!r}"
    for name in ("ENTRYPOINT", "CMD"):
        assert name in names, f"no {name}"
        assert last_index < names.index(name), f"USER {user} comes after {name}"
    # The user exists in the image (so it has a home and a name in ps).
    runs = " ".join(args for name, args in steps if name == "RUN")
    uid = user.partition(":")[0]
    assert re.search(r"\b(useradd|adduser)\b", runs), "the Dockerfile creates no user"
    if uid.isdigit():
        assert re.search(rf"--uid[ =]{uid}\b", runs), f"no user with uid {uid} is created"
    else:
        assert re.search(rf"\b(useradd|adduser)\b[^&;]*\b{re.escape(uid)}\b", runs), f"no user {uid}"
    # Each volume is given to the user before VOLUME (later changes to it are thrown away).
    for index, (name, args) in enumerate(steps):
        if name != "VOLUME":
            continue
        for path in exec_form(args):
            before = " ".join(a for n, a in steps[:index] if n == "RUN")
            assert re.search(rf"\bchown\b[^&;]*\s{re.escape(path)}(\s|$)", before), (
                f"volume {path} is not chowned to the app user before VOLUME")
    # Nothing runs as root again after the switch.
    assert all(n != "USER" or not is_root(a) for n, a in steps[last_index:])


def copy_sources(text):
    """Every source path of COPY/ADD from the build context."""
    sources = []
    for name, args in instructions(text):
        if name not in ("COPY", "ADD"):
            continue
        words = exec_form(args)
        flags = [w for w in words if w.startswith("--")]
        if any(f.startswith("--from") for f in flags):
            continue  # from another stage or image, not the context
        sources += [w for w in words if not w.startswith("--")][:-1]
    return sources


def test_the_image_runs_as_a_user_that_is_not_root():
    check_dockerfile(DOCKERFILE)


@pytest.mark.parametrize("broken", [
    lambda t: re.sub(r"(?m)^USER .*\n", "", t),                     # no USER at all
    lambda t: re.sub(r"(?m)^USER .*$", "USER root", t),              # root by name
    lambda t: re.sub(r"(?m)^USER .*$", "USER 0:0", t),               # root by number
    lambda t: re.sub(r"(?m)^USER .*\n", "", t) + "USER 10001:10001\n",  # after CMD
    lambda t: t.replace("useradd", "true"),                          # a user nobody created
    lambda t: t.replace("chown chatbot:chatbot /data", "chown chatbot:chatbot"),  # volume root's
])
def test_the_dockerfile_check_fails_on_a_broken_dockerfile(broken):
    with pytest.raises(AssertionError):
        check_dockerfile(broken(DOCKERFILE))


def build_context():
    build = yaml.safe_load(COMPOSE)["x-chatbot"]["build"]
    assert (DOCKER / build["context"] / build["dockerfile"]).resolve() == DOCKER / "Dockerfile"
    return (DOCKER / build["context"]).resolve()


def test_every_path_the_dockerfile_copies_exists_and_is_not_ignored():
    context = build_context()
    assert context == ROOT
    sources = copy_sources(DOCKERFILE)
    # the code comes with `COPY . .`, after the dependencies (installed from setup.cfg alone)
    assert "setup.cfg" in sources and ("chatbot" in sources or "." in sources)
    for source in sources:
        matches = list(context.glob(source)) if source not in (".", "./") else [context]
        assert matches, f"COPY {source}: nothing at {context / source}"
        for path in matches:
            relative = path.relative_to(context).as_posix()
            assert relative == "." or not ignored(relative, DOCKERIGNORE), (
                f"COPY {source}: .dockerignore leaves it out, the build would fail")
    # The entrypoint is run directly (exec form), so it must be in the context and executable.
    entry = exec_form(dict(instructions(DOCKERFILE))["ENTRYPOINT"])[0]
    assert (context / entry).is_file() and os.access(context / entry, os.X_OK), entry
    assert not ignored(entry, DOCKERIGNORE)


def test_copy_sources_are_read_from_the_dockerfile():
    assert copy_sources('COPY --chown=1:1 a b ./\nCOPY ["c", "d/"]\nCOPY --from=x /e /f\n') == [
        "a", "b", "c"]


# --- .dockerignore ---------------------------------------------------------------------------

def pattern_regex(pattern):
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i:end + 1].replace("[!", "[^"), end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def ignore_rules(text):
    rules = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        rules.append((pattern_regex(pattern), negated))
    return rules


def ignored(path, text):
    """Whether Docker leaves `path` (relative to the context) out of the build context: the
    last rule matching it or one of its parent folders decides, as in moby's patternmatcher."""
    parts = path.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    verdict = False
    for regex, negated in ignore_rules(text):
        if any(regex.match(c) for c in candidates):
            verdict = not negated
    return verdict


MUST_STAY_OUT = [
    "instance", "instance/chatbot.db", "instance/redis.log", "instance/celerybeat-schedule.dat",
    ".env", "docker/.env", "chatbot/.env", ".env.production",
    ".venv", ".venv/bin/python", ".git", ".git/HEAD", "tests/js/node_modules/ollama/package.json",
    "chatbot.db", "data/other.db", "chatbot.db-wal", "server.log", "chatbot/__pycache__/x.pyc",
    ".pytest_cache/v/cache", "chatbot.egg-info/PKG-INFO",
]
MUST_GO_IN = ["setup.cfg", "setup.py", "README.md", "wsgi.py", "celery_app.py",
              "chatbot/__init__.py", "docker/entrypoint.sh", "docker/gunicorn.conf.py",
              "migrations/env.py", "migrations/versions/0001_sessions_and_messages.py"]


def check_dockerignore(text):
    assert text.strip(), "no .dockerignore: COPY . . takes everything"
    for path in MUST_STAY_OUT:
        assert ignored(path, text), f".dockerignore lets {path} into the image"
    for path in MUST_GO_IN:
        assert not ignored(path, text), f".dockerignore leaves out {path}, which the image needs"


def test_dockerignore_keeps_chats_secrets_and_local_environments_out():
    check_dockerignore(DOCKERIGNORE)


def test_nothing_private_in_the_real_build_context():
    """Walk this checkout as Docker would and look at what it would send."""
    sent = []
    for folder, dirs, files in os.walk(ROOT):
        rel = Path(folder).relative_to(ROOT).as_posix()
        prefix = "" if rel == "." else rel + "/"
        dirs[:] = [d for d in dirs if not ignored(prefix + d, DOCKERIGNORE)]
        sent += [prefix + f for f in files if not ignored(prefix + f, DOCKERIGNORE)]
    assert "chatbot/__init__.py" in sent
    for path in sent:
        name = path.rsplit("/", 1)[-1]
        assert not path.startswith(("instance/", ".venv/", ".git/")), path
        assert name != ".env" and not name.startswith(".env."), path
        assert not name.endswith((".db", ".sqlite", ".sqlite3", ".log", ".pyc")), path
        assert "node_modules/" not in path and "__pycache__/" not in path, path


@pytest.mark.parametrize("drop", ["instance", "**/.env", ".venv", ".git", "**/*.db"])
def test_the_dockerignore_check_fails_without_a_rule(drop):
    broken = "\n".join(line for line in DOCKERIGNORE.splitlines() if line.strip() != drop)
    assert broken != DOCKERIGNORE.rstrip("\n"), f"{drop} is not a line of .dockerignore"
    with pytest.raises(AssertionError):
        check_dockerignore(broken)


def test_the_dockerignore_check_fails_when_it_leaves_out_what_the_build_needs():
    with pytest.raises(AssertionError):
        check_dockerignore(DOCKERIGNORE + "\n*.md\n")  # setup.cfg reads README.md


def test_the_ignore_matcher_follows_docker():
    rules = "instance\n**/*.db\n!keep.db\ndocs/*.md\n"
    assert ignored("instance/a/b", rules) and not ignored("x/instance", rules)
    assert ignored("a.db", rules) and ignored("a/b/c.db", rules) and not ignored("keep.db", rules)
    assert ignored("docs/a.md", rules) and not ignored("docs/x/a.md", rules)


# --- compose ---------------------------------------------------------------------------------

def strings(node):
    """Every string in a parsed YAML document, keys included."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from strings(key)
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)
    elif isinstance(node, str):
        yield node


def environment(service):
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return env


def only_interpolations(value):
    """True when a string is made of ${NAME} (or ${NAME:?msg}) and nothing literal."""
    return bool(value) and not INTERPOLATION.sub("", value).strip()


def published(port):
    """(host ip or '', host port) of a ports entry, short or long syntax."""
    if isinstance(port, dict):
        return port.get("host_ip", ""), str(port.get("published", ""))
    parts = str(port).rsplit("/", 1)[0].split(":")
    if len(parts) == 3:
        return parts[0].strip("[]"), parts[1]
    return "", parts[0] if len(parts) == 2 else ""


def check_compose(text):
    doc = yaml.safe_load(text)
    services = doc["services"]

    # Flower: not started by a plain `up`, published on loopback only, never without a password.
    flower = services["flower"]
    assert flower.get("profiles"), "flower runs on every `up`: give it a profile"
    for port in flower.get("ports", []):
        ip, _ = published(port)
        assert ip in ("127.0.0.1", "::1", "localhost"), f"flower is published on {port!r}"
    flower_env = environment(flower)
    command = " ".join(map(str, flower.get("command") or []))
    if "--basic-auth" in command:
        credentials = command.split("--basic-auth", 1)[1].lstrip("= ").split()[0]
        assert only_interpolations(credentials), f"flower's basic auth is written out: {command}"
    else:  # the entrypoint builds it from FLOWER_USER and FLOWER_PASSWORD and refuses without
        for name in ("FLOWER_USER", "FLOWER_PASSWORD"):
            assert name in flower_env, f"flower does not get {name}"
    assert "FLOWER_UNAUTHENTICATED_API" not in flower_env

    # Redis: a password, used by its health check and carried by every REDIS_URL.
    redis = services["redis"]
    words = [str(w) for w in redis["command"]]
    assert "--requirepass" in words, "redis has no password"
    password = words[words.index("--requirepass") + 1]
    assert only_interpolations(password) and "REDIS_PASSWORD" in password, password
    check = " ".join(map(str, redis["healthcheck"]["test"]))
    assert "REDIS_PASSWORD" in check and ("REDISCLI_AUTH" in check or " -a " in check), (
        "the redis health check does not authenticate")
    assert "REDIS_PASSWORD" in environment(redis) or "${REDIS_PASSWORD" in check
    urls = [s for s in strings(doc) if re.search(r"rediss?://", s)]
    assert urls, "no REDIS_URL at all"
    for url in urls:
        assert re.match(r"rediss?://[^:@/]*:\$\{REDIS_PASSWORD(?::?\?[^}]*)?\}@", url), (
            f"a Redis URL without the password: {url}")
    for name, service in services.items():
        if "build" in service:
            assert "REDIS_PASSWORD" in str(environment(service).get("REDIS_URL")), name

    # No secret has a default, a literal value, or a fallback.
    for value in strings(doc):
        for name, operator, _ in INTERPOLATION.findall(value):
            assert not (SECRET_NAME.search(name) and operator in ("-", ":-", "+", ":+")), (
                f"${{{name}}} has a default in {value!r}")
        if "--basic-auth" in value or "--requirepass=" in value:
            assert only_interpolations(value.split("=", 1)[-1]), value
    for name, service in services.items():
        for key, value in environment(service).items():
            if SECRET_NAME.search(key):
                assert value is None or only_interpolations(str(value)), (
                    f"{name}: {key} is written out in compose.yaml")

    # A plain `up` needs REDIS_PASSWORD and nothing else: Compose interpolates the whole
    # file, profiles or not, so a required Flower variable would block everyone's `up`.
    required = {name for s in strings(doc) for name, op, _ in INTERPOLATION.findall(s)
                if op in ("?", ":?")}
    assert required == {"REDIS_PASSWORD"}, f"required variables: {sorted(required)}"

    # The many-users settings reach web and worker, unset unless the operator sets them.
    for name in ("web", "worker"):
        env = environment(services[name])
        for key in ("API_KEYS", "ADMIN_API_KEYS"):
            assert key in env and env[key] is None, f"{name}: {key} is not passed through unset"

    # Everything else still there.
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} lost its health check"
    for name in ("web", "worker", "beat"):
        assert "data:/data" in services[name]["volumes"]
        assert "profiles" not in services[name], f"{name} no longer starts on a plain `up`"
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_compose_keeps_flower_private_redis_locked_and_secrets_without_defaults():
    check_compose(COMPOSE)


@pytest.mark.parametrize("old, new", [
    ('    profiles: ["monitoring"]\n', ""),                               # flower on every up
    ('"127.0.0.1:5555:5555"', '"5555:5555"'),                           # on every interface
    ("      FLOWER_PASSWORD:\n", ""),                                   # flower without auth
    ('["flower"]', '["flower", "--basic-auth=admin:admin"]'),           # a written-out password
    ('"--requirepass", ', ""),                                          # redis without password
    ("REDIS_URL: redis://:${REDIS_PASSWORD", "REDIS_URL: redis://${REDIS_PASSWORD"),
    ("@redis:6379/0", "@redis:6379/0\n    OTHER_URL: redis://redis:6379/1"),
    ("REDISCLI_AUTH=", "NOTHING="),                                     # health check w/o auth
    ("REDIS_PASSWORD: ${REDIS_PASSWORD:?", "REDIS_PASSWORD: ${REDIS_PASSWORD:-changeme}${X:?"),
    ("REDIS_PASSWORD: ${REDIS_PASSWORD:?", "REDIS_PASSWORD: changeme #"),  # a literal password
    ("  API_KEYS:\n", "  API_KEYS: sk-local\n"),                        # a literal key
    ("  API_KEYS:\n", "  API_KEYS: ${API_KEYS:-sk-local}\n"),           # a default key
    ("  ADMIN_API_KEYS:\n", ""),                                        # not passed through
    ("      FLOWER_USER:\n", "      FLOWER_USER: ${FLOWER_USER:?set FLOWER_USER}\n"),
])
def test_the_compose_check_fails_on_a_broken_compose_file(old, new):
    assert old in COMPOSE, old
    with pytest.raises(AssertionError):
        check_compose(COMPOSE.replace(old, new, 1))


def test_port_entries_are_read():
    assert published("127.0.0.1:5555:5555") == ("127.0.0.1", "5555")
    assert published("5555:5555") == ("", "5555")
    assert published("5555") == ("", "")
    assert published({"target": 5555, "published": 5555, "host_ip": "127.0.0.1"})[0] == "127.0.0.1"


# --- entrypoint ------------------------------------------------------------------------------

@pytest.mark.parametrize("shell", ["bash", "dash"])
def test_the_entrypoint_is_valid_shell(shell):
    if not shutil.which(shell):
        pytest.skip(f"no {shell} here")
    result = subprocess.run([shell, "-n", str(ENTRYPOINT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def run_entrypoint(tmp_path, args, prefix=(), **env):
    """The entrypoint with stub celery/flask/gunicorn that record how they were called."""
    stubs = tmp_path / "bin"
    stubs.mkdir(exist_ok=True)
    for name in ("celery", "flask", "gunicorn"):
        stub = stubs / name
        stub.write_text('#!/bin/sh\n{ echo "$0 $*"; echo "auth=$FLOWER_BASIC_AUTH"; }'
                        ' >> "$STUB_LOG"\n')
        stub.chmod(0o755)
    log = tmp_path / "calls.log"
    base = {"PATH": f"{stubs}:/usr/bin:/bin", "VIRTUAL_ENV": str(tmp_path), "STUB_LOG": str(log),
            "HOME": str(tmp_path)}
    result = subprocess.run([*prefix, str(ENTRYPOINT), *args], env={**base, **env},
                            capture_output=True, text=True, timeout=30)
    return result, log.read_text() if log.exists() else ""


def test_flower_does_not_start_without_a_password(tmp_path):
    for env in ({}, {"FLOWER_USER": "ops"}, {"FLOWER_PASSWORD": "pw"},
                {"FLOWER_USER": "ops", "FLOWER_PASSWORD": ""},
                {"FLOWER_USER": "ops", "FLOWER_PASSWORD": "a,b"},
                {"FLOWER_USER": "o:ps", "FLOWER_PASSWORD": "pw"}):
        result, calls = run_entrypoint(tmp_path, ["flower"], **env)
        assert result.returncode != 0, env
        assert "FLOWER_" in result.stderr and calls == "", env


def test_flower_gets_its_basic_auth_off_the_command_line(tmp_path):
    result, calls = run_entrypoint(tmp_path, ["flower", "--purge_offline_workers=60"],
                                   FLOWER_USER="ops", FLOWER_PASSWORD="s3cret-pw")
    assert result.returncode == 0, result.stderr
    command, auth = calls.splitlines()
    assert command.endswith("celery -A celery_app flower --port=5555 --purge_offline_workers=60")
    assert "s3cret" not in command  # argv is visible to every user of the host in ps
    assert auth == "auth=ops:s3cret-pw"


def test_a_database_folder_the_user_cannot_write_is_named():
    """A data volume made by an older image that ran as root: the entrypoint says so."""
    prefix = ()
    if os.geteuid() == 0:  # root writes anywhere: run it as nobody, as the image's user would
        if not shutil.which("setpriv"):
            pytest.skip("running as root and no setpriv to drop privileges")
        prefix = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
    work = Path(tempfile.mkdtemp(prefix="chatbot-entry-"))
    try:
        work.chmod(0o755)
        locked = work / "data"
        locked.mkdir(mode=0o555)
        (work / "bin").mkdir()
        if prefix:
            for path in (work, work / "bin"):
                os.chown(path, 65534, 65534)
            os.chown(locked, 0, 0)
        result, calls = run_entrypoint(work, ["migrate"], prefix,
                                       DATABASE_URL=f"sqlite:///{locked / 'chatbot.db'}")
        assert result.returncode == 1 and calls == "", result.stderr
        assert str(locked) in result.stderr and "chown" in result.stderr
        result, calls = run_entrypoint(work, ["migrate"], prefix,
                                       DATABASE_URL=f"sqlite:///{work / 'chatbot.db'}")
        assert result.returncode == 0 and "flask --app wsgi db upgrade" in calls, result.stderr
    finally:
        locked.chmod(0o755)
        shutil.rmtree(work)
