//! `kaito-inference`: an OpenAI-compatible server on libtorch (tch).
//!
//! [`models`] holds one file per model family, registered by the Hugging Face
//! architecture name, over a shared decoder; [`engine`] owns the model on its
//! own thread and batches continuously; [`server`] is the thin HTTP layer.

pub mod config;
pub mod download;
pub mod engine;
pub mod loader;
pub mod lora;
pub mod metrics;
pub mod models;
pub mod sampling;
pub mod server;
pub mod text;
pub mod tune;
