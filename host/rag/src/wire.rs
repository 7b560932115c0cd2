//! JSON shapes of what the API returns, shared by the HTTP layer and the chat proxy.

use crate::store::{DocRecord, Retrieved};
use serde_json::{Value, json};

/// A document as the API shows it, text cut to `max_text_length` characters.
pub fn doc_json(doc: &DocRecord, max_text_length: Option<usize>) -> Value {
    let (text, truncated) = match max_text_length {
        Some(n) if doc.text.chars().count() > n => (doc.text.chars().take(n).collect::<String>(), true),
        _ => (doc.text.clone(), false),
    };
    json!({
        "doc_id": doc.doc_id,
        "text": text,
        "metadata": doc.metadata,
        "hash_value": doc.hash_value,
        "is_truncated": truncated,
    })
}

/// A retrieved chunk as `/retrieve` and `source_nodes` show it.
pub fn node_json(n: &Retrieved) -> Value {
    let c = &n.candidate;
    json!({
        "doc_id": n.doc_id,
        "node_id": c.id.to_string(),
        "text": n.text,
        "score": c.score,
        "dense_score": c.dense.map(|r| r.score),
        "sparse_score": c.sparse.map(|r| r.score),
        "source": c.source(),
        // KAITO answers null for a node without metadata.
        "metadata": if n.metadata.is_empty() { Value::Null } else { Value::Object(n.metadata.clone()) },
    })
}
