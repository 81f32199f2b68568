#!/bin/sh
# Runs one part of chatbot. The image's entrypoint, and just as runnable on a plain machine
# from the project folder (it uses .venv/bin when no virtualenv is active).
#   web | worker | beat | flower | migrate | up | <any command>
set -e
cd "$(dirname "$0")/.."
if [ -z "$VIRTUAL_ENV" ] && [ -x .venv/bin/python ]; then
    PATH="$PWD/.venv/bin:$PATH"
fi
LEVEL="${LOG_LEVEL:-INFO}"

# The image runs as an unprivileged user. A SQLite folder it cannot write (a volume made by an
# older image that ran as root) would fail later as an obscure database error: say it now.
database_writable() {
    case "${DATABASE_URL:-}" in
        sqlite:///*) db="${DATABASE_URL#sqlite:///}"; db="${db%%\?*}" ;;
        *) return 0 ;;
    esac
    dir="$(dirname "$db")"
    if { [ -d "$dir" ] && [ ! -w "$dir" ]; } || { [ -e "$db" ] && [ ! -w "$db" ]; }; then
        echo "entrypoint.sh: $db is not writable by uid $(id -u). If its volume was made by an" \
             "older image that ran as root, give it to this user once:" \
             "docker compose -f docker/compose.yaml run --rm --no-deps --user root" \
             "--entrypoint chown web -R $(id -u):$(id -g) $dir" >&2
        exit 1
    fi
}

case "${1:-web}" in
    web|worker|beat|migrate|up) database_writable ;;
esac
case "${1:-web}" in
    web)
        flask --app wsgi db upgrade
        exec gunicorn -c docker/gunicorn.conf.py wsgi:app ;;
    worker)  # one per Ollama host: concurrency 1 is what makes the queue fair
        exec celery -A celery_app worker -Q "${CHATBOT_QUEUES:-ollama}" -c 1 -P solo \
            --without-gossip --without-mingle -n "worker-${CHATBOT_QUEUES:-ollama}@%h" -l "$LEVEL" ;;
    beat)  # session archiving on a schedule: celery beat inside a small maintenance worker
        exec celery -A celery_app worker -Q maintenance -c 1 -B \
            -s "${CELERY_BEAT_SCHEDULE:-/tmp/chatbot-beat-schedule}" -n "maintenance@%h" -l "$LEVEL" ;;
    flower)  # Flower can revoke tasks and shut workers down: never without a password.
        # Flower reads FLOWER_BASIC_AUTH itself (its options come from FLOWER_* variables),
        # so the password is not on the command line where `ps` on the host would show it.
        if [ -z "$FLOWER_USER" ] || [ -z "$FLOWER_PASSWORD" ]; then
            echo "entrypoint.sh: flower needs FLOWER_USER and FLOWER_PASSWORD (its HTTP basic auth)" >&2
            exit 64
        fi
        case "$FLOWER_USER$FLOWER_PASSWORD" in
            *,*) echo "entrypoint.sh: FLOWER_USER and FLOWER_PASSWORD cannot contain a comma" >&2
                 exit 64 ;;
        esac
        case "$FLOWER_USER" in
            *:*) echo "entrypoint.sh: FLOWER_USER cannot contain a colon" >&2
                 exit 64 ;;
        esac
        FLOWER_BASIC_AUTH="$FLOWER_USER:$FLOWER_PASSWORD"
        export FLOWER_BASIC_AUTH
        shift
        exec celery -A celery_app flower --port="${FLOWER_PORT:-5555}" "$@" ;;
    migrate)
        exec flask --app wsgi db upgrade ;;
    up)
        exec chatbot up --host 0.0.0.0 ;;
    *)
        exec "$@" ;;
esac
