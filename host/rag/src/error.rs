//! The service's one error type, and its JSON form on the wire.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

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
    /// The named index does not exist.
    #[error("index {0:?} does not exist; create it with POST /index")]
    IndexNotFound(String),
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
    /// A 400 naming `field`.
    pub fn bad(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::BadRequest { field: field.into(), message: message.into() }
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Error::IndexNotFound(_) | Error::NoRoute(_) => StatusCode::NOT_FOUND,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Upstream(_) => StatusCode::BAD_GATEWAY,
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
            _ => None,
        };
        // `detail` is what KAITO's FastAPI service answers; `error` is the
        // OpenAI shape the chat endpoint's clients parse.
        let message = self.to_string();
        let body = json!({"detail": message, "error": {"message": message, "type": kind, "param": param, "code": status.as_u16()}});
        (status, axum::Json(body)).into_response()
    }
}
