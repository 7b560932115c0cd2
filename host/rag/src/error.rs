//! The service's one error type, and its JSON form on the wire.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input; `field` names what to fix.
    #[error("{field}: {message}")]
    BadRequest {
        /// JSON path or query parameter at fault.
        field: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// Bad input, answered with KAITO's exact message (which names the field).
    #[error("{detail}")]
    Invalid {
        /// Field or parameter at fault.
        param: &'static str,
        /// KAITO's message.
        detail: String,
    },
    /// The named index does not exist (KAITO's message).
    #[error("No such index: '{0}' exists.")]
    IndexNotFound(String),
    /// A snapshot path that does not exist (KAITO's message).
    #[error("Path does not exist: {0}")]
    PathNotFound(String),
    /// No route matches the request.
    #[error("no such endpoint: {0}")]
    NoRoute(String),
    /// The request conflicts with what is stored.
    #[error("{0}")]
    Conflict(String),
    /// A dependency is not configured or not ready.
    #[error("{0}")]
    Unavailable(String),
    /// The LLM or embeddings endpoint failed.
    #[error("{0}")]
    Upstream(String),
    /// The LLM answered an error status: relayed with its status, KAITO's
    /// `detail` and the LLM's own OpenAI `error` object when it sent one.
    #[error("{detail}")]
    UpstreamStatus {
        /// The LLM's HTTP status.
        status: u16,
        /// KAITO's detail text.
        detail: String,
        /// The LLM's `error` object, if its body had one.
        error: Option<Value>,
    },
    /// LMDB failed.
    #[error("storage: {0}")]
    Storage(#[from] heed::Error),
    /// arroy failed.
    #[error("vector store: {0}")]
    Vectors(#[from] arroy::Error),
    /// Anything else.
    #[error("{0:#}")]
    Internal(#[from] anyhow::Error),
}

impl Error {
    /// A 400 with KAITO's exact message.
    pub fn invalid(param: &'static str, detail: impl Into<String>) -> Self {
        Error::Invalid { param, detail: detail.into() }
    }

    /// A 400 naming `field`.
    pub fn bad(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::BadRequest { field: field.into(), message: message.into() }
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::BadRequest { .. } | Error::Invalid { .. } => StatusCode::BAD_REQUEST,
            Error::IndexNotFound(_) | Error::NoRoute(_) | Error::PathNotFound(_) => StatusCode::NOT_FOUND,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Upstream(_) => StatusCode::BAD_GATEWAY,
            Error::UpstreamStatus { status, .. } => StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY),
            Error::Storage(_) | Error::Vectors(_) | Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// Result with the service's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let kind = match status {
            StatusCode::NOT_FOUND => "not_found_error",
            StatusCode::CONFLICT => "conflict_error",
            StatusCode::SERVICE_UNAVAILABLE => "service_unavailable",
            s if s.is_server_error() => "server_error",
            _ => "invalid_request_error",
        };
        let param = match &self {
            Error::BadRequest { field, .. } => Some(field.clone()),
            Error::Invalid { param, .. } => Some(param.to_string()),
            _ => None,
        };
        // `detail` is what KAITO's FastAPI service answers; `error` is the
        // OpenAI shape the chat endpoint's clients parse (the LLM's own, when it sent one).
        let message = self.to_string();
        let error = match &self {
            Error::UpstreamStatus { error: Some(e), .. } => e.clone(),
            _ => json!({"message": message, "type": kind, "param": param, "code": status.as_u16()}),
        };
        let body = json!({"detail": message, "error": error});
        (status, axum::Json(body)).into_response()
    }
}
