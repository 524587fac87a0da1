"""Celery's side of scripts/bench_peers.py: the app and its no-op task (the worker imports this
module: `celery -A celery_bench worker`), and a producer:

    python celery_bench.py produce --jobs N --clients C [--rate R] [--first I]

Runs with the venv that scripts/install-peers.sh made; bench_peers.py sets the environment:
FERRY_PEER_BROKER (redis://127.0.0.1:PORT/0) and FERRY_PEER_RECORDS (a folder for the records).

Settings are Celery's defaults but one: task_acks_late, so that a job's message stays in Redis
until the job ran (at-least-once, as BullMQ, procrastinate and Ferry give); with the default
early ack, a worker dying mid-job loses it. No result backend (Celery's default): a job's outcome
is not stored.
"""

import argparse
import json
import os
import threading
import time

from celery import Celery
from celery.signals import task_postrun

app = Celery("ferry_bench", broker=os.environ["FERRY_PEER_BROKER"])
app.conf.update(task_acks_late=True, broker_connection_retry_on_startup=True)
_records = None  # this process's records file, opened at its first job (after the fork)


def record(kind: str, index: int, t: float) -> None:
    """A `start|done INDEX SECONDS` line, one write(2), so nothing is lost when stopped."""
    global _records
    if _records is None:
        path = os.path.join(os.environ["FERRY_PEER_RECORDS"], f"celery-{os.getpid()}.records")
        _records = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.write(_records, f"{kind} {index} {t}\n".encode())


@app.task(name="noop")
def noop(i: int) -> None:
    record("start", i, time.time())


@task_postrun.connect
def done(task, args, **_) -> None:
    """Once the task returned, in the pool process; with task_acks_late, the worker's main
    process acks the message after this."""
    if task.name == "noop":
        record("done", args[0], time.time())


def produce(n_jobs: int, n_clients: int, rate: float, first: int) -> dict:
    """C client threads, each holding a producer (a broker connection) from the app's pool, call
    `noop.apply_async` as fast as they can or, with `rate`, job k no earlier than k / rate seconds
    after the start. Returns {submits: [[INDEX, SECONDS just before apply_async]], seconds,
    errors}."""
    lock, counter, start = threading.Lock(), iter(range(n_jobs)), []
    barrier = threading.Barrier(n_clients, action=lambda: start.append(time.time()))
    submits, errors = [], []

    def client() -> None:
        with app.producer_pool.acquire(block=True) as producer:
            producer.connection.ensure_connection(max_retries=3)
            barrier.wait()
            while (k := next_index()) is not None:
                if rate:
                    time.sleep(max(0.0, start[0] + k / rate - time.time()))
                t = time.time()
                try:
                    noop.apply_async((first + k,), producer=producer)
                except Exception as e:  # noqa: BLE001 - counted, reported by bench_peers.py
                    with lock:
                        errors.append(f"job {first + k}: {e!r}")
                    continue
                with lock:
                    submits.append((first + k, t))

    def next_index() -> int | None:
        with lock:
            return next(counter, None)

    threads = [threading.Thread(target=client) for _ in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"submits": submits, "seconds": time.time() - start[0], "errors": errors}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("command", choices=["produce"])
    ap.add_argument("--jobs", type=int, required=True)
    ap.add_argument("--clients", type=int, required=True)
    ap.add_argument("--rate", type=float, default=0)
    ap.add_argument("--first", type=int, default=0)
    args = ap.parse_args()
    print(json.dumps(produce(args.jobs, args.clients, args.rate, args.first)))


if __name__ == "__main__":
    main()
