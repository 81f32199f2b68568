"""A short bench/chaos.py: three sessions chat while every part of a real `chatbot up` is
SIGKILLed once (the web server's worker, the Celery worker, its own engine, the web server, Redis).
Nothing a client was told is lost or stored twice, no client hangs, no process is left."""
from bench.chaos import FAULTS, passed, run


def test_sessions_survive_every_part_being_killed():
    # One engine thread: llama.cpp threads spin-wait for each other, so an engine with a thread
    # per core slows down tens of times beside another busy engine (a parallel test run), and
    # turns would take longer than the bound for reasons that are not chatbot's.
    figures = run(sessions=3, rounds=1, interval=3.0, num_predict=12, bound=60.0, after_turns=2,
                  engine_threads=1)
    problems = {k: v for k, v in figures["problems"].items() if v}
    assert figures["faults"] == len(FAULTS) and figures["not_back"] == 0, figures
    assert figures["lost"] == figures["duplicated"] == figures["half_written"] == 0, problems
    assert figures["hung"] == 0, problems
    assert figures["orphans"] == 0, problems
    assert figures["replies"] > 0 and figures["tail_replies"] > 0, figures
    assert figures["up_exit"] == 0 and passed(figures)
