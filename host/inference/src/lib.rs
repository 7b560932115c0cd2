//! `kaito-inference`: an OpenAI-compatible server on libtorch (tch).
//!
//! [`models`] holds one file per model family, registered by the Hugging Face
//! architecture name, over a shared decoder; [`engine`] owns the model on its
//! own thread and batches continuously; [`server`] is the thin HTTP layer.

pub mod config;
pub mod download;
pub mod engine;
pub mod grammar;
pub mod loader;
pub mod lora;
pub mod metrics;
pub mod models;
pub mod sampling;
pub mod server;
pub mod text;
pub mod tools;
pub mod tune;

/// Logging for the command-line tools (`kaito-tune`, `kaito-pull`): `RUST_LOG` or info, on stderr (stdout carries
/// only their result, for scripts), colours only on a terminal (a pod's log gets plain text).
pub fn init_tool_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
