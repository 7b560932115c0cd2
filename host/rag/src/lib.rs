//! `kaito-rag`: KAITO's RAG API over durable storage.
//!
//! [`store`] keeps documents, chunks and vectors in one LMDB environment
//! (heed, with arroy for vectors) and answers queries from an in-memory
//! mirror ([`vectors`], [`bm25`]); [`chunk`] splits documents; [`embed`]
//! turns text into vectors with rust-bert or a remote endpoint; [`api`] is
//! the HTTP layer and [`chat`] the retrieval-augmented chat proxy.

pub mod api;
pub mod bm25;
pub mod chat;
pub mod chunk;
pub mod embed;
pub mod error;
pub mod ivf;
pub mod metrics;
pub mod store;
pub mod vectors;
