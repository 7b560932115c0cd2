//! The OpenAI-compatible LLM behind `/v1/chat/completions`.

use crate::error::{Error, Result};
use std::io::Read;
use std::time::Duration;

/// The LLM the service talks to.
#[derive(Clone)]
pub struct Llm {
    /// Chat completions endpoint.
    pub url: String,
    /// Bearer token, when the endpoint needs one.
    pub secret: Option<String>,
    /// The model's context window, in tokens.
    pub context_window: usize,
    agent: ureq::Agent,
}

impl Llm {
    /// An LLM at `url` (the chat completions endpoint, or a base URL that
    /// `/v1/chat/completions` is appended to).
    pub fn new(url: &str, secret: Option<String>, context_window: usize) -> Self {
        let url = url.trim_end_matches('/');
        let url = if url.ends_with("/chat/completions") {
            url.to_string()
        } else if url.ends_with("/v1") {
            format!("{url}/chat/completions")
        } else {
            format!("{url}/v1/chat/completions")
        };
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .timeout_connect(Some(Duration::from_secs(10)))
                .http_status_as_error(false)
                .build(),
        );
        Llm { url, secret, context_window, agent }
    }

    /// Sends `body` and returns the status, content type and a reader of the answer (blocking).
    pub fn send(&self, body: &[u8]) -> Result<(u16, String, Box<dyn Read + Send>)> {
        let mut req = self.agent.post(&self.url).header("content-type", "application/json");
        if let Some(s) = &self.secret {
            req = req.header("Authorization", &format!("Bearer {s}"));
        }
        let resp =
            req.send(body).map_err(|e| Error::Upstream(format!("the LLM at {} is unreachable: {e}", self.url)))?;
        let status = resp.status().as_u16();
        let ctype =
            resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("application/json").to_string();
        Ok((status, ctype, Box::new(resp.into_body().into_reader())))
    }
}
