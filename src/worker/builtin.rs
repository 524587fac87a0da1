//! Built-in handlers, served with zero configuration.
//!
//! `digest` does real, streaming work on any input and exercises the whole protocol: it reads
//! each input chunk by chunk from the blob store, reports progress as it goes, publishes an
//! intermediate report half-way, and leaves a final `report.json` with, per input and per chunk,
//! the SHA-256 and byte statistics (min, max, mean, Shannon entropy) — and it checks each input's
//! overall SHA-256 against the digest recorded at upload.
//!
//! `noop` succeeds at once: for health checks and measuring the queue itself.

use std::time::Duration;

use futures_util::StreamExt;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::handler::{Handler, HandlerError, JobContext};

pub struct NoopHandler;

#[async_trait::async_trait]
impl Handler for NoopHandler {
    async fn run(&self, _ctx: &JobContext) -> Result<(), HandlerError> {
        Ok(())
    }
}

pub struct DigestHandler;

const DEFAULT_CHUNK: u64 = 16 << 20;

#[derive(Debug, Serialize)]
struct ChunkStats {
    index: u64,
    offset: u64,
    size: u64,
    sha256: String,
    min: u8,
    max: u8,
    mean: f64,
    entropy_bits: f64,
}

#[derive(Debug, Serialize)]
struct InputReport {
    name: String,
    size: u64,
    sha256: String,
    sha256_matches_upload: bool,
    chunks: Vec<ChunkStats>,
}

#[derive(Debug, Serialize)]
struct Report<'a> {
    job_id: String,
    chunk_size: u64,
    complete: bool,
    inputs: &'a [InputReport],
}

struct ChunkAcc {
    hasher: Sha256,
    histogram: [u64; 256],
    size: u64,
}

impl ChunkAcc {
    fn new() -> Self {
        Self {
            hasher: Sha256::new(),
            histogram: [0; 256],
            size: 0,
        }
    }

    fn update(&mut self, data: &[u8]) {
        self.hasher.update(data);
        for &b in data {
            self.histogram[b as usize] += 1;
        }
        self.size += data.len() as u64;
    }

    fn finish(self, index: u64, offset: u64) -> ChunkStats {
        let n = self.size.max(1) as f64;
        let min = self.histogram.iter().position(|&c| c > 0).unwrap_or(0) as u8;
        let max = self.histogram.iter().rposition(|&c| c > 0).unwrap_or(0) as u8;
        let sum: f64 = self
            .histogram
            .iter()
            .enumerate()
            .map(|(v, &c)| v as f64 * c as f64)
            .sum();
        let entropy = -self
            .histogram
            .iter()
            .filter(|&&c| c > 0)
            .map(|&c| {
                let p = c as f64 / n;
                p * p.log2()
            })
            .sum::<f64>();
        ChunkStats {
            index,
            offset,
            size: self.size,
            sha256: hex::encode(self.hasher.finalize()),
            min,
            max,
            mean: sum / n,
            entropy_bits: entropy,
        }
    }
}

fn param_u64(
    ctx: &JobContext,
    name: &str,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, HandlerError> {
    match ctx.params.get(name) {
        None => Ok(default),
        Some(v) => v.as_u64().filter(|n| range.contains(n)).ok_or_else(|| {
            HandlerError::permanent(
                "invalid_input",
                format!(
                    "params.{name} must be an integer in {}..={}",
                    range.start(),
                    range.end()
                ),
            )
        }),
    }
}

async fn write_report(
    ctx: &JobContext,
    file: &str,
    chunk_size: u64,
    complete: bool,
    inputs: &[InputReport],
) -> Result<(), HandlerError> {
    let report = Report {
        job_id: ctx.job_id.to_string(),
        chunk_size,
        complete,
        inputs,
    };
    let body = serde_json::to_vec_pretty(&report).expect("report serializes");
    tokio::fs::write(ctx.output_dir().await?.join(file), body)
        .await
        .map_err(|e| HandlerError::retryable("workspace", format!("cannot write {file}: {e}")))
}

#[async_trait::async_trait]
impl Handler for DigestHandler {
    async fn run(&self, ctx: &JobContext) -> Result<(), HandlerError> {
        let chunk_size = param_u64(ctx, "chunk_size", DEFAULT_CHUNK, 4096..=(1 << 30))?;
        // Slows the handler down on purpose (per chunk), for demonstrations and tests of
        // progress, intermediate results and cancel.
        let pace = Duration::from_millis(param_u64(ctx, "pace_ms", 0, 0..=60_000)?);
        let total: u64 = ctx.inputs.iter().map(|i| i.size as u64).sum();
        let mut done = 0u64;
        let mut reports: Vec<InputReport> = Vec::new();
        let mut intermediate_published = false;

        for input in &ctx.inputs {
            let mut stream = ctx.open_input(input).await?;
            let mut overall = Sha256::new();
            let mut chunks = Vec::new();
            let mut acc = ChunkAcc::new();
            let mut offset = 0u64;
            let mut index = 0u64;
            while let Some(piece) = stream.next().await {
                let mut piece = piece
                    .map_err(|e| HandlerError::retryable("input_unavailable", e.to_string()))?;
                overall.update(&piece);
                while !piece.is_empty() {
                    let room = (chunk_size - acc.size) as usize;
                    let take = room.min(piece.len());
                    let part = piece.split_to(take);
                    acc.update(&part);
                    done += take as u64;
                    if acc.size == chunk_size {
                        let full = std::mem::replace(&mut acc, ChunkAcc::new());
                        let size = full.size;
                        chunks.push(full.finish(index, offset));
                        offset += size;
                        index += 1;
                        if ctx.cancel.is_cancelled() {
                            return Err(HandlerError::canceled());
                        }
                        let percent = if total == 0 {
                            100.0
                        } else {
                            done as f64 * 100.0 / total as f64
                        };
                        ctx.progress(
                            Some(percent),
                            Some("digest".into()),
                            Some(format!(
                                "{}: chunk {index} done ({done} of {total} bytes)",
                                input.name
                            )),
                        );
                        if !pace.is_zero() {
                            tokio::select! {
                                _ = tokio::time::sleep(pace) => {}
                                _ = ctx.cancel.cancelled() => return Err(HandlerError::canceled()),
                            }
                        }
                        if !intermediate_published && total > 0 && done * 2 >= total {
                            write_partial(ctx, chunk_size, &reports, &input.name, &chunks).await?;
                            ctx.publish("partial-report.json", Some("application/json"), false)
                                .await?;
                            intermediate_published = true;
                        }
                    }
                }
            }
            if acc.size > 0 || offset == 0 {
                chunks.push(acc.finish(index, offset));
            }
            let sha256 = hex::encode(overall.finalize());
            let matches = sha256 == input.sha256;
            if !matches {
                ctx.log(format!(
                    "input {} does not match its upload digest",
                    input.name
                ));
            }
            reports.push(InputReport {
                name: input.name.clone(),
                size: input.size as u64,
                sha256,
                sha256_matches_upload: matches,
                chunks,
            });
        }
        ctx.progress(
            Some(100.0),
            Some("report".into()),
            Some("writing report.json".into()),
        );
        write_report(ctx, "report.json", chunk_size, true, &reports).await?;
        ctx.publish("report.json", Some("application/json"), true)
            .await?;
        if reports.iter().any(|r| !r.sha256_matches_upload) {
            return Err(HandlerError::permanent(
                "invalid_input",
                "an input's bytes no longer match the SHA-256 recorded at upload",
            ));
        }
        Ok(())
    }
}

/// The half-way report: finished inputs plus the chunks of the current one so far.
async fn write_partial(
    ctx: &JobContext,
    chunk_size: u64,
    finished: &[InputReport],
    current_name: &str,
    current_chunks: &[ChunkStats],
) -> Result<(), HandlerError> {
    #[derive(Serialize)]
    struct Partial<'a> {
        job_id: String,
        chunk_size: u64,
        complete: bool,
        inputs: &'a [InputReport],
        in_progress: InProgress<'a>,
    }
    #[derive(Serialize)]
    struct InProgress<'a> {
        name: &'a str,
        chunks: &'a [ChunkStats],
    }
    let body = serde_json::to_vec_pretty(&Partial {
        job_id: ctx.job_id.to_string(),
        chunk_size,
        complete: false,
        inputs: finished,
        in_progress: InProgress {
            name: current_name,
            chunks: current_chunks,
        },
    })
    .expect("report serializes");
    tokio::fs::write(ctx.output_dir().await?.join("partial-report.json"), body)
        .await
        .map_err(|e| {
            HandlerError::retryable(
                "workspace",
                format!("cannot write partial-report.json: {e}"),
            )
        })
}
