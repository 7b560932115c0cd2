//! Documents and their chunks: add, replace, delete, list in insertion order.

use super::{Change, ChunkRecord, IndexMeta, Store, doc_key, order_key};
use crate::error::{Error, Result};
use heed::RwTxn;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// One stored document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DocRecord {
    /// Caller's id, or the sha256 of the text.
    pub doc_id: String,
    /// Full text.
    pub text: String,
    /// Caller's metadata.
    pub metadata: Map<String, Value>,
    /// [`hash_value`] of text and metadata.
    pub hash_value: String,
    /// Ids of its chunks, in order.
    pub chunks: Vec<u32>,
    /// Insertion number: its place in listings and snapshots.
    #[serde(default)]
    pub seq: u64,
}

/// A document ready to store: chunked and embedded.
#[derive(Debug, Clone)]
pub struct NewDoc {
    /// Document id.
    pub doc_id: String,
    /// Full text.
    pub text: String,
    /// Caller's metadata.
    pub metadata: Map<String, Value>,
    /// Chunk texts and their vectors.
    pub chunks: Vec<(String, Vec<f32>)>,
}

/// Outcome of an update request, by document id.
#[derive(Debug, Default)]
pub struct UpdateOutcome {
    /// Documents whose text or metadata changed, as now stored.
    pub updated: Vec<DocRecord>,
    /// Ids of documents already as given.
    pub unchanged: Vec<String>,
    /// Ids of documents not in the index.
    pub not_found: Vec<String>,
}

/// A page of documents.
#[derive(Debug)]
pub struct DocPage {
    /// The page, in insertion order.
    pub documents: Vec<DocRecord>,
    /// Documents matching the filter in the whole index.
    pub total_items: usize,
}

/// sha256 of a text, hex: KAITO's id for a document sent without one.
pub fn sha256(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// KAITO's `hash_value`: llama-index's document hash, the sha256 of the
/// text followed by Python's `str()` of the metadata dict.
pub fn hash_value(text: &str, metadata: &Map<String, Value>) -> String {
    let mut identity = String::with_capacity(text.len() + 64);
    identity.push_str(text);
    crate::pyrepr::write_object(&mut identity, metadata);
    sha256(&identity)
}

/// True when `metadata` has every key of `filter` with an equal value.
pub fn matches(metadata: &Map<String, Value>, filter: Option<&Map<String, Value>>) -> bool {
    filter.is_none_or(|f| f.iter().all(|(k, v)| metadata.get(k) == Some(v)))
}

impl Store {
    fn remove_doc(
        &self,
        wtxn: &mut RwTxn,
        changes: &mut Vec<Change>,
        meta: &mut IndexMeta,
        doc: &DocRecord,
    ) -> Result<()> {
        for &id in &doc.chunks {
            self.vectors.delete(wtxn, meta.arroy, meta.dimensions, id)?;
            self.chunks.delete(wtxn, &id)?;
            changes.push(Change::RemoveChunk { index: meta.name.clone(), id });
        }
        self.docs.delete(wtxn, &doc_key(&meta.name, &doc.doc_id))?;
        self.order.delete(wtxn, &order_key(&meta.name, doc.seq))?;
        meta.documents -= 1;
        meta.chunks -= doc.chunks.len() as u64;
        Ok(())
    }

    /// Stores `doc` with the next insertion number: a replaced document
    /// moves to the end of the listing, as in KAITO (where an update is a
    /// delete and an insert).
    pub(super) fn put_doc(
        &self,
        wtxn: &mut RwTxn,
        changes: &mut Vec<Change>,
        meta: &mut IndexMeta,
        doc: NewDoc,
    ) -> Result<DocRecord> {
        if doc.chunks.is_empty() {
            // Callers embed only documents that were new or changed when they
            // looked; this one changed since.
            return Err(Error::Conflict(format!(
                "document {:?} changed while this request ran; send it again",
                doc.doc_id
            )));
        }
        let mut ids = Vec::with_capacity(doc.chunks.len());
        for (text, vector) in doc.chunks {
            if vector.len() != meta.dimensions {
                return Err(Error::Conflict(format!(
                    "index {:?} holds {}-dimensional vectors; a chunk of {:?} has {}",
                    meta.name,
                    meta.dimensions,
                    doc.doc_id,
                    vector.len()
                )));
            }
            let id = self.next_chunk_id(wtxn)?;
            self.vectors.put(wtxn, meta.arroy, id, &vector)?;
            let record = ChunkRecord { index: meta.name.clone(), doc_id: doc.doc_id.clone(), text };
            self.chunks.put(wtxn, &id, &record)?;
            changes.push(Change::AddChunk { index: meta.name.clone(), id, text: record.text, vector });
            ids.push(id);
        }
        let seq = meta.next_seq;
        meta.next_seq += 1;
        let record = DocRecord {
            hash_value: hash_value(&doc.text, &doc.metadata),
            doc_id: doc.doc_id,
            text: doc.text,
            metadata: doc.metadata,
            chunks: ids,
            seq,
        };
        self.docs.put(wtxn, &doc_key(&meta.name, &record.doc_id), &record)?;
        self.order.put(wtxn, &order_key(&meta.name, seq), &record.doc_id)?;
        meta.documents += 1;
        meta.chunks += record.chunks.len() as u64;
        Ok(record)
    }

    /// For each `(doc_id, text, metadata)`, whether it is stored in `index`
    /// exactly so (`None`: not stored), from one read transaction.
    pub fn unchanged(&self, index: &str, docs: &[(String, String, Map<String, Value>)]) -> Result<Vec<Option<bool>>> {
        let rtxn = self.read_txn()?;
        docs.iter()
            .map(|(id, text, metadata)| {
                Ok(self.docs.get(&rtxn, &doc_key(index, id))?.map(|d| &d.text == text && &d.metadata == metadata))
            })
            .collect()
    }

    /// Stores documents in `index` (created when missing), replacing any with
    /// the same id; one transaction for all of them.
    pub fn index_documents(&self, index: &str, model: &str, dim: usize, docs: Vec<NewDoc>) -> Result<Vec<DocRecord>> {
        self.write(|wtxn, changes| {
            let mut meta = self.ensure_index(wtxn, changes, index, model, dim)?;
            let mut out = Vec::with_capacity(docs.len());
            for doc in docs {
                if let Some(old) = self.docs.get(wtxn, &doc_key(index, &doc.doc_id))? {
                    if old.text == doc.text && old.metadata == doc.metadata {
                        out.push(old);
                        continue;
                    }
                    self.remove_doc(wtxn, changes, &mut meta, &old)?;
                }
                out.push(self.put_doc(wtxn, changes, &mut meta, doc)?);
            }
            self.indexes.put(wtxn, index, &meta)?;
            Ok(out)
        })
    }

    /// Replaces documents that exist and differ; reports each.
    pub fn update_documents(&self, index: &str, docs: Vec<NewDoc>) -> Result<UpdateOutcome> {
        self.write(|wtxn, changes| {
            let mut meta = self.indexes.get(wtxn, index)?.ok_or_else(|| Error::IndexNotFound(index.into()))?;
            let mut out = UpdateOutcome::default();
            for doc in docs {
                match self.docs.get(wtxn, &doc_key(index, &doc.doc_id))? {
                    None => out.not_found.push(doc.doc_id),
                    Some(old) if old.text == doc.text && old.metadata == doc.metadata => out.unchanged.push(doc.doc_id),
                    Some(old) => {
                        self.remove_doc(wtxn, changes, &mut meta, &old)?;
                        out.updated.push(self.put_doc(wtxn, changes, &mut meta, doc)?);
                    }
                }
            }
            self.indexes.put(wtxn, index, &meta)?;
            Ok(out)
        })
    }

    /// Deletes documents; returns (deleted, not found).
    pub fn delete_documents(&self, index: &str, ids: &[String]) -> Result<(Vec<String>, Vec<String>)> {
        self.write(|wtxn, changes| {
            let mut meta = self.indexes.get(wtxn, index)?.ok_or_else(|| Error::IndexNotFound(index.into()))?;
            let (mut deleted, mut missing) = (Vec::new(), Vec::new());
            for id in ids {
                match self.docs.get(wtxn, &doc_key(index, id))? {
                    Some(doc) => {
                        self.remove_doc(wtxn, changes, &mut meta, &doc)?;
                        deleted.push(id.clone());
                    }
                    None => missing.push(id.clone()),
                }
            }
            self.indexes.put(wtxn, index, &meta)?;
            Ok((deleted, missing))
        })
    }

    /// Calls `f` with each document of `index` in insertion order, from one
    /// read transaction, until it returns false.
    pub fn each_document(&self, index: &str, mut f: impl FnMut(DocRecord) -> bool) -> Result<()> {
        let rtxn = self.read_txn()?;
        if self.indexes.get(&rtxn, index)?.is_none() {
            return Err(Error::IndexNotFound(index.into()));
        }
        for item in self.order.prefix_iter(&rtxn, &format!("{index}/"))? {
            let (_, doc_id) = item?;
            let doc = self
                .docs
                .get(&rtxn, &doc_key(index, doc_id))?
                .ok_or_else(|| anyhow::anyhow!("document {index}/{doc_id} is listed but not stored"))?;
            if !f(doc) {
                break;
            }
        }
        Ok(())
    }

    /// One page of an index's documents in insertion order, optionally filtered by metadata.
    pub fn list_documents(
        &self,
        index: &str,
        limit: usize,
        offset: usize,
        filter: Option<&Map<String, Value>>,
    ) -> Result<DocPage> {
        let mut total = 0;
        let mut documents = Vec::new();
        self.each_document(index, |doc| {
            if matches(&doc.metadata, filter) {
                if total >= offset && documents.len() < limit {
                    documents.push(doc);
                }
                total += 1;
            }
            true
        })?;
        Ok(DocPage { documents, total_items: total })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_value_is_kaitos() {
        // Values KAITO's service returns for these documents (llama-index's node hash).
        let empty = Map::new();
        assert_eq!(
            hash_value("The sky is blue", &empty),
            "2fe3ca624831b775e1d21c38f5ba6078f7d7067153528e755835573898d338ec"
        );
        let meta: Map<String, Value> = serde_json::from_str(r#"{"b": 1, "a": "x"}"#).unwrap();
        assert_eq!(
            hash_value("Python is a programming language", &meta),
            "ef38a49cb318e97c85aa9669887d307bcf4736c8106083338154f16b884ac3d5"
        );
    }
}
