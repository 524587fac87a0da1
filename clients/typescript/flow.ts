// Ferry's whole client flow in TypeScript, through openapi-fetch typed by the `paths` that
// openapi-typescript generates from openapi.yaml into `schema.d.ts` beside this file (at test
// time, in a temporary copy of this folder; never committed, never edited).
//
// Against `--server URL`: streams an upload, creates a `digest` job from it (JSON form) and a
// job from a file in one request (`createJobWithFile`, of the model kind `--model-kind`, whose
// results have nested names such as `masks/mask.json`), waits for both by polling with the
// server's `Retry-After`, lists and downloads their results checking each SHA-256 against the
// listing, reads the events (kinds and `seq` order), cancels a running job of the model kind
// (`{"mode": "sleep"}` sleeps until stopped), deletes a job, and reads two errors as typed
// `Problem`s. Any mismatch exits non-zero with a message saying what differed.

import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { mkdtemp, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { parseArgs } from "node:util";

import createClient from "openapi-fetch";

import type { components, paths } from "./schema.js";

type Job = components["schemas"]["Job"];
type Problem = components["schemas"]["Problem"];

const FINISHED: ReadonlySet<Job["status"]> = new Set(["succeeded", "failed", "canceled"]);
// No single wait in this flow should take longer; a stuck job fails the flow instead of hanging.
const WAIT_LIMIT_MS = 120_000;

class FlowFailure extends Error {}

function check(condition: boolean, message: string): asserts condition {
  if (!condition) throw new FlowFailure(message);
}

function step(message: string): void {
  console.log(`flow.ts: ${message}`);
}

/** The typed body of a response that must have one (`data` of openapi-fetch). */
function need<T>(data: T | undefined, response: Response, what: string): T {
  check(data !== undefined, `${what}: status ${response.status} without the expected body`);
  return data;
}

/**
 * A body the spec documents as JSON or as an event stream (text, for `Accept:
 * text/event-stream`): this flow asks for JSON.
 */
function json<T extends object>(body: T | string, what: string): T {
  if (typeof body === "string") throw new FlowFailure(`${what}: text where JSON was asked for`);
  return body;
}

/** Retry-After in seconds (Ferry sends whole seconds), or null when absent. */
function retryAfter(response: Response): number | null {
  const value = response.headers.get("Retry-After");
  if (value === null) return null;
  check(/^[0-9]+$/.test(value), `Retry-After is not whole seconds: ${value}`);
  return Number(value);
}

const sleep = (seconds: number) => new Promise((done) => setTimeout(done, seconds * 1000));

async function sha256File(path: string): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest("hex");
}

function reprDigest(shaHex: string): string {
  return `sha-256=:${Buffer.from(shaHex, "hex").toString("base64")}:`;
}

/**
 * A file as a streamed request body: a web ReadableStream read from disk chunk by chunk, which
 * fetch sends with chunked transfer encoding (`duplex: "half"` is required for a stream body).
 * openapi-typescript types a `format: binary` body as `string`, so the stream is passed through
 * a cast and sent as is by an identity `bodySerializer`.
 */
function fileBody(path: string): string {
  return Readable.toWeb(createReadStream(path)) as unknown as string;
}
const rawBody = { bodySerializer: (body: unknown) => body, duplex: "half" } as const;

class Flow {
  private readonly api;
  private scratch = "";

  constructor(
    private readonly server: string,
    private readonly modelKind: string,
    private readonly apiKey: string | undefined,
  ) {
    const headers = apiKey === undefined ? {} : { Authorization: `Bearer ${apiKey}` };
    this.api = createClient<paths>({ baseUrl: server, headers });
  }

  async run(): Promise<void> {
    this.scratch = await mkdtemp(join(tmpdir(), "ferry-flow-ts-"));
    try {
      const scan = await this.makeFile("scan.bin", 3 * 1024 * 1024 + 123);
      const uploadId = await this.upload(scan);
      const job = await this.createJob(uploadId);
      await this.waitFinished(job.id, "succeeded");
      await this.checkResults(job.id, ["report.json"]);
      await this.checkEvents(job.id);

      const second = await this.makeFile("second.bin", 200 * 1024 + 7);
      const one = await this.createJobWithFile(second);
      await this.waitFinished(one.id, "succeeded");
      await this.checkResults(one.id, ["masks/mask.json"]);

      await this.cancelRunningJob();
      await this.deleteJob(one.id);
      await this.unknownKindProblem(uploadId);
      if (this.apiKey !== undefined) await this.unauthenticatedProblem();
      await this.manageWebhook();
    } finally {
      await rm(this.scratch, { recursive: true, force: true });
    }
  }

  private async makeFile(name: string, size: number): Promise<string> {
    const path = join(this.scratch, name);
    const bytes = Buffer.alloc(size);
    for (let i = 0; i < size; i++) bytes[i] = (i * 2654435761) >>> 24;
    await writeFile(path, bytes);
    return path;
  }

  private async upload(path: string): Promise<string> {
    const sha = await sha256File(path);
    const { data, error, response } = await this.api.POST("/v1/uploads", {
      params: { header: { "Repr-Digest": reprDigest(sha) } },
      body: fileBody(path),
      headers: { "Content-Type": "application/octet-stream" },
      ...rawBody,
    });
    check(response.status === 201, `createUpload: ${response.status} ${JSON.stringify(error)}`);
    const upload = need(data, response, "createUpload");
    const size = (await stat(path)).size;
    check(upload.sha256 === sha, `upload sha256 ${upload.sha256} != ${sha}`);
    check(upload.size === size, `upload size ${upload.size} != ${size}`);
    const location = response.headers.get("Location");
    check(location === `/v1/uploads/${upload.id}`, `createUpload Location: ${location}`);
    step(`uploaded ${upload.id} (${upload.size} bytes, streamed)`);
    return upload.id;
  }

  private async createJob(uploadId: string): Promise<Job> {
    const { data, error, response } = await this.api.POST("/v1/jobs", {
      body: {
        kind: "digest",
        inputs: { scan: uploadId },
        params: { chunk_size: 1 << 20 },
        priority: 5,
        timeout: "5m",
      },
    });
    check(response.status === 202, `createJob: ${response.status} ${JSON.stringify(error)}`);
    const job = need(data, response, "createJob");
    this.checkAccepted(response, job, "createJob");
    check(job.kind === "digest" && job.priority === 5, `createJob echoed ${JSON.stringify(job)}`);
    step(`created ${job.id} (JSON form)`);
    return job;
  }

  private async createJobWithFile(path: string): Promise<Job> {
    const { data, error, response } = await this.api.POST("/v1/kinds/{kind}/jobs", {
      params: {
        path: { kind: this.modelKind },
        query: { input: "second", params_json: JSON.stringify({ mode: "ok" }), max_attempts: 2 },
      },
      body: fileBody(path),
      headers: { "Content-Type": "application/octet-stream" },
      ...rawBody,
    });
    check(
      response.status === 202,
      `createJobWithFile: ${response.status} ${JSON.stringify(error)}`,
    );
    const job = need(data, response, "createJobWithFile");
    this.checkAccepted(response, job, "createJobWithFile");
    check(job.max_attempts === 2, `createJobWithFile max_attempts ${job.max_attempts}`);
    check(job.params["mode"] === "ok", `createJobWithFile params ${JSON.stringify(job.params)}`);
    check(job.inputs[0]?.name === "second", `inputs ${JSON.stringify(job.inputs)}`);
    step(`created ${job.id} (one-request form)`);
    return job;
  }

  private checkAccepted(response: Response, job: Job, what: string): void {
    const location = response.headers.get("Location");
    check(location === `/v1/jobs/${job.id}`, `${what} Location: ${location}`);
    check(job.status === "queued", `${what}: a new job is ${job.status}`);
    check(job.progress === null && job.error === null, `${what}: new job ${JSON.stringify(job)}`);
    check(retryAfter(response) !== null, `${what}: no Retry-After on a queued job`);
  }

  /** Polls getJob until `done(job)`, sleeping what each answer's Retry-After says. */
  private async poll(id: string, done: (job: Job) => boolean, what: string): Promise<Job> {
    const deadline = Date.now() + WAIT_LIMIT_MS;
    for (let polls = 1; ; polls++) {
      const { data, error, response } = await this.api.GET("/v1/jobs/{id}", {
        params: { path: { id } },
      });
      check(response.status === 200, `getJob: ${response.status} ${JSON.stringify(error)}`);
      const job = need(data, response, "getJob");
      const wait = retryAfter(response);
      if (FINISHED.has(job.status)) {
        check(wait === null, `getJob: Retry-After ${wait} on a finished job`);
      } else {
        check(wait !== null, `getJob: no Retry-After on a ${job.status} job`);
      }
      if (done(job)) {
        step(`${id} ${what} after ${polls} poll(s)`);
        return job;
      }
      check(!FINISHED.has(job.status), `${id} finished as ${job.status}: ${JSON.stringify(job)}`);
      check(wait !== null && Date.now() < deadline, `${id} not ${what} in time`);
      await sleep(wait);
    }
  }

  private async waitFinished(id: string, want: Job["status"]): Promise<void> {
    const job = await this.poll(id, (j) => FINISHED.has(j.status), "finished");
    check(job.status === want, `${id} ended ${job.status}, not ${want}: ${JSON.stringify(job)}`);
  }

  private async checkResults(id: string, finalNames: string[]): Promise<void> {
    const listed = await this.api.GET("/v1/jobs/{id}/results", { params: { path: { id } } });
    const results = need(listed.data, listed.response, "listJobResults").items;
    const names = results.filter((r) => r.final).map((r) => r.name);
    for (const name of finalNames) {
      check(names.includes(name), `${id}: final results ${names}, expected ${finalNames}`);
    }
    for (const result of results) {
      const path = { id, name: result.name };
      // parseAs "stream": the body is hashed chunk by chunk as it arrives, never held whole.
      const got = await this.api.GET("/v1/jobs/{id}/results/{name}", {
        params: { path },
        parseAs: "stream",
      });
      check(got.response.status === 200, `download ${result.name}: ${got.response.status}`);
      const body = need(got.data, got.response, `download ${result.name}`);
      check(body !== null, `download ${result.name}: no body`);
      const hash = createHash("sha256");
      let size = 0;
      for await (const chunk of body) {
        hash.update(chunk);
        size += chunk.byteLength;
      }
      const sha = hash.digest("hex");
      check(sha === result.sha256, `${result.name}: sha256 ${sha} != listed ${result.sha256}`);
      check(size === result.size, `${result.name}: ${size} bytes != listed ${result.size}`);
      check(got.response.headers.get("ETag") === `"${sha}"`, `${result.name}: ETag`);
      // A conditional re-download with the listed digest is answered 304, without a body.
      const again = await this.api.GET("/v1/jobs/{id}/results/{name}", {
        params: { path, header: { "If-None-Match": `"${result.sha256}"` } },
        parseAs: "stream",
      });
      const status = again.response.status;
      check(status === 304, `${result.name} If-None-Match: ${status}`);
    }
    step(`${id}: ${results.length} result(s) downloaded, SHA-256 checked`);
  }

  private async checkEvents(id: string): Promise<void> {
    const all = await this.api.GET("/v1/jobs/{id}/events", { params: { path: { id } } });
    const events = json(need(all.data, all.response, "listJobEvents"), "listJobEvents").items;
    const kinds = events.map((e) => e.kind);
    const seqs = events.map((e) => e.seq).join(",");
    check(seqs === events.map((_, i) => i + 1).join(","), `seq of ${kinds}: ${seqs}`);
    check(kinds[0] === "queued" && kinds[1] === "started", `events start ${kinds}`);
    check(kinds[kinds.length - 1] === "succeeded", `events end ${kinds}`);
    check(kinds.includes("result"), `no result event in ${kinds}`);
    // Following the log from a seq gives exactly what came after it.
    const tail = await this.api.GET("/v1/jobs/{id}/events", {
      params: { path: { id }, query: { after: 2 } },
    });
    const rest = json(need(tail.data, tail.response, "after=2"), "listJobEvents after=2").items;
    check(
      rest.map((e) => e.seq).join(",") === events.slice(2).map((e) => e.seq).join(","),
      "events after=2",
    );
    step(`${id}: events ${kinds}`);
  }

  private async cancelRunningJob(): Promise<void> {
    const path = await this.makeFile("slow.bin", 1024);
    const created = await this.api.POST("/v1/kinds/{kind}/jobs", {
      params: {
        path: { kind: this.modelKind },
        query: { params_json: JSON.stringify({ mode: "sleep" }) },
      },
      body: fileBody(path),
      headers: { "Content-Type": "application/octet-stream" },
      ...rawBody,
    });
    const job = need(created.data, created.response, `createJobWithFile (${this.modelKind})`);
    await this.poll(job.id, (j) => j.status === "running", "running");
    const { data, response } = await this.api.POST("/v1/jobs/{id}/cancel", {
      params: { path: { id: job.id } },
    });
    check(response.status === 202, `cancelJob (running): ${response.status}`);
    const asked = need(data, response, "cancelJob");
    check(asked.cancel_requested, `cancelJob: cancel_requested false: ${JSON.stringify(asked)}`);
    check(response.headers.get("Location") === `/v1/jobs/${job.id}`, "cancelJob Location");
    const wait = retryAfter(response);
    check(wait !== null, "cancelJob: no Retry-After");
    await sleep(wait);
    await this.waitFinished(job.id, "canceled");
    // A finished job cannot be canceled again: a typed 409.
    const again = await this.api.POST("/v1/jobs/{id}/cancel", {
      params: { path: { id: job.id } },
    });
    expectProblem(again.error, again.response, 409, "job_finished", "cancelJob (canceled)");
  }

  private async deleteJob(id: string): Promise<void> {
    const deleted = await this.api.DELETE("/v1/jobs/{id}", { params: { path: { id } } });
    check(deleted.response.status === 204, `deleteJob: ${deleted.response.status}`);
    const gone = await this.api.GET("/v1/jobs/{id}", { params: { path: { id } } });
    expectProblem(gone.error, gone.response, 404, "job_not_found", "getJob (deleted)");
    step(`deleted ${id}`);
  }

  /** A server-wide webhook endpoint's life: created (secret shown once), read (no secret),
   * disabled, an address the server refuses is a typed 422, deleted. (Deliveries and their
   * signatures are checked by the Python flow, which runs a receiver.) */
  private async manageWebhook(): Promise<void> {
    const created = await this.api.POST("/v1/webhooks", {
      body: { url: "https://hooks.example.org/ferry", events: ["succeeded", "failed"] },
    });
    const hook = need(created.data, created.response, "createWebhook");
    check(created.response.status === 201, `createWebhook: ${created.response.status}`);
    check(hook.secret?.startsWith("whsec_") === true, "createWebhook: a whsec_ secret");
    check(hook.events.join() === "succeeded,failed", `createWebhook events ${hook.events}`);
    const path = { params: { path: { id: hook.id } } };
    const read = await this.api.GET("/v1/webhooks/{id}", path);
    check(need(read.data, read.response, "getWebhook").secret === null, "getWebhook: no secret");
    const off = await this.api.POST("/v1/webhooks/{id}/disable", path);
    const disabled = need(off.data, off.response, "disableWebhook");
    check(!disabled.enabled && disabled.disabled_reason === "disabled", "disableWebhook");
    const refused = await this.api.POST("/v1/webhooks", {
      body: { url: "http://169.254.169.254/latest/meta-data" },
    });
    expectProblem(refused.error, refused.response, 422, "invalid_field", "createWebhook (metadata)");
    const deleted = await this.api.DELETE("/v1/webhooks/{id}", path);
    check(deleted.response.status === 204, `deleteWebhook: ${deleted.response.status}`);
    step(`webhook endpoint ${hook.id} created, read, disabled and deleted`);
  }

  /** Without the key: a typed `401` problem, with the Bearer challenge. */
  private async unauthenticatedProblem(): Promise<void> {
    const anonymous = createClient<paths>({ baseUrl: this.server });
    const { error, response } = await anonymous.GET("/v1/jobs");
    expectProblem(error, response, 401, "unauthenticated", "listJobs without a key");
    const challenge = response.headers.get("WWW-Authenticate");
    check(challenge === 'Bearer realm="ferry"', `listJobs without a key: ${challenge}`);
  }

  private async unknownKindProblem(uploadId: string): Promise<void> {
    const { error, response } = await this.api.POST("/v1/jobs", {
      body: { kind: "no-such-kind", inputs: { scan: uploadId } },
    });
    expectProblem(error, response, 422, "unknown_kind", "createJob (unknown kind)");
  }
}

/** `error` is typed by openapi-fetch as the operation's documented error bodies (`Problem`). */
function expectProblem(
  error: Problem | undefined,
  response: Response,
  status: number,
  code: string,
  what: string,
): void {
  check(response.status === status, `${what}: status ${response.status}, not ${status}`);
  const problem = need(error, response, what);
  check(problem.code === code, `${what}: code ${problem.code}, not ${code}`);
  check(problem.status === status, `${what}: problem status ${problem.status}`);
  check(problem.type === `urn:ferry:problem:${code}`, `${what}: type ${problem.type}`);
  check(problem.detail.length > 0, `${what}: empty detail`);
  const type = response.headers.get("Content-Type");
  check(type === "application/problem+json", `${what}: Content-Type ${type}`);
  step(`${what}: typed Problem ${status} ${code}`);
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      server: { type: "string" },
      "model-kind": { type: "string", default: "model" },
      "api-key": { type: "string" },
    },
  });
  check(
    values.server !== undefined,
    "usage: node flow.js --server URL [--model-kind KIND] [--api-key KEY]",
  );
  await new Flow(values.server, values["model-kind"] ?? "model", values["api-key"]).run();
  step("OK");
}

main().catch((err: unknown) => {
  const message = err instanceof FlowFailure ? err.message : err instanceof Error ? err.stack : err;
  console.error(`flow.ts: FAILED: ${message}`);
  process.exit(1);
});
