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
case "${1:-web}" in
    web)
        flask --app wsgi db upgrade
        exec gunicorn -c docker/gunicorn.conf.py wsgi:app ;;
    worker)  # one per Ollama host: concurrency 1 is what makes the queue fair
        exec celery -A celery_app worker -Q "${CHATBOT_QUEUES:-ollama}" -c 1 -P prefork \
            --without-gossip --without-mingle -n "worker-${CHATBOT_QUEUES:-ollama}@%h" -l "$LEVEL" ;;
    beat)  # session archiving on a schedule: celery beat inside a small maintenance worker
        exec celery -A celery_app worker -Q maintenance -c 1 -B \
            -s "${CELERY_BEAT_SCHEDULE:-/tmp/chatbot-beat-schedule}" -n "maintenance@%h" -l "$LEVEL" ;;
    flower)
        exec celery -A celery_app flower --port="${FLOWER_PORT:-5555}" ;;
    migrate)
        exec flask --app wsgi db upgrade ;;
    up)
        exec chatbot up --host 0.0.0.0 ;;
    *)
        exec "$@" ;;
esac
