//! The vector database: the only file that names arroy.
//!
//! Two LMDB databases hold each chunk's vector. `vectors-exact` keeps the
//! normalised f32 vector (chunk id → little-endian bytes): the source of
//! truth for scores, snapshots and the in-memory cache. arroy's
//! binary-quantized cosine index (`vectors-bq`, one arroy index number per
//! RAG index) keeps 1 bit per dimension and its trees, built incrementally
//! at the end of every write transaction. A query reads arroy's trees and
//! codes through a [`arroy::Reader`] inside the caller's read transaction,
//! takes an oversampled shortlist and rescores it exactly from
//! `vectors-exact`, so nothing but the shortlist is held in memory.
//!
//! How much of the tree a query walks is not a constant: after a build that
//! changed an index's size by a quarter, [`VectorDb::calibrate`] measures
//! recall@10 on sample queries against an exact scan and keeps the
//! smallest walk that meets the recall target ([`Tuning`]).

mod partition;

pub use partition::Probe;

use crate::calibration;
use crate::error::Result;
use crate::kernels::{DOT, Hit, TopK, normalize};
use arroy::distances::{BinaryQuantizedCosine, Cosine};
use heed::byteorder::BigEndian;
use heed::types::{Bytes, U16, U32};
use heed::{Database, RoTxn, RwTxn};
use rand10::SeedableRng;
use roaring::RoaringBitmap;
use serde::{Deserialize, Serialize};
use std::num::NonZeroUsize;

/// Ids of a set of chunks (arroy's candidate type).
pub type ChunkSet = RoaringBitmap;

/// Recall results are checked against at calibration.
const CALIBRATION_K: usize = 10;
/// Sample queries per calibration.
const CALIBRATION_QUERIES: usize = 48;
/// Tree walks tried: items gathered from the trees per 10 results, each
/// then read and ranked by its 1-bit distance. arroy's own default gathers
/// 3 × trees × count, and it builds trees until their nodes outnumber the
/// items (about 200 trees at 100k × 384): a near-exhaustive read of the index.
const WALKS: [usize; 10] = [100, 200, 400, 800, 1600, 3200, 6400, 12_800, 25_600, 51_200];
/// Shortlists tried (per 10 results): the best-ranked gathered items,
/// rescored exactly. Embeddings share a large common component, so raw sign
/// bits separate neighbours poorly: a long shortlist can beat a long walk.
const SHORTLISTS: [usize; 5] = [30, 100, 300, 1000, 3000];
/// What `Tuning::walk` counts; tunings stored in other units are recalibrated at open.
pub const TUNING_VERSION: u32 = 1;

/// How a query walks one index, chosen by [`VectorDb::calibrate`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Tuning {
    /// Item count when it was chosen.
    pub items: u64,
    /// Items gathered from the trees per 10 results (see `WALKS`); `None`: nothing met the target, scan exactly.
    pub walk: Option<usize>,
    /// Candidates rescored exactly per 10 results.
    #[serde(default = "default_shortlist")]
    pub shortlist: usize,
    /// Mean time of one sample query with this choice, microseconds.
    #[serde(default)]
    pub micros: f32,
    /// Recall@10 the chosen walk reached on the sample.
    pub recall: f32,
    /// The target it was chosen for.
    #[serde(default)]
    pub target: f32,
    /// Units of `walk` ([`TUNING_VERSION`]; 0: leaves per tree per 100 shortlisted).
    #[serde(default)]
    pub version: u32,
    /// How unfiltered queries probe the on-disk partition, when that met the
    /// target faster than the walk; `None`: they walk arroy's trees.
    #[serde(default)]
    pub probe: Option<Probe>,
}

fn default_shortlist() -> usize {
    SHORTLISTS[0]
}

/// Search knobs the service starts with.
#[derive(Debug, Clone, Copy)]
pub struct SearchConfig {
    /// Indexes (or filtered subsets) with fewer chunks are scanned exactly.
    pub exact_below: usize,
    /// recall@10 each index's walk is calibrated to meet.
    pub target_recall: f32,
}

impl Default for SearchConfig {
    fn default() -> Self {
        SearchConfig { exact_below: 20_000, target_recall: 0.95 }
    }
}

/// The vector databases of every index.
pub struct VectorDb {
    quantized: arroy::Database<'static, BinaryQuantizedCosine>,
    exact: Database<'static, U32<BigEndian>, Bytes>,
    /// On-disk partition headers, by arroy index number (see [`partition`]).
    pub(super) headers: Database<'static, U16<BigEndian>, Bytes>,
    /// On-disk partition lists, by arroy index number and list.
    pub(super) lists: Database<'static, Bytes, Bytes>,
    /// The list each chunk is filed under.
    pub(super) rows: Database<'static, U32<BigEndian>, U32<BigEndian>>,
    /// Layout 1's cosine database, when the environment still has one.
    legacy: Option<arroy::Database<'static, Cosine>>,
}

/// Database handles as [`create_databases`] opens them, before the commit.
pub type Handles<'e> = (
    arroy::Database<'e, BinaryQuantizedCosine>,
    Database<'e, U32<BigEndian>, Bytes>,
    (Database<'e, U16<BigEndian>, Bytes>, Database<'e, Bytes, Bytes>, Database<'e, U32<BigEndian>, U32<BigEndian>>),
    Option<arroy::Database<'e, Cosine>>,
);

/// Creates the vector databases (and opens layout 1's, if any) in the
/// transaction that creates the store's other databases.
pub fn create_databases<'e, T>(dbs: &heed::DatabaseOpener<'e, T>, wtxn: &mut RwTxn<'e>) -> heed::Result<Handles<'e>> {
    Ok((
        dbs.create_database(wtxn, Some("vectors-bq"))?,
        dbs.create_database(wtxn, Some("vectors-exact"))?,
        (
            dbs.create_database(wtxn, Some("vectors-partition"))?,
            dbs.create_database(wtxn, Some("vectors-lists"))?,
            dbs.create_database(wtxn, Some("vectors-rows"))?,
        ),
        dbs.open_database(wtxn, Some("vectors"))?,
    ))
}

fn to_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn from_bytes(b: &[u8]) -> Vec<f32> {
    slice_of::<f32>(b).into_owned()
}

impl VectorDb {
    /// The vector database over committed handles.
    pub fn new((quantized, exact, (headers, lists, rows), legacy): Handles<'static>) -> VectorDb {
        VectorDb { quantized, exact, headers, lists, rows, legacy }
    }

    fn writer(&self, arroy: u16, dim: usize) -> arroy::Writer<BinaryQuantizedCosine> {
        arroy::Writer::new(self.quantized, arroy, dim)
    }

    /// Stores the vector of chunk `id` (normalised here) in index number `arroy`.
    pub fn put(&self, wtxn: &mut RwTxn, arroy: u16, id: u32, vector: &[f32]) -> Result<()> {
        let mut v = vector.to_vec();
        normalize(&mut v);
        self.writer(arroy, v.len()).add_item(wtxn, id, &v)?;
        self.exact.put(wtxn, &id, &to_bytes(&v))?;
        Ok(())
    }

    /// Removes the vector of chunk `id`.
    pub fn delete(&self, wtxn: &mut RwTxn, arroy: u16, dim: usize, id: u32) -> Result<()> {
        self.writer(arroy, dim).del_item(wtxn, id)?;
        self.exact.delete(wtxn, &id)?;
        Ok(())
    }

    /// Removes index number `arroy` and the exact vectors of `ids`.
    pub fn clear(&self, wtxn: &mut RwTxn, arroy: u16, dim: usize, ids: impl IntoIterator<Item = u32>) -> Result<()> {
        self.writer(arroy, dim).clear(wtxn)?;
        let ids: Vec<u32> = ids.into_iter().collect();
        for id in &ids {
            self.exact.delete(wtxn, id)?;
        }
        self.clear_partition(wtxn, arroy, &ids)?;
        Ok(())
    }

    /// Builds (incrementally) the trees of index number `arroy` when it changed.
    pub fn build(&self, wtxn: &mut RwTxn, arroy: u16, dim: usize) -> Result<()> {
        let writer = self.writer(arroy, dim);
        if writer.need_build(wtxn)? {
            // A fixed seed: the same writes build the same trees.
            let mut rng = rand10::rngs::StdRng::seed_from_u64(u64::from(arroy) ^ 0x006b_6169_746f);
            writer.builder(&mut rng).build(wtxn)?;
        }
        Ok(())
    }

    /// The stored (normalised) vector of chunk `id`.
    pub fn vector(&self, rtxn: &RoTxn, id: u32) -> Result<Option<Vec<f32>>> {
        Ok(self.exact.get(rtxn, &id)?.map(from_bytes))
    }

    /// Ids of every chunk with a vector in index number `arroy` (empty before the first build).
    pub fn items(&self, rtxn: &RoTxn, arroy: u16) -> Result<ChunkSet> {
        match arroy::Reader::open(rtxn, arroy, self.quantized) {
            Ok(reader) => Ok(reader.item_ids().clone()),
            Err(arroy::Error::MissingMetadata(_)) => Ok(ChunkSet::new()),
            Err(e) => Err(e.into()),
        }
    }

    /// Exact top `k` of `ids` for the normalised query `q`, scored from `vectors-exact`.
    pub fn exact_search(
        &self,
        rtxn: &RoTxn,
        q: &[f32],
        k: usize,
        ids: impl IntoIterator<Item = u32>,
    ) -> Result<Vec<Hit>> {
        let dot = *DOT;
        let mut top = TopK::new(k);
        for id in ids {
            if let Some(bytes) = self.exact.get(rtxn, &id)? {
                top.push(id, dot_bytes(dot, q, bytes));
            }
        }
        Ok(top.into_sorted())
    }

    /// The `k` chunks of index number `arroy` (within `allowed` when given)
    /// most similar to the normalised query `q`: arroy's walk as `tuning`
    /// says, its shortlist rescored exactly.
    #[allow(clippy::too_many_arguments)]
    pub fn search(
        &self,
        rtxn: &RoTxn,
        arroy: u16,
        q: &[f32],
        k: usize,
        allowed: Option<&ChunkSet>,
        tuning: Option<Tuning>,
        config: &SearchConfig,
    ) -> Result<Vec<Hit>> {
        if k == 0 {
            return Ok(Vec::new());
        }
        let reader = match arroy::Reader::open(rtxn, arroy, self.quantized) {
            Ok(r) => r,
            Err(arroy::Error::MissingMetadata(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let pool = match allowed {
            Some(a) => a & reader.item_ids(),
            None => reader.item_ids().clone(),
        };
        // Small sets, and indexes nothing serves at the target, are scanned
        // exactly; arroy itself scans candidate sets under half the index.
        let Some(tuning) = tuning else { return self.exact_search(rtxn, q, k, pool.iter()) };
        if (pool.len() as usize) < config.exact_below {
            return self.exact_search(rtxn, q, k, pool.iter());
        }
        // Unfiltered queries probe the partition when calibration chose it.
        if let (None, Some(probe)) = (allowed, tuning.probe)
            && let Some(hits) = self.probe_search(rtxn, arroy, q, k, &probe)?
        {
            return Ok(hits);
        }
        let Some(walk) = tuning.walk else { return self.exact_search(rtxn, q, k, pool.iter()) };
        let shortlist = tuning.shortlist;
        // Calibrated for 10 results; more results walk and rescore proportionally more.
        let scale = k.div_ceil(CALIBRATION_K).max(1);
        self.walk(rtxn, &reader, q, k, shortlist * scale, walk * scale, allowed)
    }

    #[allow(clippy::too_many_arguments)]
    fn walk(
        &self,
        rtxn: &RoTxn,
        reader: &arroy::Reader<BinaryQuantizedCosine>,
        q: &[f32],
        k: usize,
        shortlist: usize,
        walk: usize,
        allowed: Option<&ChunkSet>,
    ) -> Result<Vec<Hit>> {
        let leaves = walk.max(shortlist);
        let mut query = reader.nns(shortlist);
        // Exactly `leaves` items, not arroy's default of three times as many for binary codes.
        query.search_k(NonZeroUsize::new(leaves).expect("positive walk")).oversampling(NonZeroUsize::MIN);
        if let Some(a) = allowed {
            query.candidates(a);
        }
        let found = query.by_vector(rtxn, q)?;
        self.exact_search(rtxn, q, k, found.into_iter().map(|(id, _)| id))
    }

    /// Chooses how queries on index number `arroy` walk: of the walks and
    /// shortlists whose recall@10 on sample queries (midpoints of two stored
    /// vectors, unlike any one of them) meets the target against an exact
    /// scan, the one that answered them fastest.
    pub fn calibrate(&self, rtxn: &RoTxn, arroy: u16, config: &SearchConfig) -> Result<Tuning> {
        let reader = arroy::Reader::open(rtxn, arroy, self.quantized)?;
        let items: Vec<u32> = reader.item_ids().iter().collect();
        let n = items.len();
        if n < config.exact_below.max(CALIBRATION_K * 4) {
            return Ok(self.exact_tuning(n, config));
        }
        // Deterministic sample positions: a multiplicative hash of the query number.
        let pick = |i: usize, salt: usize| items[(i.wrapping_mul(2_654_435_761).wrapping_add(salt * 40_503)) % n];
        let mut queries = Vec::with_capacity(CALIBRATION_QUERIES);
        for i in 0..CALIBRATION_QUERIES {
            let (a, b) = (self.vector(rtxn, pick(i, 1))?, self.vector(rtxn, pick(i, 7))?);
            if let (Some(a), Some(b)) = (a, b) {
                let mut m: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
                normalize(&mut m);
                queries.push(m);
            }
        }
        // One pass over the stored vectors scores every sample query (not one pass per query).
        let dot = *DOT;
        let mut tops: Vec<TopK> = queries.iter().map(|_| TopK::new(CALIBRATION_K)).collect();
        for &id in &items {
            if let Some(bytes) = self.exact.get(rtxn, &id)? {
                for (q, top) in queries.iter().zip(&mut tops) {
                    top.push(id, dot_bytes(dot, q, bytes));
                }
            }
        }
        let truth: Vec<Vec<u32>> =
            tops.into_iter().map(|t| t.into_sorted().into_iter().map(|h| h.id).collect()).collect();
        let mut best: Option<Tuning> = None;
        for shortlist in SHORTLISTS {
            // A walk shorter than the shortlist gathers the shortlist anyway.
            for walk in WALKS.into_iter().filter(|&w| w >= shortlist) {
                let start = std::time::Instant::now();
                let mut found = 0;
                for (q, t) in queries.iter().zip(&truth) {
                    let hits = self.walk(rtxn, &reader, q, CALIBRATION_K, shortlist, walk, None)?;
                    found += hits.iter().filter(|h| t.contains(&h.id)).count();
                }
                let micros = start.elapsed().as_secs_f32() * 1e6 / queries.len().max(1) as f32;
                let recall = found as f32 / (queries.len() * CALIBRATION_K).max(1) as f32;
                tracing::debug!(arroy, shortlist, walk, recall, micros, "calibrating the vector search");
                if recall >= config.target_recall {
                    if best.is_none_or(|b| micros < b.micros) {
                        let target = config.target_recall;
                        best = Some(Tuning {
                            items: n as u64,
                            walk: Some(walk),
                            shortlist,
                            micros,
                            recall,
                            target,
                            version: TUNING_VERSION,
                            probe: None,
                        });
                    }
                    // Longer walks with this shortlist are only slower.
                    break;
                }
                if best.is_some_and(|b| micros > b.micros) {
                    // Already slower than a choice that meets the target.
                    break;
                }
            }
        }
        let mut tuning = best.unwrap_or_else(|| self.exact_tuning(n, config));
        // The partition, on the same sample: kept when it meets the target faster than the walk.
        if let Some(probe) = self.calibrate_probe(rtxn, arroy, &queries, &truth, config.target_recall, n)?
            && (tuning.walk.is_none() || probe.micros < tuning.micros)
        {
            tracing::debug!(arroy, ?probe, walk_micros = tuning.micros, "on-disk partition chosen");
            tuning.probe = Some(probe);
        }
        Ok(tuning)
    }

    /// The fastest probe of the partition that meets `target` on the sample,
    /// found by [`calibration::fastest`] as the RAM cache's is. `n`: vectors in
    /// the index. `None` when the index has no partition or no probe meets it.
    fn calibrate_probe(
        &self,
        rtxn: &RoTxn,
        arroy: u16,
        queries: &[Vec<f32>],
        truth: &[Vec<u32>],
        target: f32,
        n: usize,
    ) -> Result<Option<Probe>> {
        let Some(nlist) = self.partition(rtxn, arroy)?.map(|h| h.nlist()) else { return Ok(None) };
        let at = |nprobe, oversample| Probe { nprobe, oversample, micros: 0.0, recall: 0.0 };
        let recall = |nprobe, oversample| -> Result<f32> {
            let mut found = 0;
            for (q, t) in queries.iter().zip(truth) {
                let probe = at(nprobe, oversample);
                let hits = self.probe_search(rtxn, arroy, q, CALIBRATION_K, &probe)?.unwrap_or_default();
                found += hits.iter().filter(|h| t.contains(&h.id)).count();
            }
            Ok(found as f32 / (queries.len() * CALIBRATION_K).max(1) as f32)
        };
        let pass = |nprobe, oversample| -> Result<()> {
            for q in queries {
                std::hint::black_box(self.probe_search(rtxn, arroy, q, CALIBRATION_K, &at(nprobe, oversample))?);
            }
            Ok(())
        };
        let choice = calibration::fastest(nlist, n, CALIBRATION_K, target, recall, pass)?;
        Ok(choice.map(|c| Probe {
            nprobe: c.nprobe,
            oversample: c.oversample,
            micros: (c.secs * 1e6 / queries.len().max(1) as f64) as f32,
            recall: c.recall,
        }))
    }

    fn exact_tuning(&self, n: usize, config: &SearchConfig) -> Tuning {
        Tuning {
            items: n as u64,
            walk: None,
            shortlist: SHORTLISTS[0],
            micros: 0.0,
            recall: 1.0,
            target: config.target_recall,
            version: TUNING_VERSION,
            probe: None,
        }
    }

    /// Every (id, vector) of index number `arroy`, for rebuilding the cache.
    pub fn each(&self, rtxn: &RoTxn, arroy: u16, mut f: impl FnMut(u32, Vec<f32>)) -> Result<()> {
        for id in &self.items(rtxn, arroy)? {
            if let Some(v) = self.vector(rtxn, id)? {
                f(id, v);
            }
        }
        Ok(())
    }
}

fn dot_bytes(dot: crate::kernels::DotFn, q: &[f32], bytes: &[u8]) -> f32 {
    dot(q, &slice_of::<f32>(bytes))
}

/// Types every bit pattern of which is a value, read from little-endian bytes.
trait Plain: Copy {
    /// Reads one from its little-endian bytes.
    fn read(b: &[u8]) -> Self;
}

impl Plain for f32 {
    fn read(b: &[u8]) -> Self {
        f32::from_le_bytes(b.try_into().expect("4 bytes"))
    }
}

impl Plain for u32 {
    fn read(b: &[u8]) -> Self {
        u32::from_le_bytes(b.try_into().expect("4 bytes"))
    }
}

impl Plain for u64 {
    fn read(b: &[u8]) -> Self {
        u64::from_le_bytes(b.try_into().expect("8 bytes"))
    }
}

/// `b` as a slice of `T`: borrowed in place when aligned (LMDB's large
/// values are), copied when not (small values are only 2-byte aligned).
fn slice_of<T: Plain>(b: &[u8]) -> std::borrow::Cow<'_, [T]> {
    // SAFETY: `Plain` types have no invalid bit patterns; align_to checks alignment and length.
    let (head, body, tail) = unsafe { b.align_to::<T>() };
    if head.is_empty() && tail.is_empty() && cfg!(target_endian = "little") {
        std::borrow::Cow::Borrowed(body)
    } else {
        std::borrow::Cow::Owned(b.chunks_exact(size_of::<T>()).map(T::read).collect())
    }
}

impl VectorDb {
    /// Moves layout 1's vectors, which lived only in arroy's (never built)
    /// cosine database `vectors`, into this layout; returns how many moved.
    pub fn migrate_v1(&self, wtxn: &mut RwTxn, indexes: &[(u16, usize)]) -> Result<usize> {
        let Some(old) = self.legacy else { return Ok(0) };
        let mut moved = 0;
        for &(arroy, dim) in indexes {
            let writer = arroy::Writer::<Cosine>::new(old, arroy, dim);
            let items: Vec<(u32, Vec<f32>)> = writer.iter(wtxn)?.collect::<Result<_, _>>()?;
            for (id, v) in items {
                self.put(wtxn, arroy, id, &v)?;
                moved += 1;
            }
            self.build(wtxn, arroy, dim)?;
        }
        old.clear(wtxn)?;
        Ok(moved)
    }
}
