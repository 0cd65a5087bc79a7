"""Bounded load over servers behind libpq's own load balancing: each request opens a
connection with a multi-host connection string (target_session_attrs, load_balance_hosts=
random) and runs one read-only call (its first column); a request whose connection fails (a server that went
away) is retried on a new connection, at most --retries times. Prints one JSON object:
answers per server port, retries, failures, how many distinct answers (and the most
common ones), answers/min.

Used by tests/cluster/run.sh (a fixed number of requests; one standby is killed mid-run)
and bench/read_scaling.sh (--duration).

    balanced_load.py CONNINFO SQL [--requests N | --duration S] [--clients 4] [--retries 3]
                     [--kill-after N --kill-command CMD] [--params FILE]

With --params, SQL holds one %s and request i passes line i of FILE (cycling).
"""
import argparse
import collections
import json
import subprocess
import threading
import time

import psycopg


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("conninfo")
    ap.add_argument("sql")
    ap.add_argument("--requests", type=int, help="stop after this many answers in all")
    ap.add_argument("--duration", type=float, help="stop taking new requests after this many seconds")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--retries", type=int, default=3)
    ap.add_argument("--kill-after", type=int, help="run --kill-command once this many answers are in")
    ap.add_argument("--kill-command")
    ap.add_argument("--params", help="a file of one parameter per line for the %%s in SQL")
    a = ap.parse_args()
    params = open(a.params).read().splitlines() if a.params else None
    assert (a.requests is None) != (a.duration is None), "give --requests or --duration"

    lock = threading.Lock()
    taken = 0
    per_server, answers = collections.Counter(), collections.Counter()
    retries, failures, errors = 0, 0, []
    killed = threading.Event()
    started = time.monotonic()

    def take():
        """The next request's parameters, or None when the load is over."""
        nonlocal taken
        with lock:
            if a.requests is not None and taken >= a.requests:
                return None
            if a.duration is not None and time.monotonic() - started >= a.duration:
                return None
            taken += 1
            return (params[(taken - 1) % len(params)],) if params else ()

    def client():
        nonlocal retries, failures
        while (args := take()) is not None:
            for attempt in range(a.retries + 1):
                try:
                    with psycopg.connect(a.conninfo, autocommit=True, connect_timeout=5) as conn:
                        port, answer = conn.execute(f"SELECT current_setting('port'), ({a.sql})", args).fetchone()
                    break
                except psycopg.OperationalError as e:  # the server went away: a new connection may reach another
                    with lock:
                        retries += 1
                        if attempt == a.retries:
                            failures += 1
                            errors.append(str(e).strip()[:200])
                    time.sleep(0.2)
            else:
                continue
            with lock:
                per_server[port] += 1
                answers[answer] += 1
                done = sum(per_server.values())
            if a.kill_after is not None and done >= a.kill_after and not killed.is_set():
                killed.set()
                subprocess.run(a.kill_command, shell=True, check=False)

    threads = [threading.Thread(target=client) for _ in range(a.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.monotonic() - started
    print(json.dumps({"answers": sum(per_server.values()), "per_server": dict(sorted(per_server.items())),
                      "retries": retries, "failures": failures, "errors": errors[:3],
                      "distinct_answers": len(answers), "some_answers": [x for x, _ in answers.most_common(3)],
                      "answers_per_minute": 60 * sum(per_server.values()) / seconds,
                      "seconds": seconds, "killed": killed.is_set()}))


if __name__ == "__main__":
    main()
