//! A webhook receiver for the tests: a real HTTP server on 127.0.0.1, port 0, on a thread and
//! runtime of its own, that records every request (headers, body) and answers as the test tells
//! it (status, `Retry-After`, a delay). Signatures are checked with the `standardwebhooks`
//! crate, the Standard Webhooks reference library — not with Ferry's own code.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, dev::ServerHandle, web};
use serde_json::Value;

/// How the receiver answers.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<String>,
    pub delay: Duration,
    /// A `Location` header (for redirects).
    pub location: Option<String>,
    /// The body; `answered STATUS` when absent.
    pub body: Option<String>,
}

impl Answer {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            retry_after: None,
            delay: Duration::ZERO,
            location: None,
            body: None,
        }
    }
}

/// One request as it arrived, and what it was answered.
#[derive(Clone, Debug)]
pub struct Received {
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
    pub answered: u16,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON payload")
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("no {name} header"))
    }

    /// Whether the signature verifies with `secret` (the reference library's check, timestamp
    /// tolerance included).
    pub fn verifies_with(&self, secret: &str) -> bool {
        let signer = standardwebhooks::Webhook::new(secret).expect("a whsec_ secret");
        signer.verify(&self.body, &self.headers).is_ok()
    }
}

#[derive(Default)]
struct State {
    received: Vec<Received>,
    answer: Option<Answer>,
}

pub struct Receiver {
    pub url: String,
    state: Arc<Mutex<State>>,
    stop: Option<actix_web::dev::ServerHandle>,
    thread: Option<std::thread::JoinHandle<()>>,
}

async fn receive(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<Arc<Mutex<State>>>,
) -> HttpResponse {
    let answer = state
        .lock()
        .unwrap()
        .answer
        .clone()
        .unwrap_or(Answer::status(200));
    let mut headers = http::HeaderMap::new();
    for (name, value) in req.headers() {
        headers.append(
            http::HeaderName::from_bytes(name.as_str().as_bytes()).unwrap(),
            http::HeaderValue::from_bytes(value.as_bytes()).unwrap(),
        );
    }
    tokio::time::sleep(answer.delay).await;
    state.lock().unwrap().received.push(Received {
        headers,
        body: body.to_vec(),
        answered: answer.status,
    });
    let mut res =
        HttpResponse::build(actix_web::http::StatusCode::from_u16(answer.status).unwrap());
    if let Some(after) = &answer.retry_after {
        res.insert_header(("retry-after", after.as_str()));
    }
    if let Some(location) = &answer.location {
        res.insert_header(("location", location.as_str()));
    }
    res.body(
        answer
            .body
            .unwrap_or_else(|| format!("answered {}", answer.status)),
    )
}

/// Runs an HTTP server on 127.0.0.1, port 0, with the routes `configure` sets, on a thread and
/// runtime of its own (so a test blocking its own runtime does not stall it); its port, its
/// handle (stopping it ends the thread) and the thread.
pub fn serve_on_own_thread(
    configure: impl Fn(&mut web::ServiceConfig) + Clone + Send + 'static,
) -> (u16, ServerHandle, std::thread::JoinHandle<()>) {
    let (ready_tx, ready_rx) = mpsc::channel();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let server = HttpServer::new(move || App::new().configure(configure.clone()))
                .workers(1)
                .disable_signals()
                .shutdown_timeout(1)
                .bind(("127.0.0.1", 0))
                .expect("bind");
            let port = server.addrs()[0].port();
            let server = server.run();
            ready_tx.send((port, server.handle())).unwrap();
            let _ = server.await;
        });
    });
    let (port, handle) = ready_rx.recv().expect("server started");
    (port, handle, thread)
}

impl Receiver {
    /// A receiver answering 200 until told otherwise.
    pub fn start() -> Receiver {
        let state = Arc::new(Mutex::new(State::default()));
        let data = web::Data::new(state.clone());
        let (port, handle, thread) = serve_on_own_thread(move |cfg| {
            cfg.app_data(data.clone()).default_service(web::to(receive));
        });
        Receiver {
            url: format!("http://127.0.0.1:{port}/hook"),
            state,
            stop: Some(handle),
            thread: Some(thread),
        }
    }

    pub fn answer(&self, answer: Answer) {
        self.state.lock().unwrap().answer = Some(answer);
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// Waits until `done` holds for what was received; panics after `within`.
    pub async fn wait_until(
        &self,
        within: Duration,
        what: &str,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let start = Instant::now();
        loop {
            let received = self.received();
            if done(&received) {
                return received;
            }
            if start.elapsed() > within {
                let types: Vec<String> = received
                    .iter()
                    .map(|r| format!("{}:{}", r.json()["type"], r.answered))
                    .collect();
                panic!("receiver: {what} not seen within {within:?}; got {types:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Requests answered 2xx, by `webhook-id`: how many times each was accepted.
    pub fn accepted_by_id(&self) -> BTreeMap<String, usize> {
        let mut seen = BTreeMap::new();
        for r in self
            .received()
            .iter()
            .filter(|r| (200..300).contains(&r.answered))
        {
            *seen.entry(r.header("webhook-id").to_owned()).or_default() += 1;
        }
        seen
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(handle) = self.stop.take() {
            // The server's future resolves, its runtime ends, the thread returns.
            drop(handle.stop(false));
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
