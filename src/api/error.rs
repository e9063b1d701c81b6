//! Why a client could not be built, and why a call did not succeed.

use crate::taxonomy::{self, ErrorClass, TRANSPORT_PREFIX};

use super::{Action, BODY_PREFIX_BYTES};

use std::fmt;

/// Why a client could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The endpoint is not an `http://` or `https://` URL of a host.
    #[error("endpoint {endpoint:?} is not usable: {reason}")]
    BadEndpoint { endpoint: String, reason: String },
    /// A zero timeout would fail every request.
    #[error("the {which} timeout must be more than zero")]
    ZeroTimeout { which: &'static str },
    /// A credential that cannot be sent in a header.
    #[error("unusable credentials: {0}")]
    BadCredentials(String),
    /// `http://` to a host that is not this machine, without `--insecure-http`.
    #[error(
        "endpoint {endpoint:?} uses http:// to a host that is not this machine: the SecretId, \
         a replayable signature and the session token would travel in clear; use https://, \
         or pass --insecure-http if this network is trusted"
    )]
    InsecureHttp { endpoint: String },
    /// The HTTP stack could not be set up (TLS roots, for example).
    #[error("cannot set up the HTTP client: {0}")]
    Http(String),
}

/// The endpoint answered with `Response.Error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The error code, e.g. `UnsupportedOperation.InstanceStateRunning`.
    pub code: String,
    pub message: String,
    /// Empty only when the endpoint omitted it from an error reply.
    pub request_id: String,
}

/// What went wrong below the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportKind {
    /// The connection could not be established (refused, DNS, TLS).
    Connect,
    /// The connect or request timeout passed. The request may or may not have been applied.
    Timeout,
    /// The connection broke (reset, closed mid-reply). The request may or may not have been applied.
    Io,
    /// A status other than 200.
    HttpStatus,
    /// HTTP 200 with a body that is not the API envelope, or a success without a RequestId.
    BadBody,
}

impl TransportKind {
    /// The code recorded for this failure, under [`TRANSPORT_PREFIX`].
    pub fn code(self) -> String {
        let name = match self {
            TransportKind::Connect => "Connect",
            TransportKind::Timeout => "Timeout",
            TransportKind::Io => "Io",
            TransportKind::HttpStatus => "HttpStatus",
            TransportKind::BadBody => "BadBody",
        };
        format!("{TRANSPORT_PREFIX}{name}")
    }
}

/// No API reply could be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportError {
    pub kind: TransportKind,
    /// The HTTP status, when a reply's head arrived.
    pub status: Option<u16>,
    /// The first [`BODY_PREFIX_BYTES`] bytes of the reply body (invalid UTF-8 replaced).
    pub body_prefix: String,
    /// What happened, for a person.
    pub detail: String,
}

impl TransportError {
    /// A transport error of `kind` (also what a caller that reads a reply further,
    /// as AssumeRole's, reports when the reply lacks what it needs).
    pub fn new(kind: TransportKind, detail: impl Into<String>) -> TransportError {
        TransportError {
            kind,
            status: None,
            body_prefix: String::new(),
            detail: detail.into(),
        }
    }

    pub(super) fn with_reply(mut self, status: u16, body: &[u8]) -> TransportError {
        self.status = Some(status);
        self.body_prefix = body_prefix(body);
        self
    }
}

/// A call that did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("{0}")]
    Api(ApiError),
    #[error("{0}")]
    Transport(TransportError),
}

impl CallError {
    /// The API error code, or `Transport.Connect|Timeout|Io|HttpStatus|BadBody`.
    pub fn code(&self) -> String {
        match self {
            CallError::Api(err) => err.code.clone(),
            CallError::Transport(err) => err.kind.code(),
        }
    }

    /// What the caller of `action` should do, from [`taxonomy::classify`].
    pub fn class(&self, action: Action) -> ErrorClass {
        taxonomy::classify(action, &self.code()).class
    }

    /// The API's message, or what went wrong in transport.
    pub fn message(&self) -> String {
        match self {
            CallError::Api(err) => err.message.clone(),
            CallError::Transport(err) => err.detail.clone(),
        }
    }

    /// The RequestId, when the endpoint gave one.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            CallError::Api(err) if !err.request_id.is_empty() => Some(&err.request_id),
            _ => None,
        }
    }

    /// The HTTP status of the reply, when one arrived.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            // API errors arrive with status 200: only a 200 is read as an envelope.
            CallError::Api(_) => Some(200),
            CallError::Transport(err) => err.status,
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)?;
        if !self.request_id.is_empty() {
            write!(f, " (RequestId {})", self.request_id)?;
        }
        Ok(())
    }
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.code(), self.detail)?;
        if let Some(status) = self.status {
            write!(f, " (HTTP {status})")?;
        }
        if !self.body_prefix.is_empty() {
            write!(f, "; body starts: {:?}", self.body_prefix)?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {}
impl std::error::Error for TransportError {}

pub(super) fn body_prefix(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(BODY_PREFIX_BYTES)]).into_owned()
}

pub(super) fn from_reqwest(err: &reqwest::Error) -> TransportError {
    let kind = if err.is_timeout() {
        TransportKind::Timeout
    } else if err.is_connect() {
        TransportKind::Connect
    } else {
        TransportKind::Io
    };
    let mut transport = TransportError::new(kind, error_chain(err));
    transport.status = err.status().map(|s| s.as_u16());
    transport
}

/// An error and its sources, `outer: inner: innermost`, without repeats.
pub(super) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = vec![err.to_string()];
    let mut source = err.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = inner.source();
    }
    parts.join(": ")
}
