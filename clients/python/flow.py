#!/usr/bin/env python3
"""Ferry's whole client flow, driven only through the Python client that openapi-python-client
generates from openapi.yaml (with generator-config.yaml beside this file).

The client is generated at test time into a temporary folder and imported from there
(`--client-path`); nothing of it is committed or edited. Against `--server URL` this script:
streams an upload, creates a `digest` job from it (JSON form) and a job from a file in one
request (`createJobWithFile`, of the model kind `--model-kind`: its results have nested names
such as `masks/mask.json`), waits for the first with long-polls (`Prefer: wait`, `ETag`) and
the second by polling with the server's `Retry-After`,
lists and downloads their results checking each SHA-256 against the listing, reads the events
(kinds and `seq` order), cancels a running job of the model kind (which, given
`{"mode": "sleep"}`, sleeps until stopped), deletes a job, and parses two errors into the typed
`Problem` model (a request without the API key among them: `401 unauthenticated`). With
`--api-key`, every other request authenticates with it (the generated `AuthenticatedClient`).
Webhooks: it creates a server-wide endpoint for a receiver of its own, checks
that the digest job's events arrive signed (verified with the `standardwebhooks` package, the
Standard Webhooks reference library, not with anything of Ferry's) and are in the job's delivery
log, rotates the endpoint's secret and deletes the endpoint. Any mismatch exits non-zero with a
message saying what differed.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.server
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

T = TypeVar("T")

# A finished job no longer changes; an unfinished one carries Retry-After.
FINISHED = {"succeeded", "failed", "canceled"}
# No single wait in this flow should take longer; a stuck job fails the flow instead of hanging.
WAIT_LIMIT_S = 120.0


def fail(message: str) -> NoReturn:
    print(f"flow.py: FAILED: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def check(condition: bool, message: str) -> None:
    if not condition:
        fail(message)


def step(message: str) -> None:
    print(f"flow.py: {message}", flush=True)


def typed(value: Any, cls: type[T], what: str) -> T:
    """The parsed body, which must be of the generated model `cls` (not None, not a Problem)."""
    if not isinstance(value, cls):
        fail(f"{what}: expected a {cls.__name__}, got {type(value).__name__}: {value!r}")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True, help="Ferry's base URL")
    parser.add_argument(
        "--client-path", required=True, help="the folder holding the generated ferry_client"
    )
    parser.add_argument(
        "--model-kind",
        default="model",
        help="a kind served by tests/handlers/model.py (params.mode ok: nested result names; "
        "sleep: runs until canceled)",
    )
    parser.add_argument(
        "--api-key",
        help="an API key with every scope, sent as Authorization: Bearer (the server needs one)",
    )
    args = parser.parse_args()
    sys.path.insert(0, args.client_path)
    Flow(args.server, args.model_kind, args.api_key).run()
    step("OK")


class Flow:
    def __init__(self, server: str, model_kind: str, api_key: str | None) -> None:
        # Imported here: the package exists only once the test has generated it.
        from ferry_client import AuthenticatedClient, Client

        # Every response the server gives must be documented: an undocumented status raises.
        options = {"base_url": server, "raise_on_unexpected_status": True, "timeout": 60.0}
        self.client = (
            AuthenticatedClient(token=api_key, **options) if api_key else Client(**options)
        )
        self.server = server
        self.keyed = api_key is not None
        self.model_kind = model_kind
        self.scratch = tempfile.TemporaryDirectory(prefix="ferry-flow-")

    def run(self) -> None:
        with self.client, Receiver() as receiver:
            hook = self.create_webhook(receiver.url)
            path, sha = self.make_file("scan.bin", 3 * 1024 * 1024 + 123)
            upload = self.upload(path, sha)
            job = self.create_job(upload.id)
            self.long_poll_finished(job.id, "succeeded")
            self.check_results(job.id, {"report.json"})
            self.check_events(job.id)
            self.check_webhook_deliveries(receiver, hook, job.id)

            path2, _ = self.make_file("second.bin", 200 * 1024 + 7)
            one = self.create_job_with_file(path2)
            self.wait_finished(one.id, "succeeded")
            self.check_results(one.id, {"masks/mask.json"})

            self.cancel_running_job()
            self.delete_job(one.id)
            self.unknown_kind_problem(upload.id)
            if self.keyed:
                self.unauthenticated_problem()

    def make_file(self, name: str, size: int) -> tuple[str, str]:
        path = os.path.join(self.scratch.name, name)
        digest = hashlib.sha256()
        with open(path, "wb") as f:
            left = size
            while left:
                chunk = os.urandom(min(left, 1 << 16))
                digest.update(chunk)
                f.write(chunk)
                left -= len(chunk)
        return path, digest.hexdigest()

    def create_webhook(self, url: str):
        from ferry_client.api.webhooks import create_webhook
        from ferry_client.models import EventType, Webhook, WebhookIn

        body = WebhookIn(url=url, events=[EventType.RESULT, EventType.SUCCEEDED])
        res = create_webhook.sync_detailed(client=self.client, body=body)
        check(res.status_code == 201, f"createWebhook: status {res.status_code}: {res.content!r}")
        hook = typed(res.parsed, Webhook, "createWebhook")
        check(isinstance(hook.secret, str) and hook.secret.startswith("whsec_"), "secret")
        check(res.headers.get("Location") == f"/v1/webhooks/{hook.id}", "createWebhook Location")
        step(f"created webhook endpoint {hook.id} for {url}")
        return hook

    def check_webhook_deliveries(self, receiver: "Receiver", hook, job_id: str) -> None:
        from standardwebhooks import Webhook as Verifier
        from ferry_client.api.webhooks import (
            delete_webhook,
            get_webhook,
            list_job_webhook_deliveries,
            rotate_webhook_secret,
        )
        from ferry_client.models import Webhook, WebhookDeliveryList

        from ferry_client.api.jobs import list_job_events
        from ferry_client.models import EventList

        res = list_job_events.sync_detailed(job_id, client=self.client)
        events = typed(res.parsed, EventList, "listJobEvents").items
        wanted = [e.kind.value for e in events if e.kind.value in ("result", "succeeded")]
        got = receiver.wait(lambda msgs: any(m[1]["type"] == "succeeded" for m in msgs))
        mine = [(h, p) for h, p in got if p["data"]["job_id"] == job_id]
        types = [p["type"] for _, p in mine]
        # The subscribed events of the job's log, each once, in the log's order.
        check(types == wanted, f"webhook event types {types}, the log's {wanted}")
        for headers, payload in mine:
            body = headers.pop("_body")
            Verifier(hook.secret).verify(body, headers)
            check(headers["webhook-id"] == payload["id"], "webhook-id is the payload's id")
        res = list_job_webhook_deliveries.sync_detailed(job_id, client=self.client)
        log = typed(res.parsed, WebhookDeliveryList, "listJobWebhookDeliveries").items
        states = sorted((d.event_type.value, d.state.value) for d in log)
        check(states == sorted((t, "succeeded") for t in wanted), f"delivery log {states}")
        rotated = rotate_webhook_secret.sync_detailed(hook.id, client=self.client)
        new = typed(rotated.parsed, Webhook, "rotateWebhookSecret")
        check(new.secret not in (None, hook.secret), "rotation gives a new secret")
        check(new.previous_secret_expires_at is not None, "the old secret signs until then")
        read = typed(get_webhook.sync_detailed(hook.id, client=self.client).parsed, Webhook, "get")
        check(read.secret is None, "the secret is shown only on creation and rotation")
        gone = delete_webhook.sync_detailed(hook.id, client=self.client)
        check(gone.status_code == 204, f"deleteWebhook: {gone.status_code}")
        step(f"webhooks: {types} delivered and verified (standardwebhooks), secret rotated")

    def upload(self, path: str, sha_hex: str):
        from ferry_client.api.uploads import create_upload
        from ferry_client.models import Upload
        from ferry_client.types import File

        repr_digest = "sha-256=:" + base64.b64encode(bytes.fromhex(sha_hex)).decode() + ":"
        with open(path, "rb") as f:
            # Streamed: the generated call hands the open file to httpx as the request content;
            # httpx reads it in 64 KiB chunks (never the whole file at once) and takes
            # Content-Length from the file's size. The server verifies the Repr-Digest.
            res = create_upload.sync_detailed(
                client=self.client, body=File(payload=f), repr_digest=repr_digest
            )
        check(res.status_code == 201, f"createUpload: status {res.status_code}: {res.content!r}")
        upload = typed(res.parsed, Upload, "createUpload")
        check(upload.sha256 == sha_hex, f"upload sha256 {upload.sha256} != {sha_hex}")
        check(upload.size == os.path.getsize(path), f"upload size {upload.size}")
        check(
            res.headers.get("Location") == f"/v1/uploads/{upload.id}",
            f"createUpload Location: {res.headers.get('Location')}",
        )
        check(res.headers.get("Repr-Digest") == repr_digest, "createUpload Repr-Digest")
        step(f"uploaded {upload.id} ({upload.size} bytes, streamed)")
        return upload

    def create_job(self, upload_id: str):
        from ferry_client.api.jobs import create_job
        from ferry_client.models import Job, JobIn, JobInInputs, JobInParamsType0

        inputs = JobInInputs()
        inputs["scan"] = upload_id
        params = JobInParamsType0()
        params["chunk_size"] = 1 << 20
        body = JobIn(kind="digest", inputs=inputs, params=params, priority=5, timeout="5m")
        res = create_job.sync_detailed(client=self.client, body=body)
        check(res.status_code == 202, f"createJob: status {res.status_code}: {res.content!r}")
        job = typed(res.parsed, Job, "createJob")
        self.check_accepted(res, job, "createJob")
        check(job.kind == "digest" and job.priority == 5, f"createJob echoed {job}")
        check([i.name for i in job.inputs] == ["scan"], f"createJob inputs {job.inputs}")
        step(f"created {job.id} (JSON form)")
        return job

    def create_job_with_file(self, path: str):
        from ferry_client.api.jobs import create_job_with_file
        from ferry_client.models import Job
        from ferry_client.types import File

        with open(path, "rb") as f:
            # The one-request form: the open file is streamed as the body, as for createUpload.
            res = create_job_with_file.sync_detailed(
                self.model_kind,
                client=self.client,
                body=File(payload=f),
                input_="second",
                params_json=json.dumps({"mode": "ok"}),
                max_attempts=2,
            )
        check(
            res.status_code == 202,
            f"createJobWithFile: status {res.status_code}: {res.content!r}",
        )
        job = typed(res.parsed, Job, "createJobWithFile")
        self.check_accepted(res, job, "createJobWithFile")
        check(job.max_attempts == 2, f"createJobWithFile max_attempts {job.max_attempts}")
        check(job.params.to_dict() == {"mode": "ok"}, f"params {job.params}")
        check([i.name for i in job.inputs] == ["second"], f"inputs {job.inputs}")
        step(f"created {job.id} (one-request form)")
        return job

    def check_accepted(self, res, job, what: str) -> None:
        check(
            res.headers.get("Location") == f"/v1/jobs/{job.id}",
            f"{what} Location: {res.headers.get('Location')}",
        )
        check(job.status.value == "queued", f"{what}: a new job is {job.status}")
        check(job.progress is None and job.error is None, f"{what}: new job {job}")
        check(retry_after(res) is not None, f"{what}: no Retry-After on a queued job")

    def poll(self, job_id: str, done: Callable[[Any], bool], what: str):
        """Polls getJob until `done(job)`, sleeping what each answer's Retry-After says."""
        from ferry_client.api.jobs import get_job
        from ferry_client.models import Job

        deadline = time.monotonic() + WAIT_LIMIT_S
        polls = 0
        while True:
            res = get_job.sync_detailed(job_id, client=self.client)
            check(res.status_code == 200, f"getJob: status {res.status_code}: {res.content!r}")
            job = typed(res.parsed, Job, "getJob")
            polls += 1
            wait = retry_after(res)
            if job.status.value in FINISHED:
                check(wait is None, f"getJob: Retry-After {wait} on a finished job")
            else:
                check(wait is not None, f"getJob: no Retry-After on a {job.status} job")
            if done(job):
                step(f"{job_id} {what} after {polls} poll(s)")
                return job
            check(job.status.value not in FINISHED, f"{job_id} finished as {job.status}: {job}")
            check(time.monotonic() < deadline, f"{job_id} not {what} in {WAIT_LIMIT_S} s")
            time.sleep(wait)

    def long_poll_finished(self, job_id: str, want: str):
        """Waits with long-polls: `Prefer: wait=N` and the last ETag in `If-None-Match`; the
        server answers when the job changes (200, new ETag) or after N seconds (304)."""
        from ferry_client.api.jobs import get_job
        from ferry_client.models import Job
        from ferry_client.types import UNSET

        deadline = time.monotonic() + WAIT_LIMIT_S
        etag, job, answers = None, None, 0
        while job is None or job.status.value not in FINISHED:
            check(time.monotonic() < deadline, f"{job_id} not finished in {WAIT_LIMIT_S} s")
            res = get_job.sync_detailed(
                job_id,
                client=self.client,
                prefer="wait=10",
                if_none_match=UNSET if etag is None else etag,
            )
            answers += 1
            check(
                res.headers.get("Preference-Applied") == "wait=10",
                f"getJob: Preference-Applied {res.headers.get('Preference-Applied')!r}",
            )
            if res.status_code == 304:
                check(etag is not None, "getJob: 304 without If-None-Match")
                continue
            check(res.status_code == 200, f"getJob: status {res.status_code}: {res.content!r}")
            job = typed(res.parsed, Job, "getJob")
            new_etag = res.headers.get("ETag")
            check(new_etag is not None and new_etag != etag, f"getJob: ETag {new_etag!r}")
            etag = new_etag
        step(f"{job_id} finished after {answers} long-poll answer(s)")
        check(job.status.value == want, f"{job_id} ended {job.status}, not {want}: {job.error}")
        return job

    def wait_finished(self, job_id: str, want: str):
        job = self.poll(job_id, lambda j: j.status.value in FINISHED, "finished")
        check(job.status.value == want, f"{job_id} ended {job.status}, not {want}: {job.error}")
        return job

    def check_results(self, job_id: str, final_names: set[str]) -> None:
        from ferry_client.api.results import download_job_result, list_job_results
        from ferry_client.models import ResultList
        from ferry_client.types import File

        res = list_job_results.sync_detailed(job_id, client=self.client)
        listing = typed(res.parsed, ResultList, "listJobResults")
        names = {r.name for r in listing.items if r.final}
        check(final_names <= names, f"{job_id} final results {names}, expected {final_names}")
        for result in listing.items:
            got = download_job_result.sync_detailed(job_id, result.name, client=self.client)
            check(got.status_code == 200, f"download {result.name}: status {got.status_code}")
            body = typed(got.parsed, File, f"download {result.name}").payload.read()
            sha = hashlib.sha256(body).hexdigest()
            check(sha == result.sha256, f"{result.name}: sha256 {sha} != listed {result.sha256}")
            check(len(body) == result.size, f"{result.name}: {len(body)} bytes != {result.size}")
            check(got.headers.get("ETag") == f'"{sha}"', f"{result.name}: ETag")
            # A conditional re-download with the listed digest is answered 304, without a body.
            again = download_job_result.sync_detailed(
                job_id, result.name, client=self.client, if_none_match=f'"{result.sha256}"'
            )
            check(again.status_code == 304, f"{result.name} If-None-Match: {again.status_code}")
        step(f"{job_id}: {len(listing.items)} result(s) downloaded, SHA-256 checked")

    def check_events(self, job_id: str) -> None:
        from ferry_client.api.jobs import list_job_events
        from ferry_client.models import EventList

        res = list_job_events.sync_detailed(job_id, client=self.client)
        events = typed(res.parsed, EventList, "listJobEvents").items
        kinds = [e.kind.value for e in events]
        check([e.seq for e in events] == list(range(1, len(events) + 1)), f"seq of {kinds}")
        check(kinds[:2] == ["queued", "started"], f"events start {kinds}")
        check(kinds[-1] == "succeeded", f"events end {kinds}")
        check("result" in kinds, f"no result event in {kinds}")
        # Following the log from a seq gives exactly what came after it.
        tail = list_job_events.sync_detailed(job_id, client=self.client, after=2)
        rest = typed(tail.parsed, EventList, "listJobEvents after=2").items
        check([e.seq for e in rest] == [e.seq for e in events[2:]], "events after=2")
        step(f"{job_id}: events {kinds}")

    def cancel_running_job(self) -> None:
        from ferry_client.api.jobs import cancel_job, create_job_with_file
        from ferry_client.models import Job
        from ferry_client.types import File

        path, _ = self.make_file("slow.bin", 1024)
        with open(path, "rb") as f:
            res = create_job_with_file.sync_detailed(
                self.model_kind,
                client=self.client,
                body=File(payload=f),
                params_json=json.dumps({"mode": "sleep"}),
            )
        job = typed(res.parsed, Job, f"createJobWithFile ({self.model_kind})")
        self.poll(job.id, lambda j: j.status.value == "running", "running")
        res = cancel_job.sync_detailed(job.id, client=self.client)
        check(res.status_code == 202, f"cancelJob (running): {res.status_code}: {res.content!r}")
        asked = typed(res.parsed, Job, "cancelJob")
        check(asked.cancel_requested, f"cancelJob: cancel_requested false: {asked}")
        check(res.headers.get("Location") == f"/v1/jobs/{job.id}", "cancelJob Location")
        wait = retry_after(res)
        check(wait is not None, "cancelJob: no Retry-After")
        time.sleep(wait)
        self.wait_finished(job.id, "canceled")
        # A finished job cannot be canceled again: a typed 409.
        again = cancel_job.sync_detailed(job.id, client=self.client)
        self.expect_problem(again, 409, "job_finished", "cancelJob (canceled)")

    def delete_job(self, job_id: str) -> None:
        from ferry_client.api.jobs import delete_job, get_job

        res = delete_job.sync_detailed(job_id, client=self.client)
        check(res.status_code == 204, f"deleteJob: {res.status_code}: {res.content!r}")
        gone = get_job.sync_detailed(job_id, client=self.client)
        self.expect_problem(gone, 404, "job_not_found", "getJob (deleted)")
        step(f"deleted {job_id}")

    def unknown_kind_problem(self, upload_id: str) -> None:
        from ferry_client.api.jobs import create_job
        from ferry_client.models import JobIn, JobInInputs

        inputs = JobInInputs()
        inputs["scan"] = upload_id
        res = create_job.sync_detailed(
            client=self.client, body=JobIn(kind="no-such-kind", inputs=inputs)
        )
        self.expect_problem(res, 422, "unknown_kind", "createJob (unknown kind)")

    def unauthenticated_problem(self) -> None:
        from ferry_client import Client
        from ferry_client.api.jobs import list_jobs

        with Client(base_url=self.server, raise_on_unexpected_status=True) as anonymous:
            res = list_jobs.sync_detailed(client=anonymous)
        self.expect_problem(res, 401, "unauthenticated", "listJobs without a key")
        challenge = res.headers.get("WWW-Authenticate")
        check(challenge == 'Bearer realm="ferry"', f"listJobs without a key: {challenge!r}")

    def expect_problem(self, res, status: int, code: str, what: str) -> None:
        from ferry_client.models import Problem

        check(res.status_code == status, f"{what}: status {res.status_code}, not {status}")
        problem = typed(res.parsed, Problem, what)
        check(problem.code == code, f"{what}: code {problem.code}, not {code}")
        check(problem.status == status, f"{what}: problem status {problem.status}")
        check(problem.type_ == f"urn:ferry:problem:{code}", f"{what}: type {problem.type_}")
        check(bool(problem.detail), f"{what}: empty detail")
        step(f"{what}: typed Problem {status} {code}")


class Receiver:
    """A webhook receiver on 127.0.0.1: records each request's headers (lower-case, with the
    raw body under `_body`) and parsed JSON payload, and answers 204."""

    def __init__(self) -> None:
        self.messages: list[tuple[dict[str, str], dict[str, Any]]] = []
        lock = threading.Lock()
        self.lock = lock
        messages = self.messages

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                headers["_body"] = body.decode()
                with lock:
                    messages.append((headers, json.loads(body)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "Receiver":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait(self, done: Callable[[list], bool]) -> list:
        deadline = time.monotonic() + WAIT_LIMIT_S
        while True:
            with self.lock:
                got = list(self.messages)
            if done(got):
                return got
            check(time.monotonic() < deadline, f"webhooks: only {len(got)} message(s) came")
            time.sleep(0.05)


def retry_after(res) -> float | None:
    """The Retry-After header in seconds (Ferry sends whole seconds), or None when absent.

    The generated client exposes response headers only on the `*_detailed` calls; the spec
    documents Retry-After, but the generated models carry the body alone.
    """
    value = res.headers.get("Retry-After")
    if value is None:
        return None
    if not value.isdigit():
        fail(f"Retry-After is not whole seconds: {value!r}")
    return float(value)


if __name__ == "__main__":
    main()
