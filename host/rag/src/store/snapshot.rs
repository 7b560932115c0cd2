//! Snapshots: an index written to one JSON-lines file and read back.

use super::{NewDoc, Store};
use crate::error::{Error, Result};
use base64::Engine as _;
use serde_json::Value;
use std::io::{BufRead, Write};
use std::path::Path;

/// First line of every snapshot file.
pub const SNAPSHOT_FORMAT: &str = "kaito-rag-snapshot/v1";

impl Store {
    /// Writes a consistent snapshot of `index` to `path` (JSON lines in
    /// insertion order, vectors base64 little-endian f32), atomically by
    /// rename; returns documents written.
    pub fn persist(&self, index: &str, path: &Path) -> Result<usize> {
        let rtxn = self.read_txn()?;
        let meta = self.indexes.get(&rtxn, index)?.ok_or_else(|| Error::IndexNotFound(index.into()))?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| anyhow::anyhow!("creating {}: {e}", parent.display()))?;
        }
        let tmp = path.with_extension("partial");
        let file = std::fs::File::create(&tmp).map_err(|e| anyhow::anyhow!("creating {}: {e}", tmp.display()))?;
        let mut out = std::io::BufWriter::new(file);
        let io = |e: std::io::Error| Error::Internal(anyhow::anyhow!("writing {}: {e}", tmp.display()));
        let header = serde_json::json!({"format": SNAPSHOT_FORMAT, "index": meta.name, "embedding_model": meta.embedding_model, "dimensions": meta.dimensions});
        writeln!(out, "{header}").map_err(io)?;
        let mut n = 0;
        for item in self.order.prefix_iter(&rtxn, &format!("{index}/"))? {
            let (_, doc_id) = item?;
            let doc = self
                .docs
                .get(&rtxn, &super::doc_key(index, doc_id))?
                .ok_or_else(|| anyhow::anyhow!("document {index}/{doc_id} is listed but not stored"))?;
            let mut chunks = Vec::with_capacity(doc.chunks.len());
            for id in &doc.chunks {
                let text = self.chunks.get(&rtxn, id)?.map(|c| c.text).unwrap_or_default();
                let vector = self.vectors.vector(&rtxn, *id)?.unwrap_or_default();
                let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                chunks.push(serde_json::json!({"text": text, "vector": base64::engine::general_purpose::STANDARD.encode(bytes)}));
            }
            let line =
                serde_json::json!({"doc_id": doc.doc_id, "text": doc.text, "metadata": doc.metadata, "chunks": chunks});
            writeln!(out, "{line}").map_err(io)?;
            n += 1;
        }
        let file = out.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
        Ok(n)
    }

    /// Loads a snapshot written by [`Store::persist`] into `index`, in one
    /// transaction; an existing index is replaced only with `overwrite`.
    pub fn load(&self, index: &str, path: &Path, overwrite: bool, model: &str, dim: usize) -> Result<usize> {
        let file = std::fs::File::open(path)
            .map_err(|e| Error::bad("path", format!("cannot open snapshot {}: {e}", path.display())))?;
        let mut lines = std::io::BufReader::new(file).lines();
        let bad = |msg: String| Error::bad("path", format!("{}: {msg}", path.display()));
        let header: Value = lines
            .next()
            .ok_or_else(|| bad("empty file".into()))?
            .map_err(|e| bad(e.to_string()))
            .and_then(|l| serde_json::from_str(&l).map_err(|e| bad(format!("header: {e}"))))?;
        if header["format"] != SNAPSHOT_FORMAT {
            return Err(bad(format!("not a {SNAPSHOT_FORMAT} snapshot")));
        }
        if header["embedding_model"] != model || header["dimensions"] != dim {
            return Err(Error::Conflict(format!(
                "the snapshot holds vectors of {} ({} dimensions) but this service embeds with {model} ({dim})",
                header["embedding_model"], header["dimensions"]
            )));
        }
        let mut docs = Vec::new();
        for (i, line) in lines.enumerate() {
            let line = line.map_err(|e| bad(e.to_string()))?;
            let v: Value = serde_json::from_str(&line).map_err(|e| bad(format!("line {}: {e}", i + 2)))?;
            let mut chunks = Vec::new();
            for c in v["chunks"].as_array().into_iter().flatten() {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(c["vector"].as_str().unwrap_or_default())
                    .map_err(|e| bad(format!("line {}: vector: {e}", i + 2)))?;
                let vector: Vec<f32> =
                    bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
                if vector.len() != dim {
                    return Err(bad(format!("line {}: a vector of {} dimensions", i + 2, vector.len())));
                }
                chunks.push((c["text"].as_str().unwrap_or_default().to_string(), vector));
            }
            docs.push(NewDoc {
                doc_id: v["doc_id"].as_str().ok_or_else(|| bad(format!("line {}: no doc_id", i + 2)))?.to_string(),
                text: v["text"].as_str().unwrap_or_default().to_string(),
                metadata: v["metadata"].as_object().cloned().unwrap_or_default(),
                chunks,
            });
        }
        let n = docs.len();
        self.write(|wtxn, changes| {
            if self.indexes.get(wtxn, index)?.is_some() {
                if !overwrite {
                    return Err(Error::Conflict(format!(
                        "Index '{index}' already exists. Use a different name or delete the existing index first (or pass overwrite=true)."
                    )));
                }
                self.drop_index(wtxn, changes, index)?;
            }
            let mut meta = self.ensure_index(wtxn, changes, index, model, dim)?;
            for doc in docs {
                self.put_doc(wtxn, changes, &mut meta, doc)?;
            }
            self.indexes.put(wtxn, index, &meta)?;
            Ok(n)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{NewDoc, Store, StoreOptions};
    use crate::error::Error;
    use serde_json::json;

    #[test]
    fn snapshot_round_trips_in_insertion_order() {
        let dir = tempfile::tempdir().unwrap();
        let opts = StoreOptions { map_size: 1 << 26, vector_cache_bytes: 0, ..StoreOptions::default() };
        let store = Store::open(&dir.path().join("db"), opts).unwrap();
        let doc = |id: &str, v: [f32; 3]| NewDoc {
            doc_id: id.into(),
            text: format!("{id} text"),
            metadata: json!({"k": id}).as_object().unwrap().clone(),
            chunks: vec![(id.into(), v.to_vec())],
        };
        store.index_documents("idx", "m", 3, vec![doc("b", [1.0, 0.0, 0.0]), doc("a", [0.0, 0.0, 1.0])]).unwrap();
        let path = dir.path().join("snap/idx.jsonl");
        assert_eq!(store.persist("idx", &path).unwrap(), 2);
        assert!(matches!(store.load("idx", &path, false, "m", 3), Err(Error::Conflict(_))));
        assert_eq!(store.load("copy", &path, false, "m", 3).unwrap(), 2);
        let page = store.list_documents("copy", 10, 0, None).unwrap();
        assert_eq!(page.documents.iter().map(|d| d.doc_id.as_str()).collect::<Vec<_>>(), ["b", "a"]);
        let original = store.list_documents("idx", 10, 0, None).unwrap();
        assert_eq!(page.documents[0].hash_value, original.documents[0].hash_value);
        let nodes = store.retrieve("copy", "a text", &[0.0, 0.0, 1.0], 1, None).unwrap();
        assert_eq!(nodes[0].doc_id, "a");
        assert_eq!(store.load("idx", &path, true, "m", 3).unwrap(), 2);
        assert_eq!(store.verify().unwrap(), (4, 4));
    }
}
