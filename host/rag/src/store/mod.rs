//! Durable storage: one LMDB environment per data directory, split by job.
//!
//! - this file: the environment, its databases, the write path and the
//!   optional in-memory cache;
//! - [`documents`]: documents and chunks, in insertion order;
//! - [`snapshot`]: `/persist` and `/load` files;
//! - [`retrieval`]: hybrid search, one [`Candidate`] per chunk;
//! - [`vector_db`]: the vectors, on disk (the only file naming arroy);
//! - [`text_index`]: the words, on disk for BM25 (the only file naming tantivy).
//!
//! Every write request runs in one write transaction, which also builds the
//! vector trees of the indexes it touched, so a crash leaves each request
//! either fully stored (trees included) or not at all. Reads open their own
//! read transaction and search on disk. After each commit, under the lock
//! that serialises writers, the same changes go to each index's keyword
//! index (rebuilt from LMDB at start when it missed a commit) and to the
//! cache ([`Cache`]): the vectors of the indexes that fit in
//! `--vector-cache-bytes`, searched in memory instead of through the
//! on-disk trees, filled from LMDB at start.

pub mod documents;
pub mod retrieval;
pub mod snapshot;
pub mod text_index;
pub mod vector_db;

pub use documents::{DocPage, DocRecord, NewDoc, UpdateOutcome, sha256};
pub use retrieval::{Candidate, Rank, Retrieved};
pub use vector_db::{SearchConfig, Tuning};

use crate::error::{Error, Result};
use crate::vectors::{SearchParams, VectorIndex};
use heed::byteorder::BigEndian;
use heed::types::{SerdeJson, Str, U32, U64};
use heed::{CommitOrAbort, Database, Env, EnvOpenOptions, RoTxn, RwTxn};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use text_index::{TextChange, TextIndex};
use vector_db::VectorDb;

/// Layout of the databases; older layouts are upgraded by [`Store::open`].
const LAYOUT: u64 = 2;

/// What is stored about one index.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IndexMeta {
    /// Index name.
    pub name: String,
    /// Number of this index in the vector database.
    pub arroy: u16,
    /// Embedding model the vectors came from.
    pub embedding_model: String,
    /// Vector length.
    pub dimensions: usize,
    /// Documents stored.
    #[serde(default)]
    pub documents: u64,
    /// Chunks (and vectors) stored.
    #[serde(default)]
    pub chunks: u64,
    /// Insertion number the next document gets.
    #[serde(default)]
    pub next_seq: u64,
    /// How queries walk the vector trees, measured at the last calibration.
    #[serde(default)]
    pub tuning: Option<Tuning>,
    /// Write transactions that changed its chunks: the keyword index is
    /// current when its last commit carries the same number.
    #[serde(default)]
    pub generation: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ChunkRecord {
    index: String,
    doc_id: String,
    text: String,
}

/// A change to apply to the cache once its transaction has committed.
enum Change {
    Create { name: String, dim: usize, arroy: u16 },
    Drop(String),
    AddChunk { index: String, id: u32, text: String, vector: Vec<f32> },
    RemoveChunk { index: String, id: u32 },
}

/// What RAM holds for one index beyond LMDB's pages.
struct IndexCache {
    /// The vectors, when they fit in the cache budget.
    vectors: Option<VectorIndex>,
}

/// The in-memory cache of every index.
struct Cache {
    indexes: HashMap<String, IndexCache>,
    /// Bytes of vectors the cache may hold, over all indexes.
    budget: usize,
}

impl Cache {
    fn vector_bytes(&self) -> usize {
        self.indexes.values().filter_map(|c| c.vectors.as_ref()).map(VectorIndex::memory_bytes).sum()
    }
}

/// Options of [`Store::open`].
#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    /// LMDB map size in bytes (address space, not disk).
    pub map_size: usize,
    /// Bytes of vectors kept in RAM (0: search on disk only).
    pub vector_cache_bytes: usize,
    /// The on-disk search.
    pub search: SearchConfig,
    /// The in-memory search of cached indexes.
    pub cached: SearchParams,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            map_size: 1 << 30,
            vector_cache_bytes: 1 << 30,
            search: SearchConfig::default(),
            cached: SearchParams::default(),
        }
    }
}

/// The service's storage.
pub struct Store {
    env: Env,
    indexes: Database<'static, Str, SerdeJson<IndexMeta>>,
    docs: Database<'static, Str, SerdeJson<DocRecord>>,
    /// `index/<seq, 20 digits>` → doc id: documents in insertion order.
    order: Database<'static, Str, Str>,
    chunks: Database<'static, U32<BigEndian>, SerdeJson<ChunkRecord>>,
    counters: Database<'static, Str, U64<BigEndian>>,
    vectors: VectorDb,
    writer: Mutex<()>,
    cache: RwLock<Cache>,
    /// Each index's keyword index, by index name.
    texts: RwLock<HashMap<String, Arc<TextIndex>>>,
    /// Where the keyword indexes live (`<lmdb dir>/text/<arroy number>`).
    text_dir: PathBuf,
    /// Threads that run a hybrid query's BM25 side while its caller runs the
    /// dense side; its own pool, so arroy's tree builds (on rayon's global
    /// pool) never queue ahead of a query.
    keyword_pool: rayon::ThreadPool,
    options: StoreOptions,
}

/// One index's vectors added (chunk id, vector) and chunk ids removed by a write transaction.
type Filed<'a> = (Vec<(u32, &'a [f32])>, Vec<u32>);

/// Key of a document in `docs`.
fn doc_key(index: &str, doc_id: &str) -> String {
    format!("{index}/{doc_id}")
}

/// Key of a document's insertion number in `order`.
fn order_key(index: &str, seq: u64) -> String {
    format!("{index}/{seq:020}")
}

impl Store {
    /// Opens (or creates) the environment in `dir`, upgrades an older layout and fills the cache.
    pub fn open(dir: &Path, options: StoreOptions) -> Result<Store> {
        std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
        // SAFETY: the environment is opened once per process and the data
        // directory is not shared with another process (LMDB's lock file
        // also guards against that).
        let env = unsafe { EnvOpenOptions::new().map_size(options.map_size).max_dbs(16).open(dir)? };
        let wtxn = env.write_txn()?;
        let (indexes, docs, order, chunks, counters, vectors, legacy_counters) = env
            .create_databases_and_commit(wtxn, |dbs, wtxn| -> Result<_, heed::Error> {
                Ok(CommitOrAbort::<_, ()>::Commit((
                    dbs.create_database(wtxn, Some("indexes"))?,
                    dbs.create_database(wtxn, Some("docs"))?,
                    dbs.create_database(wtxn, Some("order"))?,
                    dbs.create_database(wtxn, Some("chunks"))?,
                    dbs.create_database(wtxn, Some("counters-v2"))?,
                    vector_db::create_databases(dbs, wtxn)?,
                    dbs.open_database::<Str, U32<BigEndian>>(wtxn, Some("counters"))?,
                )))
            })?
            .unwrap_commit();
        let store = Store {
            env,
            indexes,
            docs,
            order,
            chunks,
            counters,
            vectors: VectorDb::new(vectors),
            writer: Mutex::new(()),
            cache: RwLock::new(Cache { indexes: HashMap::new(), budget: options.vector_cache_bytes }),
            texts: RwLock::new(HashMap::new()),
            text_dir: dir.join("text"),
            keyword_pool: rayon::ThreadPoolBuilder::new()
                .thread_name(|i| format!("bm25-{i}"))
                .build()
                .map_err(|e| anyhow::anyhow!("starting the keyword search threads: {e}"))?,
            options,
        };
        store.upgrade(legacy_counters)?;
        store.recalibrate(|t| t.target != options.search.target_recall || t.version != vector_db::TUNING_VERSION)?;
        store.fill_cache()?;
        store.open_texts()?;
        Ok(store)
    }

    /// Opens every index's keyword index, rebuilding from LMDB those that
    /// missed a commit, and removes the directories of deleted indexes.
    fn open_texts(&self) -> Result<()> {
        let rtxn = self.env.read_txn()?;
        let mut texts = HashMap::new();
        let mut dirs = HashSet::new();
        for item in self.indexes.iter(&rtxn)? {
            let (name, meta) = item?;
            let dir = self.text_dir.join(meta.arroy.to_string());
            dirs.insert(dir.clone());
            let (text, generation) = TextIndex::open(&dir)?;
            if generation != Some(meta.generation) {
                let mut chunks = Vec::with_capacity(meta.chunks as usize);
                for item in self.docs.prefix_iter(&rtxn, &format!("{name}/"))? {
                    let (_, doc) = item?;
                    for id in doc.chunks {
                        if let Some(c) = self.chunks.get(&rtxn, &id)? {
                            chunks.push((id, c.text));
                        }
                    }
                }
                let n = text.rebuild(chunks.iter().map(|(id, t)| (*id, t.as_str())), meta.generation)?;
                tracing::info!(index = name, chunks = n, was = ?generation, now = meta.generation, "keyword index rebuilt from LMDB");
            }
            texts.insert(name.to_string(), Arc::new(text));
        }
        if let Ok(entries) = std::fs::read_dir(&self.text_dir) {
            for e in entries.flatten() {
                if !dirs.contains(&e.path()) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        *self.texts.write().expect("texts lock") = texts;
        Ok(())
    }

    /// The keyword index of `index`.
    fn text(&self, index: &str) -> Option<Arc<TextIndex>> {
        self.texts.read().expect("texts lock").get(index).cloned()
    }

    /// Upgrades a layout-1 environment in one transaction: documents get
    /// insertion numbers (in id order, all layout 1 kept), counts are
    /// recorded and vectors move to the vector database.
    fn upgrade(&self, legacy_counters: Option<Database<'static, Str, U32<BigEndian>>>) -> Result<()> {
        let _guard = self.writer.lock().expect("writer lock");
        let mut wtxn = self.env.write_txn()?;
        if self.counters.get(&wtxn, "layout")?.is_some() {
            return Ok(());
        }
        let metas: Vec<IndexMeta> = self.indexes.iter(&wtxn)?.map(|r| r.map(|(_, m)| m)).collect::<Result<_, _>>()?;
        let legacy =
            self.vectors.migrate_v1(&mut wtxn, &metas.iter().map(|m| (m.arroy, m.dimensions)).collect::<Vec<_>>())?;
        for mut meta in metas {
            let docs: Vec<DocRecord> = self
                .docs
                .prefix_iter(&wtxn, &format!("{}/", meta.name))?
                .map(|r| r.map(|(_, d)| d))
                .collect::<Result<_, _>>()?;
            meta.documents = docs.len() as u64;
            meta.chunks = docs.iter().map(|d| d.chunks.len() as u64).sum();
            for mut doc in docs {
                doc.hash_value = documents::hash_value(&doc.text, &doc.metadata);
                doc.seq = meta.next_seq;
                meta.next_seq += 1;
                self.order.put(&mut wtxn, &order_key(&meta.name, doc.seq), &doc.doc_id)?;
                self.docs.put(&mut wtxn, &doc_key(&meta.name, &doc.doc_id), &doc)?;
            }
            self.indexes.put(&mut wtxn, &meta.name.clone(), &meta)?;
        }
        if let Some(old) = legacy_counters
            && let Some(next) = old.get(&wtxn, "next_chunk_id")?
        {
            self.counters.put(&mut wtxn, "next_chunk_id", &u64::from(next))?;
        }
        self.counters.put(&mut wtxn, "layout", &LAYOUT)?;
        wtxn.commit()?;
        if legacy > 0 {
            tracing::info!(vectors = legacy, "upgraded a layout-1 data directory");
        }
        Ok(())
    }

    fn fill_cache(&self) -> Result<()> {
        let rtxn = self.env.read_txn()?;
        let mut cache = self.cache.write().expect("cache lock");
        cache.indexes.clear();
        for item in self.indexes.iter(&rtxn)? {
            let (name, meta) = item?;
            let fits = cache.vector_bytes() + Self::cached_bytes(&meta) <= cache.budget;
            let vectors = if fits {
                let mut v = VectorIndex::bulk(meta.dimensions, self.options.cached);
                self.vectors.each(&rtxn, meta.arroy, |id, vector| v.push(id, &vector))?;
                // The on-disk partition, where there is one, spares the cache training and calibrating its own.
                let target = self.options.cached.target_recall;
                match self.vectors.seed(&rtxn, meta.arroy, meta.tuning.as_ref(), target)? {
                    Some(seed) => Some(v.finish_with(seed)),
                    None => Some(v.finish()),
                }
            } else {
                None
            };
            cache.indexes.insert(name.to_string(), IndexCache { vectors });
        }
        Ok(())
    }

    /// Bytes the cache would hold for an index's vectors (vector, code, id).
    fn cached_bytes(meta: &IndexMeta) -> usize {
        meta.chunks as usize * (meta.dimensions * 4 + meta.dimensions.div_ceil(64) * 8 + 4)
    }

    /// Names of every index, sorted.
    pub fn index_names(&self) -> Result<Vec<String>> {
        let rtxn = self.env.read_txn()?;
        Ok(self.indexes.iter(&rtxn)?.map(|r| r.map(|(k, _)| k.to_string())).collect::<Result<_, _>>()?)
    }

    /// Metadata of an index.
    pub fn index_meta(&self, index: &str) -> Result<Option<IndexMeta>> {
        let rtxn = self.env.read_txn()?;
        Ok(self.indexes.get(&rtxn, index)?)
    }

    /// Documents and chunks of an index.
    pub fn counts(&self, index: &str) -> Result<Option<(usize, usize)>> {
        Ok(self.index_meta(index)?.map(|m| (m.documents as usize, m.chunks as usize)))
    }

    /// True when the vectors of `index` are searched in memory.
    pub fn is_cached(&self, index: &str) -> bool {
        self.cache.read().expect("cache lock").indexes.get(index).is_some_and(|c| c.vectors.is_some())
    }

    /// Runs `f` in one write transaction, builds the vector trees of the
    /// indexes it touched (recalibrating those whose size moved by a
    /// quarter), commits, and then applies its changes to the cache; the
    /// writer lock is held throughout.
    fn write<T>(&self, f: impl FnOnce(&mut RwTxn, &mut Vec<Change>) -> Result<T>) -> Result<T> {
        let _guard = self.writer.lock().expect("writer lock");
        let mut wtxn = self.env.write_txn()?;
        let mut changes = Vec::new();
        let out = f(&mut wtxn, &mut changes)?;
        // Each index whose chunks this transaction touched, in name order, with
        // its vectors added and removed, netted (a chunk added and removed
        // again never reaches the partition).
        let mut filed: BTreeMap<&str, Filed> = BTreeMap::new();
        for c in &changes {
            match c {
                Change::AddChunk { index, id, vector, .. } => filed.entry(index).or_default().0.push((*id, vector)),
                Change::RemoveChunk { index, id } => {
                    let (adds, removes) = filed.entry(index).or_default();
                    match adds.iter().position(|(a, _)| a == id) {
                        Some(i) => {
                            adds.swap_remove(i);
                        }
                        None => removes.push(*id),
                    }
                }
                _ => {}
            }
        }
        let mut generations = HashMap::new();
        for (index, (adds, removes)) in filed {
            let Some(mut meta) = self.indexes.get(&wtxn, index)? else { continue };
            self.vectors.build(&mut wtxn, meta.arroy, meta.dimensions)?;
            let retrained =
                self.vectors.file(&mut wtxn, meta.arroy, meta.dimensions, &adds, &removes, self.train_at())?;
            meta.generation += 1;
            generations.insert(index.to_string(), meta.generation);
            self.calibrate_if(&mut wtxn, &mut meta, |_| retrained)?;
            self.indexes.put(&mut wtxn, index, &meta)?;
        }
        wtxn.commit()?;
        self.apply_texts(&changes, &generations);
        self.apply(changes);
        Ok(out)
    }

    /// Applies committed chunk changes to the keyword indexes. A failure is
    /// logged, not returned: LMDB has committed, and the index that missed
    /// the change is rebuilt from LMDB at the next start.
    fn apply_texts(&self, changes: &[Change], generations: &HashMap<String, u64>) {
        let mut per_index: HashMap<&str, Vec<TextChange>> = HashMap::new();
        for change in changes {
            match change {
                Change::Create { name, arroy, .. } => {
                    let dir = self.text_dir.join(arroy.to_string());
                    // A number freed by a deleted index may come back: start empty.
                    let _ = std::fs::remove_dir_all(&dir);
                    match TextIndex::open(&dir) {
                        Ok((t, _)) => {
                            self.texts.write().expect("texts lock").insert(name.clone(), Arc::new(t));
                        }
                        Err(e) => tracing::error!(index = name, error = %e, "creating the keyword index failed"),
                    }
                }
                Change::Drop(name) => {
                    per_index.remove(name.as_str());
                    if let Some(t) = self.texts.write().expect("texts lock").remove(name)
                        && let Ok(t) = Arc::try_unwrap(t)
                    {
                        t.destroy();
                    }
                }
                Change::AddChunk { index, id, text, .. } => {
                    per_index.entry(index.as_str()).or_default().push(TextChange::Add(*id, text))
                }
                Change::RemoveChunk { index, id, .. } => {
                    per_index.entry(index.as_str()).or_default().push(TextChange::Remove(*id))
                }
            }
        }
        for (index, list) in per_index {
            let (Some(text), Some(&generation)) = (self.text(index), generations.get(index)) else { continue };
            if let Err(e) = text.apply(&list, generation) {
                tracing::error!(index, error = %e, "keyword index update failed; it is rebuilt at the next start");
            }
        }
    }

    /// Size at which an index's on-disk partition is trained: where the
    /// on-disk search stops scanning exactly.
    fn train_at(&self) -> usize {
        self.options.search.exact_below.max(1000)
    }

    /// Recalibrates `meta`'s search when it has none, when its size moved by
    /// a quarter since the last calibration, or when `stale` says so.
    fn calibrate_if(&self, wtxn: &mut RwTxn, meta: &mut IndexMeta, stale: impl Fn(&Tuning) -> bool) -> Result<bool> {
        if (meta.chunks as usize) < self.options.search.exact_below {
            return Ok(false);
        }
        let due = meta
            .tuning
            .is_none_or(|t| crate::vectors::moved_by_a_quarter(t.items as usize, meta.chunks as usize) || stale(&t));
        if due {
            let tuning = self.vectors.calibrate(wtxn, meta.arroy, &self.options.search)?;
            tracing::info!(index = meta.name, chunks = meta.chunks, walk = ?tuning.walk, shortlist = tuning.shortlist, recall = tuning.recall, "vector search calibrated");
            meta.tuning = Some(tuning);
        }
        Ok(due)
    }

    /// Recalibrates, in one write transaction, every index whose tuning `stale` rejects.
    fn recalibrate(&self, stale: impl Fn(&Tuning) -> bool) -> Result<()> {
        let _guard = self.writer.lock().expect("writer lock");
        let mut wtxn = self.env.write_txn()?;
        let metas: Vec<IndexMeta> = self.indexes.iter(&wtxn)?.map(|r| r.map(|(_, m)| m)).collect::<Result<_, _>>()?;
        for mut meta in metas {
            // An index written before the on-disk partition existed gets one here.
            let trained = self.vectors.file(&mut wtxn, meta.arroy, meta.dimensions, &[], &[], self.train_at())?;
            if self.calibrate_if(&mut wtxn, &mut meta, |t| trained || stale(t))? {
                self.indexes.put(&mut wtxn, &meta.name.clone(), &meta)?;
            }
        }
        wtxn.commit()?;
        Ok(())
    }

    fn apply(&self, changes: Vec<Change>) {
        let mut cache = self.cache.write().expect("cache lock");
        let mut grew: HashSet<String> = HashSet::new();
        for change in changes {
            match change {
                Change::Create { name, dim, .. } => {
                    let vectors = Some(VectorIndex::new(dim, self.options.cached));
                    cache.indexes.insert(name, IndexCache { vectors });
                }
                Change::Drop(name) => {
                    cache.indexes.remove(&name);
                }
                Change::AddChunk { index, id, vector, .. } => {
                    if let Some(v) = cache.indexes.get_mut(&index).and_then(|c| c.vectors.as_mut()) {
                        v.insert(id, &vector);
                        grew.insert(index);
                    }
                }
                Change::RemoveChunk { index, id, .. } => {
                    if let Some(v) = cache.indexes.get_mut(&index).and_then(|c| c.vectors.as_mut()) {
                        v.remove(id);
                    }
                }
            }
        }
        // An index that outgrew the budget is searched on disk from now on.
        for index in grew {
            let budget = cache.budget;
            if cache.vector_bytes() > budget
                && let Some(c) = cache.indexes.get_mut(&index)
            {
                tracing::info!(index, budget, "vector cache full: this index is searched on disk");
                c.vectors = None;
            }
        }
    }

    fn next_chunk_id(&self, wtxn: &mut RwTxn) -> Result<u32> {
        let id = self.counters.get(wtxn, "next_chunk_id")?.unwrap_or(0);
        let id32 = u32::try_from(id).map_err(|_| anyhow::anyhow!("chunk ids exhausted"))?;
        self.counters.put(wtxn, "next_chunk_id", &(id + 1))?;
        Ok(id32)
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
        let meta = IndexMeta {
            name: index.to_string(),
            arroy,
            embedding_model: model.to_string(),
            dimensions: dim,
            documents: 0,
            chunks: 0,
            next_seq: 0,
            tuning: None,
            generation: 0,
        };
        self.indexes.put(wtxn, index, &meta)?;
        changes.push(Change::Create { name: index.to_string(), dim, arroy });
        Ok(meta)
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
        let mut ids = Vec::new();
        for doc in &docs {
            for id in &doc.chunks {
                self.chunks.delete(wtxn, id)?;
                ids.push(*id);
            }
            self.docs.delete(wtxn, &doc_key(index, &doc.doc_id))?;
            self.order.delete(wtxn, &order_key(index, doc.seq))?;
        }
        self.vectors.clear(wtxn, meta.arroy, meta.dimensions, ids)?;
        self.indexes.delete(wtxn, index)?;
        changes.push(Change::Drop(index.to_string()));
        Ok(true)
    }

    /// Checks that every document's chunks exist with a vector, every chunk
    /// and vector belongs to a document, insertion order lists each
    /// document once and the recorded counts agree; returns (documents, chunks).
    pub fn verify(&self) -> Result<(usize, usize)> {
        let rtxn = self.env.read_txn()?;
        let mut owned: HashMap<u32, String> = HashMap::new();
        let mut per_index: HashMap<String, (u64, u64)> = HashMap::new();
        let mut docs = 0;
        for item in self.docs.iter(&rtxn)? {
            let (key, doc) = item?;
            docs += 1;
            let index = key.split('/').next().unwrap_or_default().to_string();
            if self.indexes.get(&rtxn, &index)?.is_none() {
                return Err(anyhow::anyhow!("document {key} has no index").into());
            }
            if doc.chunks.is_empty() || doc.hash_value != documents::hash_value(&doc.text, &doc.metadata) {
                return Err(anyhow::anyhow!("document {key} is incomplete").into());
            }
            if self.order.get(&rtxn, &order_key(&index, doc.seq))? != Some(doc.doc_id.as_str()) {
                return Err(anyhow::anyhow!("document {key} is missing from the insertion order").into());
            }
            for id in &doc.chunks {
                let chunk =
                    self.chunks.get(&rtxn, id)?.ok_or_else(|| anyhow::anyhow!("document {key}: chunk {id} missing"))?;
                if chunk.doc_id != doc.doc_id || chunk.index != index {
                    return Err(
                        anyhow::anyhow!("chunk {id} belongs to {}/{}, not {key}", chunk.index, chunk.doc_id).into()
                    );
                }
                if self.vectors.vector(&rtxn, *id)?.is_none() {
                    return Err(anyhow::anyhow!("document {key}: chunk {id} has no vector").into());
                }
                owned.insert(*id, index.clone());
            }
            let e = per_index.entry(index).or_default();
            e.0 += 1;
            e.1 += doc.chunks.len() as u64;
        }
        let chunks = self.chunks.len(&rtxn)? as usize;
        if chunks != owned.len() {
            return Err(anyhow::anyhow!("{} chunks stored, {} owned by documents", chunks, owned.len()).into());
        }
        if self.order.len(&rtxn)? as usize != docs {
            return Err(anyhow::anyhow!("{} insertion entries for {docs} documents", self.order.len(&rtxn)?).into());
        }
        let mut vectors = 0;
        for item in self.indexes.iter(&rtxn)? {
            let (name, meta) = item?;
            let items = self.vectors.items(&rtxn, meta.arroy)?;
            vectors += items.len() as usize;
            if items.iter().any(|id| owned.get(&id).map(String::as_str) != Some(name)) {
                return Err(anyhow::anyhow!("index {name} has vectors no document of it owns").into());
            }
            if per_index.get(name).copied().unwrap_or_default() != (meta.documents, meta.chunks) {
                return Err(anyhow::anyhow!("index {name}: recorded counts disagree with its documents").into());
            }
            if self.vectors.partition(&rtxn, meta.arroy)?.is_some() {
                let ids: Vec<u32> = items.iter().collect();
                if let Some(i) = self.vectors.filed(&rtxn, meta.arroy, &ids)?.iter().position(Option::is_none) {
                    return Err(anyhow::anyhow!("index {name}: chunk {} is missing from its partition", ids[i]).into());
                }
            }
        }
        if vectors != chunks {
            return Err(anyhow::anyhow!("{vectors} vectors stored for {chunks} chunks").into());
        }
        Ok((docs, chunks))
    }

    fn read_txn(&self) -> Result<RoTxn<'_, heed::WithTls>> {
        Ok(self.env.read_txn()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(id: &str, text: &str, vectors: &[[f32; 3]]) -> NewDoc {
        NewDoc {
            doc_id: id.into(),
            text: text.into(),
            metadata: json!({"author": id}).as_object().unwrap().clone(),
            chunks: vectors.iter().enumerate().map(|(i, v)| (format!("{text} part {i}"), v.to_vec())).collect(),
        }
    }

    fn options(cache: usize) -> StoreOptions {
        StoreOptions { map_size: 1 << 26, vector_cache_bytes: cache, ..StoreOptions::default() }
    }

    /// No cache, searched on disk from `exact_below` vectors on, calibrated to recall 0.9.
    fn on_disk(exact_below: usize) -> StoreOptions {
        StoreOptions {
            map_size: 1 << 28,
            vector_cache_bytes: 0,
            search: SearchConfig { exact_below, target_recall: 0.9 },
            ..StoreOptions::default()
        }
    }

    #[test]
    fn documents_survive_reopen_and_delete_cleans_everything() {
        // With the vectors in the cache, and searched on disk.
        for cache in [1 << 20, 0] {
            let dir = tempfile::tempdir().unwrap();
            {
                let store = Store::open(dir.path(), options(cache)).unwrap();
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
                assert_eq!(store.counts("idx").unwrap(), Some((2, 3)));
            }
            let store = Store::open(dir.path(), options(cache)).unwrap();
            assert_eq!(store.is_cached("idx"), cache > 0);
            assert_eq!(store.index_names().unwrap(), ["idx"]);
            assert_eq!(store.counts("idx").unwrap(), Some((2, 3)));
            let nodes = store.retrieve("idx", "sky", &[0.0, 2.0, 0.0], 2, None).unwrap();
            assert_eq!(nodes[0].doc_id, "b");
            assert_eq!(nodes[0].candidate.source(), "both");
            assert!((nodes[0].candidate.dense.unwrap().score - 1.0).abs() < 1e-6, "{:?}", nodes[0]);
            let red = json!({"author": "a"});
            let only_a = store.retrieve("idx", "sky", &[0.0, 1.0, 0.0], 5, red.as_object()).unwrap();
            assert_eq!(only_a.iter().map(|n| n.doc_id.as_str()).collect::<Vec<_>>(), ["a"]);
            let (deleted, missing) = store.delete_documents("idx", &["b".into(), "zz".into()]).unwrap();
            assert_eq!((deleted, missing), (vec!["b".to_string()], vec!["zz".to_string()]));
            assert_eq!(store.counts("idx").unwrap(), Some((1, 1)));
            assert_eq!(store.verify().unwrap(), (1, 1));
            let after = store.retrieve("idx", "sky", &[0.0, 1.0, 0.0], 5, None).unwrap();
            assert_eq!(after.iter().map(|n| n.doc_id.as_str()).collect::<Vec<_>>(), ["a"]);
            store.delete_index("idx").unwrap();
            assert!(store.index_names().unwrap().is_empty());
            assert_eq!(store.verify().unwrap(), (0, 0));
            let rtxn = store.env.read_txn().unwrap();
            assert_eq!(store.chunks.len(&rtxn).unwrap(), 0);
            assert_eq!(store.docs.len(&rtxn).unwrap(), 0);
            assert_eq!(store.order.len(&rtxn).unwrap(), 0);
        }
    }

    #[test]
    fn a_keyword_index_that_missed_commits_is_rebuilt_from_lmdb() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), options(0)).unwrap();
            store.index_documents("idx", "m", 3, vec![doc("b", "bananas", &[[1.0, 0.0, 0.0]])]).unwrap();
            store.index_documents("idx", "m", 3, vec![doc("a", "apples are red", &[[1.0, 0.0, 0.0]])]).unwrap();
        }
        // As if the process died after LMDB's second commit and before tantivy's: a keyword index one commit behind.
        let stale = tempfile::tempdir().unwrap();
        {
            let store = Store::open(stale.path(), options(0)).unwrap();
            store.index_documents("idx", "m", 3, vec![doc("z", "zebras", &[[1.0, 0.0, 0.0]])]).unwrap();
        }
        let text = dir.path().join("text/0");
        std::fs::remove_dir_all(&text).unwrap();
        std::fs::rename(stale.path().join("text/0"), &text).unwrap();
        std::fs::create_dir_all(dir.path().join("text/99")).unwrap();
        let store = Store::open(dir.path(), options(0)).unwrap();
        let found = store.retrieve("idx", "apples", &[0.0, 1.0, 0.0], 3, None).unwrap();
        assert_eq!(found[0].candidate.source(), "both", "{found:?}");
        assert!(store.retrieve("idx", "zebras", &[0.0, 1.0, 0.0], 3, None).unwrap()[0].candidate.sparse.is_none());
        assert!(!dir.path().join("text/99").exists(), "a deleted index's directory is removed");
    }

    #[test]
    fn another_model_cannot_write_into_an_index() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), options(0)).unwrap();
        store.index_documents("idx", "m", 3, vec![doc("a", "x", &[[1.0, 0.0, 0.0]])]).unwrap();
        let err = store.index_documents("idx", "other", 3, vec![doc("b", "y", &[[1.0, 0.0, 0.0]])]).unwrap_err();
        assert!(matches!(err, Error::Conflict(_)), "{err}");
    }

    #[test]
    fn documents_list_in_insertion_order_and_move_to_the_end_when_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), options(0)).unwrap();
        let ids = ["zeta", "alpha", "mid"];
        for id in ids {
            store.index_documents("idx", "m", 3, vec![doc(id, id, &[[1.0, 0.0, 0.0]])]).unwrap();
        }
        let listed = |store: &Store| -> Vec<String> {
            store.list_documents("idx", 10, 0, None).unwrap().documents.into_iter().map(|d| d.doc_id).collect()
        };
        assert_eq!(listed(&store), ids);
        let out = store.update_documents("idx", vec![doc("alpha", "alpha v2", &[[0.0, 1.0, 0.0]])]).unwrap();
        assert_eq!(out.updated.len(), 1);
        assert_eq!(listed(&store), ["zeta", "mid", "alpha"]);
        store.delete_documents("idx", &["zeta".into()]).unwrap();
        store.index_documents("idx", "m", 3, vec![doc("zeta", "back", &[[1.0, 0.0, 0.0]])]).unwrap();
        assert_eq!(listed(&store), ["mid", "alpha", "zeta"]);
        let page = store.list_documents("idx", 1, 1, None).unwrap();
        assert_eq!((page.documents[0].doc_id.as_str(), page.total_items), ("alpha", 3));
        assert_eq!(store.verify().unwrap(), (3, 3));
    }

    /// Unit vectors with structure like embeddings' (the cache's test data, normalised).
    fn embedding_like(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut rows = crate::vectors::tests::vectors(n, dim, seed);
        rows.iter_mut().for_each(|v| crate::kernels::normalize(v));
        rows
    }

    #[test]
    fn on_disk_partition_follows_every_write_and_finds_what_an_exact_scan_finds() {
        const DIM: usize = 64;
        let dir = tempfile::tempdir().unwrap();
        let opts = on_disk(300);
        let store = Store::open(dir.path(), opts).unwrap();
        let data = embedding_like(6000, DIM, 5);
        let doc = |i: usize, v: &[f32]| NewDoc {
            doc_id: format!("d{i}"),
            text: format!("document {i} {}", v[0]),
            metadata: serde_json::Map::new(),
            chunks: vec![(format!("chunk {i}"), v.to_vec())],
        };
        let add = |range: std::ops::Range<usize>| {
            store.index_documents("ix", "m", DIM, range.map(|i| doc(i, &data[i])).collect()).unwrap();
        };
        let partition = || {
            let arroy = store.index_meta("ix").unwrap().unwrap().arroy;
            let rtxn = store.env.read_txn().unwrap();
            store.vectors.partition(&rtxn, arroy).unwrap().map(|h| (h.trained_at, h.nlist()))
        };
        add(0..600);
        assert_eq!(partition(), None, "trained from 1000 vectors on");
        add(600..1200);
        assert_eq!(partition().map(|p| p.0), Some(1200));
        // Deletions, replacements (new vectors for old ids: new chunks) and additions, one request each.
        let gone: Vec<String> = (0..100).map(|i| format!("d{i}")).collect();
        let gone_chunks: Vec<u32> = {
            let rtxn = store.env.read_txn().unwrap();
            gone.iter().flat_map(|d| store.docs.get(&rtxn, &doc_key("ix", d)).unwrap().unwrap().chunks).collect()
        };
        store.delete_documents("ix", &gone).unwrap();
        store.index_documents("ix", "m", DIM, (100..150).map(|i| doc(i, &data[5999 - i])).collect()).unwrap();
        add(1200..1500);
        assert_eq!(partition().map(|p| p.0), Some(1200), "filed incrementally, not retrained");
        assert_eq!(store.verify().unwrap(), (1400, 1400), "every vector is filed under its list");
        let meta = store.index_meta("ix").unwrap().unwrap();
        let nlist = partition().unwrap().1;
        let rtxn = store.env.read_txn().unwrap();
        assert!(store.vectors.filed(&rtxn, meta.arroy, &gone_chunks).unwrap().iter().all(Option::is_none));
        // Every list probed, every row rescored: the exact answer, so nothing is missing or stale.
        let all = store.vectors.items(&rtxn, meta.arroy).unwrap();
        let whole = vector_db::Probe { nprobe: nlist, oversample: 10_000, micros: 0.0, recall: 0.0 };
        for q in &data[5900..5920] {
            let exact = store.vectors.exact_search(&rtxn, q, 10, all.iter()).unwrap();
            let probed = store.vectors.probe_search(&rtxn, meta.arroy, q, 10, &whole).unwrap().unwrap();
            assert_eq!(probed, exact);
        }
        drop(rtxn);
        // Fourfold growth retrains it (more lists), and the search still meets its target.
        add(1500..5800);
        let (trained_at, lists) = partition().unwrap();
        assert_eq!(trained_at, 5700);
        assert!(lists > nlist, "{lists} lists after growing, {nlist} before");
        assert_eq!(store.verify().unwrap(), (5700, 5700));
        let meta = store.index_meta("ix").unwrap().unwrap();
        let tuning = meta.tuning.unwrap();
        let rtxn = store.env.read_txn().unwrap();
        if let Some(probe) = tuning.probe {
            assert!(probe.recall >= 0.9, "{probe:?}");
            let all = store.vectors.items(&rtxn, meta.arroy).unwrap();
            let mut found = 0;
            for q in &data[5800..5900] {
                let truth: Vec<u32> =
                    store.vectors.exact_search(&rtxn, q, 10, all.iter()).unwrap().iter().map(|h| h.id).collect();
                let got = store.vectors.probe_search(&rtxn, meta.arroy, q, 10, &probe).unwrap().unwrap();
                found += got.iter().filter(|h| truth.contains(&h.id)).count();
            }
            assert!(found as f32 / 1000.0 >= 0.85, "held-out recall {found}/1000 with {probe:?}");
        }
        drop(rtxn);
        // Deleting the index deletes its partition.
        store.delete_index("ix").unwrap();
        let rtxn = store.env.read_txn().unwrap();
        assert!(store.vectors.partition(&rtxn, meta.arroy).unwrap().is_none());
        assert_eq!(store.vectors.lists.len(&rtxn).unwrap(), 0);
        assert_eq!(store.vectors.rows.len(&rtxn).unwrap(), 0);
    }

    #[test]
    fn a_cache_filled_at_start_takes_over_the_on_disk_partition() {
        const DIM: usize = 128;
        let dir = tempfile::tempdir().unwrap();
        let opts = StoreOptions {
            map_size: 1 << 28,
            vector_cache_bytes: 1 << 26,
            search: SearchConfig { exact_below: 500, target_recall: 0.9 },
            cached: SearchParams { exact_below: 500, ivf_above: 1000, target_recall: 0.9, ..SearchParams::default() },
        };
        let mut data = embedding_like(3050, DIM, 13);
        let queries = data.split_off(3000);
        let docs = |rows: &[Vec<f32>], from: usize| -> Vec<NewDoc> {
            rows.iter()
                .enumerate()
                .map(|(i, v)| NewDoc {
                    doc_id: format!("d{}", from + i),
                    text: format!("document {}", from + i),
                    metadata: serde_json::Map::new(),
                    chunks: vec![(format!("chunk {}", from + i), v.clone())],
                })
                .collect()
        };
        {
            let store = Store::open(dir.path(), opts).unwrap();
            store.index_documents("ix", "m", DIM, docs(&data[..1500], 0)).unwrap();
            store.index_documents("ix", "m", DIM, docs(&data[1500..], 1500)).unwrap();
        }
        let store = Store::open(dir.path(), opts).unwrap();
        assert!(store.is_cached("ix"));
        let meta = store.index_meta("ix").unwrap().unwrap();
        let tuning = meta.tuning.expect("calibrated");
        let rtxn = store.env.read_txn().unwrap();
        let header = store.vectors.partition(&rtxn, meta.arroy).unwrap().expect("partitioned on disk");
        let (trained_at, nlist) = (header.trained_at as usize, header.nlist());
        drop(header);
        let cache = store.cache.read().unwrap();
        let cached = cache.indexes["ix"].vectors.as_ref().unwrap();
        let (cache_trained_at, cache_nlist, cache_probe) = cached.partition_shape().expect("partitioned in RAM");
        // The disk's lists, not a training of the cache's own (which would be at 3000, with other lists).
        assert_eq!((cache_trained_at, cache_nlist), (trained_at, nlist));
        assert!(trained_at < 3000, "trained at {trained_at}, before the second request");
        let probe = tuning.probe.map(|p| (p.nprobe, p.oversample));
        if probe.is_some() {
            // The disk's calibration, taken over: the same search, so the same answers.
            assert_eq!(cache_probe, probe);
            let disk_probe = tuning.probe.unwrap();
            for q in &queries {
                let disk = store.vectors.probe_search(&rtxn, meta.arroy, q, 10, &disk_probe).unwrap().unwrap();
                let ram = cached.search(q, 10, None);
                let ids = |h: &[crate::kernels::Hit]| h.iter().map(|h| h.id).collect::<std::collections::BTreeSet<_>>();
                assert_eq!(ids(&ram), ids(&disk));
            }
        }
        // Either way the cache meets the target on held-out queries.
        let all = store.vectors.items(&rtxn, meta.arroy).unwrap();
        let mut found = 0;
        for q in &queries {
            let truth: Vec<u32> =
                store.vectors.exact_search(&rtxn, q, 10, all.iter()).unwrap().iter().map(|h| h.id).collect();
            found += cached.search(q, 10, None).iter().filter(|h| truth.contains(&h.id)).count();
        }
        assert!(found as f32 / 500.0 >= 0.85, "held-out recall {found}/500, probe {cache_probe:?}");
    }

    #[test]
    fn on_disk_search_is_calibrated_to_the_recall_target() {
        const DIM: usize = 384;
        let dir = tempfile::tempdir().unwrap();
        let opts = on_disk(500);
        let store = Store::open(dir.path(), opts).unwrap();
        let mut data = embedding_like(4060, DIM, 7);
        // Held-out queries from the same distribution, not in the index.
        let queries = data.split_off(4000);
        // Two requests: the trees are built after each and extended by the second.
        for (part, rows) in data.chunks(2000).enumerate() {
            let docs = rows
                .iter()
                .enumerate()
                .map(|(i, v)| NewDoc {
                    doc_id: format!("d{part}-{i}"),
                    text: format!("document {part} {i}"),
                    metadata: serde_json::Map::new(),
                    chunks: vec![(format!("chunk {part} {i}"), v.clone())],
                })
                .collect();
            store.index_documents("big", "m", DIM, docs).unwrap();
        }
        assert!(!store.is_cached("big"));
        let tuning = store.index_meta("big").unwrap().unwrap().tuning.expect("calibrated");
        assert_eq!(tuning.items, 4000);
        assert!(tuning.recall >= 0.9, "{tuning:?}");
        // Held-out queries: the on-disk search meets the target against an exact scan.
        let meta = store.index_meta("big").unwrap().unwrap();
        let rtxn = store.env.read_txn().unwrap();
        let all = store.vectors.items(&rtxn, meta.arroy).unwrap();
        assert_eq!(all.len(), 4000);
        let mut found = 0;
        for q in &queries {
            let truth: Vec<u32> =
                store.vectors.exact_search(&rtxn, q, 10, all.iter()).unwrap().into_iter().map(|h| h.id).collect();
            let got = store.vectors.search(&rtxn, meta.arroy, q, 10, None, meta.tuning, &opts.search).unwrap();
            assert_eq!(got.len(), 10);
            found += got.iter().filter(|h| truth.contains(&h.id)).count();
        }
        let recall = found as f32 / (queries.len() * 10) as f32;
        eprintln!("held-out recall@10 {recall}, calibrated {tuning:?}");
        assert!(recall >= 0.85, "held-out recall@10 {recall}, calibrated {tuning:?}");
        drop(rtxn);
        assert_eq!(store.verify().unwrap(), (4000, 4000));
    }
}
