//! `slimlm serve`: an OpenAI-compatible HTTP server with continuous batching.
//!
//! The HTTP side (axum on a single-threaded tokio runtime) parses and checks each request, then hands
//! it to the [scheduler](scheduler), one thread that owns a [`crate::Batch`] and steps every active
//! request together: one pass over the weights per step for all of them. Tokens flow back through a
//! channel per request, as a JSON response or as server-sent events. A full queue answers 429 with
//! `Retry-After`; a client that disconnects cancels its generation; SIGTERM (or Ctrl-C) stops
//! accepting connections and lets the requests in flight finish.
//!
//! Endpoints: `POST /v1/completions`, `GET /v1/models`, `GET /health`, `GET /metrics` (Prometheus).

mod metrics;
mod openai;
mod scheduler;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::decode::Decoder;
use crate::error::Error;
use crate::kv_cache::KvDtype;
use crate::model::Model;

pub use metrics::Metrics;
use openai::{finish_reason, visible_text, ApiError, Logprobs, Prompt};
use scheduler::{Event, Job, Limits, Scheduler};

/// Largest request body accepted (413 beyond).
pub const MAX_BODY: usize = 1 << 20;

/// How to serve.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub host: String,
    /// 0 picks a free port (printed when listening).
    pub port: u16,
    /// Most sequences stepped together.
    pub max_batch: usize,
    /// Most requests waiting for a place in the batch; more are answered 429.
    pub queue: usize,
    /// Threads of each forward pass.
    pub threads: usize,
    pub kv_dtype: KvDtype,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            host: "127.0.0.1".into(),
            port: 8080,
            max_batch: 16,
            queue: 64,
            threads: rayon::current_num_threads(),
            kv_dtype: KvDtype::F32,
        }
    }
}

struct App {
    model: Arc<Model>,
    /// The model's name in responses: its directory's name.
    model_id: String,
    scheduler: Scheduler,
    metrics: Arc<Metrics>,
    started: u64,
    next_id: AtomicU64,
}

/// Serves `model` until SIGTERM or Ctrl-C; `ready(addr)` is called once listening.
pub fn serve(
    model: Model,
    opts: &ServeOptions,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), Error> {
    let io = |e: std::io::Error| Error::Io {
        path: format!("{}:{}", opts.host, opts.port).into(),
        source: e,
    };
    if opts.max_batch == 0 {
        return Err(Error::input("the batch must hold at least 1 sequence"));
    }
    let model_id = model
        .dir()
        .canonicalize()
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "slimlm".into());
    let model = Arc::new(model);
    let metrics = Arc::new(Metrics::default());
    let limits = Limits {
        max_batch: opts.max_batch,
        queue: opts.queue,
        threads: opts.threads,
        kv_dtype: opts.kv_dtype,
    };
    let app = Arc::new(App {
        scheduler: Scheduler::start(model.clone(), limits, metrics.clone()),
        model,
        model_id,
        metrics,
        started: unix_now(),
        next_id: AtomicU64::new(0),
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io)?;
    let served = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind((opts.host.as_str(), opts.port))
            .await
            .map_err(io)?;
        ready(listener.local_addr().map_err(io)?);
        axum::serve(listener, router(app.clone()))
            .with_graceful_shutdown(shutdown_signal())
            .await
            .map_err(io)
    });
    // Connections are closed; let the scheduler finish what it was given.
    app.scheduler.shutdown();
    served
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/metrics", get(metrics_text))
        .fallback(|| async {
            ApiError {
                status: StatusCode::NOT_FOUND,
                message: "no such endpoint".into(),
                kind: "invalid_request_error",
                param: None,
                code: None,
            }
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(app)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn models(State(app): State<Arc<App>>) -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{
            "id": app.model_id,
            "object": "model",
            "created": app.started,
            "owned_by": "slimlm",
        }],
    }))
}

async fn metrics_text(State(app): State<Arc<App>>) -> Response {
    app.metrics
        .queue_depth
        .store(app.scheduler.waiting(), Ordering::Relaxed);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
        .into_response()
}

async fn completions(State(app): State<Arc<App>>, body: Result<Bytes, BytesRejection>) -> Response {
    let arrived = Instant::now();
    Metrics::add(&app.metrics.requests, 1);
    match start_completion(&app, body, arrived) {
        Ok(r) => r.respond(app).await,
        Err(e) => {
            let m = &app.metrics;
            Metrics::add(
                if e.status == StatusCode::TOO_MANY_REQUESTS {
                    &m.rejected
                } else {
                    &m.errors
                },
                1,
            );
            e.into_response()
        }
    }
}

/// A request queued in the scheduler, and what its response needs.
struct Started {
    events: mpsc::UnboundedReceiver<Event>,
    stream: bool,
    /// The prompt's text when echoed.
    echo: Option<String>,
    prompt_tokens: usize,
    id: String,
}

fn start_completion(
    app: &App,
    body: Result<Bytes, BytesRejection>,
    arrived: Instant,
) -> Result<Started, ApiError> {
    let body = body.map_err(|e| ApiError {
        status: e.status(),
        message: e.body_text(),
        kind: "invalid_request_error",
        param: None,
        code: None,
    })?;
    let req = openai::parse_completion(&body)?;
    let model = &app.model;
    let tokenizer = model.tokenizer();
    let prompt = match &req.prompt {
        Prompt::Text(s) => tokenizer
            .encode(s)
            .map_err(|e| ApiError::invalid(Some("prompt"), e.to_string()))?,
        Prompt::Ids(ids) => ids.clone(),
    };
    if prompt.is_empty() {
        return Err(ApiError::invalid(
            Some("prompt"),
            "the prompt has no tokens",
        ));
    }
    let vocab = model.config.vocab_size;
    if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= vocab) {
        let e = Error::TokenOutOfRange { token: bad, vocab };
        return Err(ApiError::invalid(Some("prompt"), e.to_string()));
    }
    let n_ctx = model.config.n_ctx;
    if req.opts.check_fits(0, prompt.len(), n_ctx).is_err() {
        return Err(ApiError::invalid(
            Some("max_tokens"),
            format!(
                "this model's context is {n_ctx} tokens, but the prompt has {} tokens and max_tokens \
                 is {} (the prompt and max_tokens - 1 must fit)",
                prompt.len(),
                req.opts.max_tokens
            ),
        )
        .with_code("context_length_exceeded"));
    }
    let decoder = Decoder::new(&req.opts, model.eos_token_ids())
        .map_err(|e| ApiError::invalid(None, e.to_string()))?;
    let echo = req.echo.then(|| match &req.prompt {
        Prompt::Text(s) => s.clone(),
        Prompt::Ids(ids) => tokenizer.decode(ids).unwrap_or_default(),
    });
    let (tx, rx) = mpsc::unbounded_channel();
    let prompt_tokens = prompt.len();
    let job = Job {
        prompt,
        decoder,
        events: tx,
        arrived,
    };
    if !app.scheduler.submit(job) {
        return Err(ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: "the server is busy (its queue is full); retry after a second".into(),
            kind: "server_error",
            param: None,
            code: Some("queue_full"),
        });
    }
    let n = app.next_id.fetch_add(1, Ordering::Relaxed);
    Ok(Started {
        events: rx,
        stream: req.stream,
        echo,
        prompt_tokens,
        id: format!("cmpl-{:x}{n:06x}", app.started),
    })
}

impl Started {
    async fn respond(self, app: Arc<App>) -> Response {
        if self.stream {
            self.respond_stream(app)
        } else {
            self.respond_whole(app).await
        }
    }

    /// Waits for the whole completion.
    async fn respond_whole(mut self, app: Arc<App>) -> Response {
        let tokenizer = app.model.tokenizer();
        let mut text = self.echo.clone().unwrap_or_default();
        let mut logprobs = Logprobs::starting_at(text.len());
        let mut with_logprobs = false;
        let mut completion_tokens = 0;
        let finish = loop {
            match self.events.recv().await {
                Some(Event::Step(step)) => {
                    completion_tokens += 1;
                    text.push_str(visible_text(tokenizer, &step));
                    with_logprobs |= step.logprob.is_some();
                    logprobs.push(tokenizer, &step);
                    if let Some(f) = step.finish {
                        break f;
                    }
                }
                Some(Event::Error(msg)) => return ApiError::internal(msg).into_response(),
                None => return ApiError::internal("the generation ended early").into_response(),
            }
        };
        Json(json!({
            "id": self.id,
            "object": "text_completion",
            "created": unix_now(),
            "model": app.model_id,
            "choices": [{
                "text": text,
                "index": 0,
                "logprobs": if with_logprobs { logprobs.to_json() } else { Value::Null },
                "finish_reason": finish_reason(finish),
            }],
            "usage": {
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": self.prompt_tokens + completion_tokens,
            },
        }))
        .into_response()
    }

    /// Server-sent events: a chunk per token with text (or log-probabilities), the last one with the
    /// finish reason, then `[DONE]`. A task forwards the scheduler's events; when the client goes away
    /// the stream is dropped, the task's next send fails, and dropping its receiver cancels the
    /// generation.
    fn respond_stream(mut self, app: Arc<App>) -> Response {
        let (tx, rx) = mpsc::unbounded_channel::<Result<SseEvent, Infallible>>();
        tokio::spawn(async move {
            let tokenizer = app.model.tokenizer();
            let created = unix_now();
            let chunk = |text: &str, logprobs: Value, finish: Option<&str>| {
                SseEvent::default().data(
                    json!({
                        "id": self.id,
                        "object": "text_completion",
                        "created": created,
                        "model": app.model_id,
                        "choices": [{
                            "text": text,
                            "index": 0,
                            "logprobs": logprobs,
                            "finish_reason": finish,
                        }],
                    })
                    .to_string(),
                )
            };
            let mut offset = 0;
            if let Some(echo) = &self.echo {
                offset = echo.len();
                if tx.send(Ok(chunk(echo, Value::Null, None))).is_err() {
                    return;
                }
            }
            while let Some(ev) = self.events.recv().await {
                let step = match ev {
                    Event::Step(s) => s,
                    Event::Error(msg) => {
                        let e = ApiError::internal(msg).body();
                        let _ = tx.send(Ok(SseEvent::default().data(e.to_string())));
                        return;
                    }
                };
                let finish = step.finish.map(finish_reason);
                let text = visible_text(tokenizer, &step);
                let lp = if step.logprob.is_some() {
                    let mut l = Logprobs::starting_at(offset);
                    l.push(tokenizer, &step);
                    l.to_json()
                } else {
                    Value::Null
                };
                offset += text.len();
                if (!text.is_empty() || !lp.is_null() || finish.is_some())
                    && tx.send(Ok(chunk(text, lp, finish))).is_err()
                {
                    return;
                }
                if finish.is_some() {
                    let _ = tx.send(Ok(SseEvent::default().data("[DONE]")));
                    return;
                }
            }
        });
        Sse::new(UnboundedReceiverStream::new(rx))
            .keep_alive(KeepAlive::default())
            .into_response()
    }
}
