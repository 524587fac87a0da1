//! A small server-sent events client for the tests: opens a stream with reqwest, checks its
//! head against `openapi.yaml`, and parses its frames as the WHATWG HTML standard says an
//! `EventSource` does (lines `field: value`, one space after the colon dropped, `:` comments,
//! a blank line ends a frame). Every event's `data` is checked against the spec's schema for the
//! stream (`Event` for a job's stream, `FeedEvent` for the feed).

use std::time::Duration;

use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use crate::helpers::*;

/// Longer than any wait a stream makes between frames in the tests (heartbeats are at most
/// 15 s): reached only when the server hangs.
const FRAME_WITHIN: Duration = Duration::from_secs(60);

/// One frame: an event (`id`, `event`, `data`), or a `retry` or comment-only frame.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Frame {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: Option<String>,
    pub retry: Option<u64>,
    pub comments: Vec<String>,
}

impl Frame {
    pub fn is_event(&self) -> bool {
        self.data.is_some()
    }

    /// The event's data, parsed.
    pub fn json(&self) -> Value {
        serde_json::from_str(self.data.as_deref().expect("an event frame"))
            .expect("event data is JSON")
    }

    pub fn id(&self) -> &str {
        self.id.as_deref().expect("an event id")
    }

    pub fn event(&self) -> &str {
        self.event.as_deref().expect("an event type")
    }
}

pub struct EventStream {
    res: reqwest::Response,
    buf: Vec<u8>,
    frame: Frame,
    /// The spec's schema for the events' data.
    schema: Value,
    pub headers: HeaderMap,
}

/// What asking for a stream got: the stream, or a whole (non-stream) answer.
pub enum Opened {
    Stream(Box<EventStream>),
    Reply(Reply),
}

impl Opened {
    pub fn stream(self) -> EventStream {
        match self {
            Opened::Stream(stream) => *stream,
            Opened::Reply(reply) => {
                panic!("no event stream: {} {}", reply.status, reply.body)
            }
        }
    }

    pub fn reply(self) -> Reply {
        match self {
            Opened::Reply(reply) => reply,
            Opened::Stream(_) => panic!("an event stream where none was expected"),
        }
    }
}

impl TestApp {
    /// `GET path` at `base` with `Accept: text/event-stream` and `headers`.
    pub async fn open_events_at(&self, base: &str, path: &str, headers: Headers<'_>) -> Opened {
        let mut req = self
            .client
            .get(format!("{base}{path}"))
            .header("accept", "text/event-stream");
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let res = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let is_stream = res
            .headers()
            .get("content-type")
            .is_some_and(|v| v.as_bytes() == b"text/event-stream");
        if !is_stream {
            let reply = Reply::read(res).await;
            spec().check_reply("get", path, &reply);
            return Opened::Reply(reply);
        }
        let status = res.status().as_u16();
        assert_eq!(status, 200, "an event stream is a 200");
        let headers = res.headers().clone();
        // The head as the spec documents it (the body is checked frame by frame).
        spec().check_reply(
            "get",
            path,
            &Reply::build(status, headers.clone(), Vec::new()),
        );
        let schema = if path.starts_with("/v1/events") {
            json!({"$ref": "#/components/schemas/FeedEvent"})
        } else {
            json!({"$ref": "#/components/schemas/Event"})
        };
        Opened::Stream(Box::new(EventStream {
            res,
            buf: Vec::new(),
            frame: Frame::default(),
            schema,
            headers,
        }))
    }

    /// [`TestApp::open_events_at`] on the main server.
    pub async fn open_events(&self, path: &str, headers: Headers<'_>) -> Opened {
        self.open_events_at(&self.base, path, headers).await
    }
}

impl EventStream {
    /// The next frame; `None` once the stream has ended cleanly. Panics if the connection
    /// breaks (a stream must end properly), or if nothing comes for a minute.
    pub async fn next_frame(&mut self) -> Option<Frame> {
        loop {
            while let Some(end) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                let line = String::from_utf8(line).expect("UTF-8");
                let line = line.trim_end_matches('\n').trim_end_matches('\r');
                if let Some(frame) = self.take_line(line) {
                    return Some(frame);
                }
            }
            let chunk = tokio::time::timeout(FRAME_WITHIN, self.res.chunk())
                .await
                .unwrap_or_else(|_| panic!("no frame within {FRAME_WITHIN:?}"))
                .unwrap_or_else(|e| panic!("the event stream broke off: {e}"));
            match chunk {
                Some(bytes) => self.buf.extend_from_slice(&bytes),
                None => {
                    assert!(
                        self.buf.is_empty() && self.frame == Frame::default(),
                        "the stream ended inside a frame: {:?}",
                        String::from_utf8_lossy(&self.buf)
                    );
                    return None;
                }
            }
        }
    }

    /// Applies one line; returns the frame a blank line completes.
    fn take_line(&mut self, line: &str) -> Option<Frame> {
        if line.is_empty() {
            let frame = std::mem::take(&mut self.frame);
            if frame.is_event()
                && let Err(e) = spec().validate(&self.schema, &frame.json())
            {
                panic!("an event does not match the spec: {e}\n{frame:?}");
            }
            return (frame != Frame::default()).then_some(frame);
        }
        if let Some(comment) = line.strip_prefix(':') {
            self.frame.comments.push(comment.trim_start().to_owned());
            return None;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value).to_owned();
        match field {
            "id" => self.frame.id = Some(value),
            "event" => self.frame.event = Some(value),
            "data" => {
                let data = self.frame.data.get_or_insert_with(String::new);
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(&value);
            }
            "retry" => self.frame.retry = Some(value.parse().expect("retry is a number")),
            other => panic!("unknown field {other:?} in an event stream"),
        }
        None
    }

    /// The next event frame (skipping `retry` and comment frames), `None` at the end.
    pub async fn next_event(&mut self) -> Option<Frame> {
        loop {
            let frame = self.next_frame().await?;
            if frame.is_event() {
                return Some(frame);
            }
        }
    }

    /// Events until `stop` holds for one (included), which must come before the stream ends.
    pub async fn events_until(&mut self, stop: impl Fn(&Frame) -> bool) -> Vec<Frame> {
        let mut events = Vec::new();
        loop {
            let frame = self
                .next_event()
                .await
                .unwrap_or_else(|| panic!("the stream ended after {events:?}"));
            let done = stop(&frame);
            events.push(frame);
            if done {
                return events;
            }
        }
    }

    /// Every event until the stream ends.
    pub async fn rest(&mut self) -> Vec<Frame> {
        let mut events = Vec::new();
        while let Some(frame) = self.next_event().await {
            events.push(frame);
        }
        events
    }
}
