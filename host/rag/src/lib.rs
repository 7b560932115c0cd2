//! `kaito-rag`: KAITO's RAG API over durable storage.
//!
//! [`store`] keeps documents, chunks and vectors in one LMDB environment
//! (heed; arroy's on-disk index in `store::vector_db`, the only module that
//! names arroy; BM25 through tantivy in `store::text_index`) with an
//! optional RAM cache of vectors ([`vectors`]);
//! [`kernels`] are the scoring loops both use; [`chunk`] splits documents;
//! [`embed`] turns text into vectors with rust-bert or a remote endpoint;
//! [`api`] is the HTTP layer, [`chat`] the retrieval-augmented chat proxy
//! over [`llm`], its answers checked by [`guardrails`]; [`service`] is what both share and [`wire`] the JSON they
//! answer with.

pub mod api;
mod calibration;
pub mod chat;
pub mod chunk;
pub mod embed;
pub mod error;
pub mod guardrails;
pub mod ivf;
pub mod kernels;
pub mod llm;
pub mod metrics;
pub mod pyrepr;
pub mod service;
pub mod store;
pub mod vectors;
pub mod wire;
