//! The OpenAI completions API: parsing a request (with errors in OpenAI's shape) and the JSON of
//! responses and stream chunks.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

use crate::decode::{Finish, Step};
use crate::generate::GenerateOptions;
use crate::sampler::Sampling;
use crate::tokenizer::Tokenizer;

/// Most alternatives `logprobs` may ask for (OpenAI's limit).
pub const MAX_LOGPROBS: u64 = 5;
/// Most stop strings (OpenAI's limit).
pub const MAX_STOP: usize = 4;

/// An error answered as `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<&'static str>,
    pub code: Option<&'static str>,
}

impl ApiError {
    /// A 400 `invalid_request_error` about `param`.
    pub fn invalid(param: Option<&'static str>, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param,
            code: None,
        }
    }

    /// An error of the server itself (500).
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
        }
    }

    pub fn with_code(mut self, code: &'static str) -> ApiError {
        self.code = Some(code);
        self
    }

    pub fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.body())).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            // The queue moves at the speed of a few decode steps: a second is plenty.
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        r
    }
}

/// The prompt as given: text, or token ids.
pub enum Prompt {
    Text(String),
    Ids(Vec<u32>),
}

/// A parsed `POST /v1/completions`.
pub struct CompletionRequest {
    pub prompt: Prompt,
    pub opts: GenerateOptions,
    pub echo: bool,
    pub stream: bool,
}

/// Parses and checks a completions request body (everything that needs no model).
pub fn parse_completion(body: &[u8]) -> Result<CompletionRequest, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(None, format!("the body is not valid JSON: {e}")))?;
    let Value::Object(o) = v else {
        return Err(ApiError::invalid(None, "the body must be a JSON object"));
    };
    let prompt = parse_prompt(o.get("prompt"))?;
    let max_tokens = uint(&o, "max_tokens")?.unwrap_or(16);
    if max_tokens == 0 {
        return Err(ApiError::invalid(
            Some("max_tokens"),
            "max_tokens must be at least 1",
        ));
    }
    let temperature = number(&o, "temperature")?.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            Some("temperature"),
            format!("temperature must be between 0 and 2, got {temperature}"),
        ));
    }
    let top_p = number(&o, "top_p")?.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid(
            Some("top_p"),
            format!("top_p must be in (0, 1], got {top_p}"),
        ));
    }
    let top_k = uint(&o, "top_k")?.unwrap_or(0);
    for (name, limit) in [("n", 1), ("best_of", 1)] {
        if let Some(n) = uint(&o, name)? {
            if n != limit {
                return Err(ApiError::invalid(
                    Some(if name == "n" { "n" } else { "best_of" }),
                    format!("only {name} = 1 is supported, got {n}"),
                ));
            }
        }
    }
    let logprobs = uint(&o, "logprobs")?;
    if logprobs.is_some_and(|k| k > MAX_LOGPROBS) {
        return Err(ApiError::invalid(
            Some("logprobs"),
            format!("logprobs must be between 0 and {MAX_LOGPROBS}"),
        ));
    }
    let echo = boolean(&o, "echo")?.unwrap_or(false);
    if echo && logprobs.is_some() {
        return Err(ApiError::invalid(
            Some("echo"),
            "echo together with logprobs (the prompt's log-probabilities) is not supported",
        ));
    }
    let stream = boolean(&o, "stream")?.unwrap_or(false);
    let stop = parse_stop(o.get("stop"))?;
    let seed = match o.get("seed") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(
            n.as_u64()
                .or_else(|| n.as_i64().map(|i| i as u64))
                .ok_or_else(|| ApiError::invalid(Some("seed"), "seed must be an integer"))?,
        ),
        Some(_) => return Err(ApiError::invalid(Some("seed"), "seed must be an integer")),
    };
    let sampling = if temperature == 0.0 {
        Sampling::Greedy
    } else {
        Sampling::Random {
            temperature: temperature as f32,
            top_k: top_k as usize,
            top_p: top_p as f32,
            seed: seed.unwrap_or_else(random_seed),
        }
    };
    Ok(CompletionRequest {
        prompt,
        opts: GenerateOptions {
            max_tokens: usize::try_from(max_tokens).unwrap_or(usize::MAX),
            sampling,
            stop_at_eos: true,
            stop,
            logprobs: logprobs.map(|k| k as usize),
            cancel: None,
        },
        echo,
        stream,
    })
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

fn parse_prompt(v: Option<&Value>) -> Result<Prompt, ApiError> {
    let bad = || {
        ApiError::invalid(
            Some("prompt"),
            "prompt must be a string, a list of one string, a list of token ids or a list of one list of token ids",
        )
    };
    let ids = |a: &[Value]| -> Result<Vec<u32>, ApiError> {
        a.iter()
            .map(|t| {
                t.as_u64()
                    .and_then(|t| u32::try_from(t).ok())
                    .ok_or_else(bad)
            })
            .collect()
    };
    let prompt = match v {
        Some(Value::String(s)) => Prompt::Text(s.clone()),
        Some(Value::Array(a)) => match a.as_slice() {
            [Value::String(s)] => Prompt::Text(s.clone()),
            [Value::Array(inner)] => Prompt::Ids(ids(inner)?),
            a if a.iter().all(Value::is_number) => Prompt::Ids(ids(a)?),
            [_, _, ..] if a.iter().all(|x| x.is_string() || x.is_array()) => {
                return Err(ApiError::invalid(
                    Some("prompt"),
                    "only one prompt per request is supported",
                ))
            }
            _ => return Err(bad()),
        },
        None | Some(Value::Null) => {
            return Err(ApiError::invalid(Some("prompt"), "prompt is required"))
        }
        Some(_) => return Err(bad()),
    };
    let empty = match &prompt {
        Prompt::Text(s) => s.is_empty(),
        Prompt::Ids(v) => v.is_empty(),
    };
    if empty {
        return Err(ApiError::invalid(Some("prompt"), "the prompt is empty"));
    }
    Ok(prompt)
}

fn parse_stop(v: Option<&Value>) -> Result<Vec<String>, ApiError> {
    let stop: Vec<String> = match v {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|s| {
                s.as_str().map(str::to_string).ok_or_else(|| {
                    ApiError::invalid(Some("stop"), "stop must be a string or a list of strings")
                })
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(ApiError::invalid(
                Some("stop"),
                "stop must be a string or a list of strings",
            ))
        }
    };
    if stop.len() > MAX_STOP {
        return Err(ApiError::invalid(
            Some("stop"),
            format!("at most {MAX_STOP} stop strings"),
        ));
    }
    if stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid(
            Some("stop"),
            "stop strings must not be empty",
        ));
    }
    Ok(stop)
}

/// A field that must be a non-negative integer when present (and not null).
fn uint(o: &Map<String, Value>, name: &'static str) -> Result<Option<u64>, ApiError> {
    match o.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            ApiError::invalid(Some(name), format!("{name} must be a non-negative integer"))
        }),
    }
}

/// A field that must be a number when present (and not null).
fn number(o: &Map<String, Value>, name: &'static str) -> Result<Option<f64>, ApiError> {
    match o.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| ApiError::invalid(Some(name), format!("{name} must be a number"))),
    }
}

/// A field that must be a boolean when present (and not null).
fn boolean(o: &Map<String, Value>, name: &'static str) -> Result<Option<bool>, ApiError> {
    match o.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_bool()
            .map(Some)
            .ok_or_else(|| ApiError::invalid(Some(name), format!("{name} must be true or false"))),
    }
}

/// OpenAI's name of a finish reason: the end-of-text token counts as a stop.
pub fn finish_reason(f: Finish) -> &'static str {
    match f {
        Finish::Eos | Finish::Stop => "stop",
        Finish::Length => "length",
    }
}

/// The `logprobs` object of a choice, built token by token.
#[derive(Default)]
pub struct Logprobs {
    tokens: Vec<String>,
    token_logprobs: Vec<f32>,
    top_logprobs: Vec<Map<String, Value>>,
    text_offset: Vec<usize>,
    offset: usize,
}

impl Logprobs {
    /// Starts counting text offsets after `offset` bytes (the echoed prompt).
    pub fn starting_at(offset: usize) -> Logprobs {
        Logprobs {
            offset,
            ..Logprobs::default()
        }
    }

    /// Adds a step's token (nothing without log-probabilities).
    pub fn push(&mut self, tokenizer: &Tokenizer, step: &Step) {
        let Some(lp) = &step.logprob else {
            return;
        };
        let text = token_text(tokenizer, step.token);
        let mut top = Map::new();
        for &(t, l) in &lp.top {
            top.insert(token_text(tokenizer, t), json!(l));
        }
        self.text_offset.push(self.offset);
        self.offset += text.len();
        self.tokens.push(text);
        self.token_logprobs.push(lp.logprob);
        self.top_logprobs.push(top);
    }

    pub fn to_json(&self) -> Value {
        json!({
            "tokens": self.tokens,
            "token_logprobs": self.token_logprobs,
            "top_logprobs": self.top_logprobs,
            "text_offset": self.text_offset,
        })
    }
}

/// The text a step shows the client: the end-of-text token's own text (`<|endoftext|>`) is not part of
/// the completion, as in OpenAI's API and llama-server (it stays in `logprobs.tokens`).
pub fn visible_text<'s>(tokenizer: &Tokenizer, step: &'s Step) -> &'s str {
    if step.finish == Some(Finish::Eos) {
        let eos = token_text(tokenizer, step.token);
        if let Some(t) = step.text.strip_suffix(eos.as_str()) {
            return t;
        }
    }
    &step.text
}

/// A token's own text (lossy where it is part of a character).
fn token_text(tokenizer: &Tokenizer, t: u32) -> String {
    tokenizer
        .token_bytes(t)
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> ApiError {
        match parse_completion(body.as_bytes()) {
            Err(e) => e,
            Ok(_) => panic!("{body} was accepted"),
        }
    }

    #[test]
    fn requests_are_parsed_with_openai_defaults() {
        let r = parse_completion(br#"{"model":"x","prompt":"Hi"}"#).unwrap();
        assert!(matches!(r.prompt, Prompt::Text(ref s) if s == "Hi"));
        assert_eq!(r.opts.max_tokens, 16);
        assert!(
            matches!(r.opts.sampling, Sampling::Random { temperature, .. } if temperature == 1.0)
        );
        let r = parse_completion(
            br#"{"prompt":[[1,2]],"temperature":0,"stop":"\n","logprobs":2,"seed":3}"#,
        )
        .unwrap();
        assert!(matches!(r.prompt, Prompt::Ids(ref v) if v == &[1, 2]));
        assert_eq!(r.opts.sampling, Sampling::Greedy);
        assert_eq!(r.opts.stop, ["\n"]);
        assert_eq!(r.opts.logprobs, Some(2));
    }

    #[test]
    fn bad_requests_name_the_parameter() {
        for (body, param) in [
            ("{", None),
            ("[]", None),
            (r#"{"prompt":""}"#, Some("prompt")),
            (r#"{"prompt":[]}"#, Some("prompt")),
            (r#"{"prompt":["a","b"]}"#, Some("prompt")),
            (r#"{"prompt":[-1]}"#, Some("prompt")),
            (r#"{"prompt":5}"#, Some("prompt")),
            (r#"{}"#, Some("prompt")),
            (r#"{"prompt":"a","max_tokens":0}"#, Some("max_tokens")),
            (r#"{"prompt":"a","max_tokens":"9"}"#, Some("max_tokens")),
            (r#"{"prompt":"a","temperature":-1}"#, Some("temperature")),
            (r#"{"prompt":"a","temperature":3}"#, Some("temperature")),
            (r#"{"prompt":"a","top_p":0}"#, Some("top_p")),
            (r#"{"prompt":"a","n":2}"#, Some("n")),
            (r#"{"prompt":"a","logprobs":6}"#, Some("logprobs")),
            (r#"{"prompt":"a","logprobs":1,"echo":true}"#, Some("echo")),
            (r#"{"prompt":"a","stop":""}"#, Some("stop")),
            (
                r#"{"prompt":"a","stop":["a","b","c","d","e"]}"#,
                Some("stop"),
            ),
            (r#"{"prompt":"a","stop":3}"#, Some("stop")),
            (r#"{"prompt":"a","stream":"yes"}"#, Some("stream")),
            (r#"{"prompt":"a","seed":"x"}"#, Some("seed")),
        ] {
            let e = err(body);
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(e.param, param, "{body}: {}", e.message);
        }
    }
}
