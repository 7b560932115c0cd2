//! Durable storage: one LMDB environment per data directory.
//!
//! Databases: `indexes` (name → metadata), `docs` (`index/doc_id` → text,
//! metadata and chunk ids), `chunks` (chunk id → text), `counters`, and the
//! arroy vector database (one arroy index number per RAG index). Every write
//! request runs in one write transaction, so a crash leaves each request
//! either fully stored or not at all. Queries are answered from an in-memory
//! mirror ([`VectorIndex`] and [`Bm25`] per index) rebuilt from LMDB at start
//! and updated after each commit, under the same lock that serialises writers.

use crate::bm25::Bm25;
use crate::error::{Error, Result};
use crate::vectors::{DOT, SearchParams, VectorIndex};
use arroy::distances::Cosine;
use base64::Engine as _;
use heed::byteorder::BigEndian;
use heed::types::{SerdeJson, Str, U32};
use heed::{CommitOrAbort, Database, Env, EnvOpenOptions, RwTxn};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::{Mutex, RwLock};

/// Weight of the dense (cosine) score in hybrid retrieval; BM25 gets the rest.
pub const DENSE_WEIGHT: f32 = 0.7;

/// What is stored about one index.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IndexMeta {
    /// Index name.
    pub name: String,
    /// arroy index number holding its vectors.
    pub arroy: u16,
    /// Embedding model the vectors came from.
    pub embedding_model: String,
    /// Vector length.
    pub dimensions: usize,
}

/// One stored document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DocRecord {
    /// Caller's id, or the sha256 of the text.
    pub doc_id: String,
    /// Full text.
    pub text: String,
    /// Caller's metadata.
    pub metadata: Map<String, Value>,
    /// sha256 of the text.
    pub hash_value: String,
    /// Ids of its chunks, in order.
    pub chunks: Vec<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ChunkRecord {
    index: String,
    doc_id: String,
    text: String,
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

/// Outcome of an update request.
#[derive(Debug, Default, Serialize)]
pub struct UpdateOutcome {
    /// Documents whose text or metadata changed.
    pub updated_documents: Vec<Value>,
    /// Documents already as given.
    pub unchanged_documents: Vec<Value>,
    /// Documents not in the index.
    pub not_found_documents: Vec<Value>,
}

/// One retrieved chunk.
#[derive(Debug, Clone, Serialize)]
pub struct Node {
    /// Document the chunk belongs to.
    pub doc_id: String,
    /// Chunk id.
    pub node_id: String,
    /// Chunk text.
    pub text: String,
    /// Hybrid score.
    pub score: f32,
    /// Cosine similarity.
    pub dense_score: f32,
    /// BM25 score, normalised to the best candidate's.
    pub sparse_score: f32,
    /// Which retriever proposed it: dense, sparse or both.
    pub source: &'static str,
    /// The document's metadata.
    pub metadata: Map<String, Value>,
}

/// A page of documents.
#[derive(Debug, Serialize)]
pub struct DocPage {
    /// The page.
    pub documents: Vec<Value>,
    /// Documents in the page.
    pub count: usize,
    /// Documents matching the filter in the whole index.
    pub total_items: usize,
}

struct Mirror {
    meta: IndexMeta,
    vectors: VectorIndex,
    bm25: Bm25,
    chunk_doc: HashMap<u32, String>,
    doc_meta: HashMap<String, Map<String, Value>>,
}

impl Mirror {
    fn new(meta: IndexMeta, params: SearchParams) -> Self {
        let vectors = VectorIndex::new(meta.dimensions, params);
        Mirror { meta, vectors, bm25: Bm25::default(), chunk_doc: HashMap::new(), doc_meta: HashMap::new() }
    }
}

/// A change to apply to the mirror once its transaction has committed.
enum Change {
    Create(IndexMeta),
    Drop(String),
    AddDoc { index: String, doc_id: String, metadata: Map<String, Value> },
    RemoveDoc { index: String, doc_id: String },
    AddChunk { index: String, id: u32, doc_id: String, text: String, vector: Vec<f32> },
    RemoveChunk { index: String, id: u32, text: String },
}

/// The service's storage.
pub struct Store {
    env: Env,
    indexes: Database<'static, Str, SerdeJson<IndexMeta>>,
    docs: Database<'static, Str, SerdeJson<DocRecord>>,
    chunks: Database<'static, U32<BigEndian>, SerdeJson<ChunkRecord>>,
    counters: Database<'static, Str, U32<BigEndian>>,
    vectors: arroy::Database<'static, Cosine>,
    writer: Mutex<()>,
    mirror: RwLock<HashMap<String, Mirror>>,
    params: SearchParams,
}

/// sha256 of a text, hex: KAITO's document id.
pub fn sha256(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

fn doc_key(index: &str, doc_id: &str) -> String {
    format!("{index}/{doc_id}")
}

/// Checks an index name: 1–128 characters of letters, digits, `-`, `_`, `.`.
pub fn check_index_name(field: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::bad(
            field,
            format!("{name:?} is not a valid index name: use 1-128 letters, digits, '-', '_' or '.'"),
        ))
    }
}

/// True when `metadata` has every key of `filter` with an equal value.
pub fn matches(metadata: &Map<String, Value>, filter: Option<&Map<String, Value>>) -> bool {
    filter.is_none_or(|f| f.iter().all(|(k, v)| metadata.get(k) == Some(v)))
}

impl Store {
    /// Opens (or creates) the environment in `dir` and loads the mirror.
    pub fn open(dir: &Path, map_size: usize, params: SearchParams) -> Result<Store> {
        std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
        // SAFETY: the environment is opened once per process and the data
        // directory is not shared with another process (LMDB's lock file
        // also guards against that).
        let env = unsafe { EnvOpenOptions::new().map_size(map_size).max_dbs(8).open(dir)? };
        let wtxn = env.write_txn()?;
        let (indexes, docs, chunks, counters, vectors) = env
            .create_databases_and_commit(wtxn, |dbs, wtxn| -> Result<_, heed::Error> {
                Ok(CommitOrAbort::<_, ()>::Commit((
                    dbs.create_database(wtxn, Some("indexes"))?,
                    dbs.create_database(wtxn, Some("docs"))?,
                    dbs.create_database(wtxn, Some("chunks"))?,
                    dbs.create_database(wtxn, Some("counters"))?,
                    dbs.create_database(wtxn, Some("vectors"))?,
                )))
            })?
            .unwrap_commit();
        let store = Store {
            env,
            indexes,
            docs,
            chunks,
            counters,
            vectors,
            writer: Mutex::new(()),
            mirror: RwLock::new(HashMap::new()),
            params,
        };
        store.load_mirror()?;
        Ok(store)
    }

    fn load_mirror(&self) -> Result<()> {
        let rtxn = self.env.read_txn()?;
        let mut mirror = HashMap::new();
        for item in self.indexes.iter(&rtxn)? {
            let (name, meta) = item?;
            let mut m = Mirror::new(meta.clone(), self.params);
            let writer = arroy::Writer::<Cosine>::new(self.vectors, meta.arroy, meta.dimensions);
            for item in writer.iter(&rtxn)? {
                let (id, v) = item?;
                m.vectors.insert(id, &v);
            }
            for item in self.docs.prefix_iter(&rtxn, &format!("{name}/"))? {
                let (_, doc) = item?;
                m.doc_meta.insert(doc.doc_id.clone(), doc.metadata);
            }
            mirror.insert(name.to_string(), m);
        }
        for item in self.chunks.iter(&rtxn)? {
            let (id, chunk) = item?;
            if let Some(m) = mirror.get_mut(&chunk.index) {
                m.bm25.insert(id, &chunk.text);
                m.chunk_doc.insert(id, chunk.doc_id);
            }
        }
        *self.mirror.write().expect("mirror lock") = mirror;
        Ok(())
    }

    /// Checks that every document's chunks exist with a vector and every
    /// chunk and vector belongs to a document; returns (documents, chunks).
    pub fn verify(&self) -> Result<(usize, usize)> {
        let rtxn = self.env.read_txn()?;
        let mut owned: HashMap<u32, String> = HashMap::new();
        let mut docs = 0;
        for item in self.docs.iter(&rtxn)? {
            let (key, doc) = item?;
            docs += 1;
            let index = key.split('/').next().unwrap_or_default().to_string();
            let meta =
                self.indexes.get(&rtxn, &index)?.ok_or_else(|| anyhow::anyhow!("document {key} has no index"))?;
            let writer = arroy::Writer::<Cosine>::new(self.vectors, meta.arroy, meta.dimensions);
            if doc.chunks.is_empty() || doc.hash_value != sha256(&doc.text) {
                return Err(anyhow::anyhow!("document {key} is incomplete").into());
            }
            for id in &doc.chunks {
                let chunk =
                    self.chunks.get(&rtxn, id)?.ok_or_else(|| anyhow::anyhow!("document {key}: chunk {id} missing"))?;
                if chunk.doc_id != doc.doc_id || chunk.index != index {
                    return Err(
                        anyhow::anyhow!("chunk {id} belongs to {}/{}, not {key}", chunk.index, chunk.doc_id).into()
                    );
                }
                if !writer.contains_item(&rtxn, *id)? {
                    return Err(anyhow::anyhow!("document {key}: chunk {id} has no vector").into());
                }
                owned.insert(*id, index.clone());
            }
        }
        let chunks = self.chunks.len(&rtxn)? as usize;
        if chunks != owned.len() {
            return Err(anyhow::anyhow!("{} chunks stored, {} owned by documents", chunks, owned.len()).into());
        }
        let mut vectors = 0;
        for item in self.indexes.iter(&rtxn)? {
            let (_, meta) = item?;
            vectors += arroy::Writer::<Cosine>::new(self.vectors, meta.arroy, meta.dimensions).iter(&rtxn)?.count();
        }
        if vectors != chunks {
            return Err(anyhow::anyhow!("{vectors} vectors stored for {chunks} chunks").into());
        }
        Ok((docs, chunks))
    }

    /// Names of every index, sorted.
    pub fn index_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.mirror.read().expect("mirror lock").keys().cloned().collect();
        names.sort();
        names
    }

    /// Metadata of an index.
    pub fn index_meta(&self, index: &str) -> Option<IndexMeta> {
        self.mirror.read().expect("mirror lock").get(index).map(|m| m.meta.clone())
    }

    /// Documents and chunks of an index.
    pub fn counts(&self, index: &str) -> Option<(usize, usize)> {
        self.mirror.read().expect("mirror lock").get(index).map(|m| (m.doc_meta.len(), m.vectors.len()))
    }

    /// Runs `f` in one write transaction and applies its changes to the
    /// mirror after the commit, holding the writer lock throughout.
    fn write<T>(&self, f: impl FnOnce(&mut RwTxn, &mut Vec<Change>) -> Result<T>) -> Result<T> {
        let _guard = self.writer.lock().expect("writer lock");
        let mut wtxn = self.env.write_txn()?;
        let mut changes = Vec::new();
        let out = f(&mut wtxn, &mut changes)?;
        wtxn.commit()?;
        self.apply(changes);
        Ok(out)
    }

    fn apply(&self, changes: Vec<Change>) {
        let mut mirror = self.mirror.write().expect("mirror lock");
        for change in changes {
            match change {
                Change::Create(meta) => {
                    mirror.insert(meta.name.clone(), Mirror::new(meta, self.params));
                }
                Change::Drop(name) => {
                    mirror.remove(&name);
                }
                Change::AddDoc { index, doc_id, metadata } => {
                    if let Some(m) = mirror.get_mut(&index) {
                        m.doc_meta.insert(doc_id, metadata);
                    }
                }
                Change::RemoveDoc { index, doc_id } => {
                    if let Some(m) = mirror.get_mut(&index) {
                        m.doc_meta.remove(&doc_id);
                    }
                }
                Change::AddChunk { index, id, doc_id, text, vector } => {
                    if let Some(m) = mirror.get_mut(&index) {
                        m.vectors.insert(id, &vector);
                        m.bm25.insert(id, &text);
                        m.chunk_doc.insert(id, doc_id);
                    }
                }
                Change::RemoveChunk { index, id, text } => {
                    if let Some(m) = mirror.get_mut(&index) {
                        m.vectors.remove(id);
                        m.bm25.remove(id, &text);
                        m.chunk_doc.remove(&id);
                    }
                }
            }
        }
    }

    fn next_chunk_id(&self, wtxn: &mut RwTxn) -> Result<u32> {
        let id = self.counters.get(wtxn, "next_chunk_id")?.unwrap_or(0);
        let next = id.checked_add(1).ok_or_else(|| anyhow::anyhow!("chunk ids exhausted"))?;
        self.counters.put(wtxn, "next_chunk_id", &next)?;
        Ok(id)
    }

    /// The index's metadata, created when missing; vectors must come from the same model.
    fn ensure_index(
        &self,
        wtxn: &mut RwTxn,
        changes: &mut Vec<Change>,
        index: &str,
        model: &str,
        dim: usize,
    ) -> Result<IndexMeta> {
        if let Some(meta) = self.indexes.get(wtxn, index)? {
            if meta.embedding_model != model || meta.dimensions != dim {
                return Err(Error::Conflict(format!(
                    "index {index:?} holds vectors of {} ({} dimensions) but this service embeds with {model} ({dim}); use another index name or delete this one",
                    meta.embedding_model, meta.dimensions
                )));
            }
            return Ok(meta);
        }
        let used: HashSet<u16> =
            self.indexes.iter(wtxn)?.map(|r| r.map(|(_, m)| m.arroy)).collect::<Result<_, heed::Error>>()?;
        let arroy = (0..=u16::MAX)
            .find(|n| !used.contains(n))
            .ok_or_else(|| Error::Conflict("65536 indexes exist; delete one first".into()))?;
        let meta = IndexMeta { name: index.to_string(), arroy, embedding_model: model.to_string(), dimensions: dim };
        self.indexes.put(wtxn, index, &meta)?;
        changes.push(Change::Create(meta.clone()));
        Ok(meta)
    }

    fn remove_doc(&self, wtxn: &mut RwTxn, changes: &mut Vec<Change>, meta: &IndexMeta, doc: &DocRecord) -> Result<()> {
        let writer = arroy::Writer::<Cosine>::new(self.vectors, meta.arroy, meta.dimensions);
        for &id in &doc.chunks {
            writer.del_item(wtxn, id)?;
            let text = self.chunks.get(wtxn, &id)?.map(|c| c.text).unwrap_or_default();
            self.chunks.delete(wtxn, &id)?;
            changes.push(Change::RemoveChunk { index: meta.name.clone(), id, text });
        }
        self.docs.delete(wtxn, &doc_key(&meta.name, &doc.doc_id))?;
        changes.push(Change::RemoveDoc { index: meta.name.clone(), doc_id: doc.doc_id.clone() });
        Ok(())
    }

    fn put_doc(&self, wtxn: &mut RwTxn, changes: &mut Vec<Change>, meta: &IndexMeta, doc: NewDoc) -> Result<DocRecord> {
        if doc.chunks.is_empty() {
            // Callers embed only documents that were new or changed when they
            // looked; this one changed since.
            return Err(Error::Conflict(format!(
                "document {:?} changed while this request ran; send it again",
                doc.doc_id
            )));
        }
        let writer = arroy::Writer::<Cosine>::new(self.vectors, meta.arroy, meta.dimensions);
        let mut ids = Vec::with_capacity(doc.chunks.len());
        for (text, vector) in doc.chunks {
            let id = self.next_chunk_id(wtxn)?;
            writer.add_item(wtxn, id, &vector)?;
            let record = ChunkRecord { index: meta.name.clone(), doc_id: doc.doc_id.clone(), text };
            self.chunks.put(wtxn, &id, &record)?;
            changes.push(Change::AddChunk {
                index: meta.name.clone(),
                id,
                doc_id: doc.doc_id.clone(),
                text: record.text,
                vector,
            });
            ids.push(id);
        }
        let record = DocRecord {
            hash_value: sha256(&doc.text),
            doc_id: doc.doc_id,
            text: doc.text,
            metadata: doc.metadata,
            chunks: ids,
        };
        self.docs.put(wtxn, &doc_key(&meta.name, &record.doc_id), &record)?;
        changes.push(Change::AddDoc {
            index: meta.name.clone(),
            doc_id: record.doc_id.clone(),
            metadata: record.metadata.clone(),
        });
        Ok(record)
    }

    /// For each `(doc_id, text, metadata)`, whether it is stored in `index`
    /// exactly so (`None`: not stored), from one read transaction.
    pub fn unchanged(&self, index: &str, docs: &[(String, String, Map<String, Value>)]) -> Result<Vec<Option<bool>>> {
        let rtxn = self.env.read_txn()?;
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
            let meta = self.ensure_index(wtxn, changes, index, model, dim)?;
            let mut out = Vec::with_capacity(docs.len());
            for doc in docs {
                if let Some(old) = self.docs.get(wtxn, &doc_key(index, &doc.doc_id))? {
                    if old.text == doc.text && old.metadata == doc.metadata {
                        out.push(old);
                        continue;
                    }
                    self.remove_doc(wtxn, changes, &meta, &old)?;
                }
                out.push(self.put_doc(wtxn, changes, &meta, doc)?);
            }
            Ok(out)
        })
    }

    /// Replaces documents that exist and differ; reports each.
    pub fn update_documents(&self, index: &str, docs: Vec<NewDoc>) -> Result<UpdateOutcome> {
        self.write(|wtxn, changes| {
            let meta = self.indexes.get(wtxn, index)?.ok_or_else(|| Error::IndexNotFound(index.into()))?;
            let mut out = UpdateOutcome::default();
            for doc in docs {
                let summary = serde_json::json!({"doc_id": doc.doc_id, "text": doc.text, "metadata": doc.metadata});
                match self.docs.get(wtxn, &doc_key(index, &doc.doc_id))? {
                    None => out.not_found_documents.push(summary),
                    Some(old) if old.text == doc.text && old.metadata == doc.metadata => {
                        out.unchanged_documents.push(summary)
                    }
                    Some(old) => {
                        self.remove_doc(wtxn, changes, &meta, &old)?;
                        let rec = self.put_doc(wtxn, changes, &meta, doc)?;
                        out.updated_documents.push(doc_json(&rec, None));
                    }
                }
            }
            Ok(out)
        })
    }

    /// Deletes documents; returns (deleted, not found).
    pub fn delete_documents(&self, index: &str, ids: &[String]) -> Result<(Vec<String>, Vec<String>)> {
        self.write(|wtxn, changes| {
            let meta = self.indexes.get(wtxn, index)?.ok_or_else(|| Error::IndexNotFound(index.into()))?;
            let (mut deleted, mut missing) = (Vec::new(), Vec::new());
            for id in ids {
                match self.docs.get(wtxn, &doc_key(index, id))? {
                    Some(doc) => {
                        self.remove_doc(wtxn, changes, &meta, &doc)?;
                        deleted.push(id.clone());
                    }
                    None => missing.push(id.clone()),
                }
            }
            Ok((deleted, missing))
        })
    }

    /// Deletes an index and everything in it.
    pub fn delete_index(&self, index: &str) -> Result<()> {
        self.write(|wtxn, changes| {
            self.drop_index(wtxn, changes, index)?.then_some(()).ok_or_else(|| Error::IndexNotFound(index.into()))
        })
    }

    fn drop_index(&self, wtxn: &mut RwTxn, changes: &mut Vec<Change>, index: &str) -> Result<bool> {
        let Some(meta) = self.indexes.get(wtxn, index)? else { return Ok(false) };
        let docs: Vec<DocRecord> =
            self.docs.prefix_iter(wtxn, &format!("{index}/"))?.map(|r| r.map(|(_, d)| d)).collect::<Result<_, _>>()?;
        for doc in &docs {
            for id in &doc.chunks {
                self.chunks.delete(wtxn, id)?;
            }
            self.docs.delete(wtxn, &doc_key(index, &doc.doc_id))?;
        }
        arroy::Writer::<Cosine>::new(self.vectors, meta.arroy, meta.dimensions).clear(wtxn)?;
        self.indexes.delete(wtxn, index)?;
        changes.push(Change::Drop(index.to_string()));
        Ok(true)
    }

    /// One page of an index's documents, optionally filtered by metadata.
    pub fn list_documents(
        &self,
        index: &str,
        limit: usize,
        offset: usize,
        max_text_length: Option<usize>,
        filter: Option<&Map<String, Value>>,
    ) -> Result<DocPage> {
        let rtxn = self.env.read_txn()?;
        if self.indexes.get(&rtxn, index)?.is_none() {
            return Err(Error::IndexNotFound(index.into()));
        }
        let mut total = 0;
        let mut documents = Vec::new();
        for item in self.docs.prefix_iter(&rtxn, &format!("{index}/"))? {
            let (_, doc) = item?;
            if !matches(&doc.metadata, filter) {
                continue;
            }
            if total >= offset && documents.len() < limit {
                documents.push(doc_json(&doc, max_text_length));
            }
            total += 1;
        }
        Ok(DocPage { count: documents.len(), documents, total_items: total })
    }

    /// Hybrid retrieval: the `k` best chunks by 0.7 × cosine + 0.3 × BM25
    /// (normalised to the best BM25 candidate), among documents matching `filter`.
    pub fn retrieve(
        &self,
        index: &str,
        query_text: &str,
        query_vector: &[f32],
        k: usize,
        filter: Option<&Map<String, Value>>,
    ) -> Result<Vec<Node>> {
        let mirror = self.mirror.read().expect("mirror lock");
        let m = mirror.get(index).ok_or_else(|| Error::IndexNotFound(index.into()))?;
        if query_vector.len() != m.meta.dimensions {
            return Err(Error::Conflict(format!(
                "index {index:?} holds {}-dimensional vectors of {}; the query embedding has {}",
                m.meta.dimensions,
                m.meta.embedding_model,
                query_vector.len()
            )));
        }
        let allowed =
            |id: u32| m.chunk_doc.get(&id).and_then(|d| m.doc_meta.get(d)).is_some_and(|md| matches(md, filter));
        let pool = (k * 4).max(20);
        let dense = m.vectors.search(query_vector, pool, filter.map(|_| &allowed as &dyn Fn(u32) -> bool));
        let sparse_all = m.bm25.scores(query_text);
        let mut sparse: Vec<(u32, f32)> =
            sparse_all.iter().map(|(&id, &s)| (id, s)).filter(|(id, _)| allowed(*id)).collect();
        sparse.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        sparse.truncate(pool);
        let best_sparse = sparse.first().map(|s| s.1).unwrap_or(0.0);
        // Every candidate allowed by the filter scores at most the best
        // sparse candidate, so the normalised BM25 score stays within [0, 1].
        let sparse_score = |id: u32| match sparse_all.get(&id) {
            Some(s) if best_sparse > 0.0 => s / best_sparse,
            _ => 0.0,
        };
        let mut q = query_vector.to_vec();
        crate::vectors::normalize(&mut q);
        // Each candidate's cosine and which retrievers proposed it (1 dense, 2 sparse, 3 both).
        let mut candidates: HashMap<u32, (f32, u8)> = dense.iter().map(|h| (h.id, (h.score, 1))).collect();
        for (id, _) in &sparse {
            candidates.entry(*id).or_insert_with(|| (m.vectors.vector(*id).map(|v| DOT(&q, v)).unwrap_or(0.0), 0)).1 |=
                2;
        }
        let mut ranked: Vec<(u32, f32, f32, f32, u8)> = candidates
            .into_iter()
            .map(|(id, (d, src))| {
                let s = sparse_score(id);
                (id, DENSE_WEIGHT * d + (1.0 - DENSE_WEIGHT) * s, d, s, src)
            })
            .collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        ranked.truncate(k);
        let rtxn = self.env.read_txn()?;
        let mut nodes = Vec::with_capacity(ranked.len());
        for (id, score, dense, sparse, src) in ranked {
            let Some(chunk) = self.chunks.get(&rtxn, &id)? else { continue };
            let metadata = m.doc_meta.get(&chunk.doc_id).cloned().unwrap_or_default();
            nodes.push(Node {
                doc_id: chunk.doc_id,
                node_id: id.to_string(),
                text: chunk.text,
                score,
                dense_score: dense,
                sparse_score: sparse,
                source: match src {
                    1 => "dense",
                    2 => "sparse",
                    _ => "both",
                },
                metadata,
            });
        }
        Ok(nodes)
    }

    /// Writes a consistent snapshot of `index` to `path` (JSON lines, vectors
    /// base64 little-endian f32), atomically by rename; returns documents written.
    pub fn persist(&self, index: &str, path: &Path) -> Result<usize> {
        let rtxn = self.env.read_txn()?;
        let meta = self.indexes.get(&rtxn, index)?.ok_or_else(|| Error::IndexNotFound(index.into()))?;
        let writer = arroy::Writer::<Cosine>::new(self.vectors, meta.arroy, meta.dimensions);
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
        for item in self.docs.prefix_iter(&rtxn, &format!("{index}/"))? {
            let (_, doc) = item?;
            let mut chunks = Vec::with_capacity(doc.chunks.len());
            for id in &doc.chunks {
                let text = self.chunks.get(&rtxn, id)?.map(|c| c.text).unwrap_or_default();
                let vector = writer.item_vector(&rtxn, *id)?.unwrap_or_default();
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
                    return Err(Error::Conflict(format!("index {index:?} exists; pass overwrite=true to replace it")));
                }
                self.drop_index(wtxn, changes, index)?;
            }
            let meta = self.ensure_index(wtxn, changes, index, model, dim)?;
            for doc in docs {
                self.put_doc(wtxn, changes, &meta, doc)?;
            }
            Ok(n)
        })
    }
}

/// First line of every snapshot file.
pub const SNAPSHOT_FORMAT: &str = "kaito-rag-snapshot/v1";

/// A document as the API shows it, text cut to `max_text_length` characters.
pub fn doc_json(doc: &DocRecord, max_text_length: Option<usize>) -> Value {
    let (text, truncated) = match max_text_length {
        Some(n) if doc.text.chars().count() > n => (doc.text.chars().take(n).collect::<String>(), true),
        _ => (doc.text.clone(), false),
    };
    serde_json::json!({
        "doc_id": doc.doc_id,
        "text": text,
        "metadata": doc.metadata,
        "hash_value": doc.hash_value,
        "is_truncated": truncated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(id: &str, text: &str, vectors: &[[f32; 3]]) -> NewDoc {
        NewDoc {
            doc_id: id.into(),
            text: text.into(),
            metadata: serde_json::json!({"author": id}).as_object().unwrap().clone(),
            chunks: vectors.iter().enumerate().map(|(i, v)| (format!("{text} part {i}"), v.to_vec())).collect(),
        }
    }

    #[test]
    fn documents_survive_reopen_and_delete_cleans_everything() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), 1 << 26, SearchParams::default()).unwrap();
            store
                .index_documents(
                    "idx",
                    "m",
                    3,
                    vec![
                        doc("a", "apples are red", &[[1.0, 0.0, 0.0]]),
                        doc("b", "the sky is blue", &[[0.0, 1.0, 0.0], [0.0, 0.9, 0.1]]),
                    ],
                )
                .unwrap();
            assert_eq!(store.counts("idx"), Some((2, 3)));
        }
        let store = Store::open(dir.path(), 1 << 26, SearchParams::default()).unwrap();
        assert_eq!(store.index_names(), ["idx"]);
        assert_eq!(store.counts("idx"), Some((2, 3)));
        let nodes = store.retrieve("idx", "sky", &[0.0, 1.0, 0.0], 2, None).unwrap();
        assert_eq!(nodes[0].doc_id, "b");
        assert_eq!(nodes[0].source, "both");
        let red = serde_json::json!({"author": "a"});
        let only_a = store.retrieve("idx", "sky", &[0.0, 1.0, 0.0], 5, red.as_object()).unwrap();
        assert!(only_a.iter().all(|n| n.doc_id == "a"));
        let (deleted, missing) = store.delete_documents("idx", &["b".into(), "zz".into()]).unwrap();
        assert_eq!((deleted, missing), (vec!["b".to_string()], vec!["zz".to_string()]));
        assert_eq!(store.counts("idx"), Some((1, 1)));
        assert_eq!(store.verify().unwrap(), (1, 1));
        store.delete_index("idx").unwrap();
        assert!(store.index_names().is_empty());
        assert_eq!(store.verify().unwrap(), (0, 0));
        let rtxn = store.env.read_txn().unwrap();
        assert_eq!(store.chunks.len(&rtxn).unwrap(), 0);
        assert_eq!(store.docs.len(&rtxn).unwrap(), 0);
    }

    #[test]
    fn another_model_cannot_write_into_an_index() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 26, SearchParams::default()).unwrap();
        store.index_documents("idx", "m", 3, vec![doc("a", "x", &[[1.0, 0.0, 0.0]])]).unwrap();
        let err = store.index_documents("idx", "other", 3, vec![doc("b", "y", &[[1.0, 0.0, 0.0]])]).unwrap_err();
        assert!(matches!(err, Error::Conflict(_)), "{err}");
    }

    #[test]
    fn snapshot_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db"), 1 << 26, SearchParams::default()).unwrap();
        store
            .index_documents(
                "idx",
                "m",
                3,
                vec![doc("a", "alpha", &[[1.0, 0.0, 0.0]]), doc("b", "beta", &[[0.0, 0.0, 1.0]])],
            )
            .unwrap();
        let path = dir.path().join("snap/idx.jsonl");
        assert_eq!(store.persist("idx", &path).unwrap(), 2);
        assert!(matches!(store.load("idx", &path, false, "m", 3), Err(Error::Conflict(_))));
        assert_eq!(store.load("copy", &path, false, "m", 3).unwrap(), 2);
        let page = store.list_documents("copy", 10, 0, Some(3), None).unwrap();
        assert_eq!(page.total_items, 2);
        assert_eq!(page.documents[0]["text"], "alp");
        assert_eq!(page.documents[0]["is_truncated"], true);
        let nodes = store.retrieve("copy", "beta", &[0.0, 0.0, 1.0], 1, None).unwrap();
        assert_eq!(nodes[0].doc_id, "b");
    }
}
