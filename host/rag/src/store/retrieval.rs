//! Hybrid retrieval: dense (vectors) and sparse (BM25) candidates fused by
//! KAITO's rule, one [`Candidate`] per chunk.
//!
//! KAITO's hybrid retriever asks each side for three times the requested
//! count and scores `0.7 × dense + 0.3 / (1 + BM25 rank)`: keyword hits
//! count by rank, not by BM25's unbounded score. On FAISS, KAITO's "dense"
//! is a squared L2 distance, so that sum favours farther chunks; here it is
//! the cosine similarity, as the rule intends.

use super::Store;
use super::documents::matches;
use super::vector_db::ChunkSet;
use crate::error::{Error, Result};
use crate::kernels::{Hit, normalize};
use serde_json::{Map, Value};
use std::collections::HashMap;

/// Weight of the dense score in the fused score.
pub const DENSE_WEIGHT: f32 = 0.7;
/// Weight of a keyword hit at rank r: `SPARSE_WEIGHT / (1 + r)`.
pub const SPARSE_WEIGHT: f32 = 0.3;
/// Candidates each retriever proposes per requested result.
pub const POOL_FACTOR: usize = 3;

/// A chunk's place in one retriever's list.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rank {
    /// 0-based position in that retriever's results.
    pub rank: usize,
    /// That retriever's score (cosine similarity, or BM25).
    pub score: f32,
}

/// One chunk proposed by either retriever, with its fused score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// Chunk id.
    pub id: u32,
    /// Its place among the dense results.
    pub dense: Option<Rank>,
    /// Its place among the BM25 results.
    pub sparse: Option<Rank>,
    /// Fused score: `DENSE_WEIGHT × cosine` (when dense) plus `SPARSE_WEIGHT / (1 + rank)` (when sparse).
    pub score: f32,
}

impl Candidate {
    /// Which retrievers proposed it, in the words of KAITO's Qdrant retriever.
    pub fn source(&self) -> &'static str {
        match (self.dense.is_some(), self.sparse.is_some()) {
            (true, true) => "both",
            (true, false) => "dense_only",
            _ => "sparse_only",
        }
    }
}

/// A retrieved chunk with what the API shows of it.
#[derive(Debug, Clone)]
pub struct Retrieved {
    /// How it was found and scored.
    pub candidate: Candidate,
    /// Document the chunk belongs to.
    pub doc_id: String,
    /// Chunk text.
    pub text: String,
    /// The document's metadata.
    pub metadata: Map<String, Value>,
}

/// Fuses the two lists (each best first) and keeps the best `k`.
pub fn fuse(dense: &[Hit], sparse: &[(u32, f32)], k: usize) -> Vec<Candidate> {
    let mut by_id: HashMap<u32, Candidate> = HashMap::with_capacity(dense.len() + sparse.len());
    for (rank, h) in dense.iter().enumerate() {
        let dense = Some(Rank { rank, score: h.score });
        by_id.insert(h.id, Candidate { id: h.id, dense, sparse: None, score: DENSE_WEIGHT * h.score });
    }
    for (rank, &(id, score)) in sparse.iter().enumerate() {
        let c = by_id.entry(id).or_insert(Candidate { id, dense: None, sparse: None, score: 0.0 });
        c.sparse = Some(Rank { rank, score });
        c.score += SPARSE_WEIGHT / (1.0 + rank as f32);
    }
    let mut out: Vec<Candidate> = by_id.into_values().collect();
    out.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id)));
    out.truncate(k);
    out
}

impl Store {
    /// The dense half of retrieval: the `k` chunks (among `allowed`) most
    /// similar to `query_vector`, from the cache when it holds the index,
    /// else through the on-disk index.
    fn dense(
        &self,
        rtxn: &heed::RoTxn,
        meta: &super::IndexMeta,
        query_vector: &[f32],
        k: usize,
        allowed: Option<&ChunkSet>,
    ) -> Result<Vec<Hit>> {
        let mut q = query_vector.to_vec();
        normalize(&mut q);
        {
            let cache = self.cache.read().expect("cache lock");
            if let Some(v) = cache.indexes.get(&meta.name).and_then(|c| c.vectors.as_ref()) {
                let allow = allowed.map(|a| move |id: u32| a.contains(id));
                return Ok(v.search(&q, k, allow.as_ref().map(|f| f as &dyn Fn(u32) -> bool)));
            }
        }
        self.vectors.search(rtxn, meta.arroy, &q, k, allowed, meta.tuning, &self.options.search)
    }

    /// The metadata of `index`, checked against the query embedding's length.
    fn query_meta(&self, rtxn: &heed::RoTxn, index: &str, query_vector: &[f32]) -> Result<super::IndexMeta> {
        let meta = self.indexes.get(rtxn, index)?.ok_or_else(|| Error::IndexNotFound(index.into()))?;
        if query_vector.len() != meta.dimensions {
            return Err(Error::Conflict(format!(
                "index {index:?} holds {}-dimensional vectors of {}; the query embedding has {}",
                meta.dimensions,
                meta.embedding_model,
                query_vector.len()
            )));
        }
        Ok(meta)
    }

    /// Dense search alone (no BM25, no filter): chunk ids and cosine
    /// similarities, best first. What benchmarks time.
    pub fn dense_search(&self, index: &str, query_vector: &[f32], k: usize) -> Result<Vec<Hit>> {
        let rtxn = self.read_txn()?;
        let meta = self.query_meta(&rtxn, index, query_vector)?;
        self.dense(&rtxn, &meta, query_vector, k, None)
    }

    /// BM25 alone (no vectors, no filter): the `k` best chunk ids and
    /// scores for `query_text`, best first. What benchmarks time.
    pub fn keyword_search(&self, index: &str, query_text: &str, k: usize) -> Result<Vec<(u32, f32)>> {
        match self.text(index) {
            Some(t) => t.top(query_text, k, None),
            None => Err(Error::IndexNotFound(index.into())),
        }
    }

    /// Dense retrieval alone (what KAITO's chat uses for its context): the
    /// `k` chunks most similar to `query_vector`, best first.
    pub fn retrieve_dense(&self, index: &str, query_vector: &[f32], k: usize) -> Result<Vec<Retrieved>> {
        let rtxn = self.read_txn()?;
        let meta = self.query_meta(&rtxn, index, query_vector)?;
        let hits = self.dense(&rtxn, &meta, query_vector, k, None)?;
        let candidates = hits.iter().enumerate().map(|(rank, h)| Candidate {
            id: h.id,
            dense: Some(Rank { rank, score: h.score }),
            sparse: None,
            score: h.score,
        });
        self.shape(&rtxn, index, candidates)
    }

    /// Chunk text and document metadata of each candidate.
    fn shape(
        &self,
        rtxn: &heed::RoTxn,
        index: &str,
        candidates: impl Iterator<Item = Candidate>,
    ) -> Result<Vec<Retrieved>> {
        let mut out = Vec::new();
        let mut docs: HashMap<String, Map<String, Value>> = HashMap::new();
        for candidate in candidates {
            let Some(chunk) = self.chunks.get(rtxn, &candidate.id)? else { continue };
            let metadata = match docs.get(&chunk.doc_id) {
                Some(m) => m.clone(),
                None => {
                    let m = self
                        .docs
                        .get(rtxn, &super::doc_key(index, &chunk.doc_id))?
                        .map(|d| d.metadata)
                        .unwrap_or_default();
                    docs.insert(chunk.doc_id.clone(), m.clone());
                    m
                }
            };
            out.push(Retrieved { candidate, doc_id: chunk.doc_id, text: chunk.text, metadata });
        }
        Ok(out)
    }

    /// Ids of the chunks of `index` whose document matches `filter`.
    fn allowed_chunks(&self, rtxn: &heed::RoTxn, index: &str, filter: &Map<String, Value>) -> Result<ChunkSet> {
        let mut set = ChunkSet::new();
        for item in self.docs.prefix_iter(rtxn, &format!("{index}/"))? {
            let (_, doc) = item?;
            if matches(&doc.metadata, Some(filter)) {
                set.extend(doc.chunks.iter().copied());
            }
        }
        Ok(set)
    }

    /// The `k` best chunks of `index` for a query (its text for BM25, its
    /// vector for the dense side), among documents matching `filter`: each
    /// retriever proposes its best `POOL_FACTOR × k` and [`fuse`] ranks them.
    pub fn retrieve(
        &self,
        index: &str,
        query_text: &str,
        query_vector: &[f32],
        k: usize,
        filter: Option<&Map<String, Value>>,
    ) -> Result<Vec<Retrieved>> {
        let rtxn = self.read_txn()?;
        let meta = self.query_meta(&rtxn, index, query_vector)?;
        let allowed = filter.map(|f| self.allowed_chunks(&rtxn, index, f)).transpose()?;
        let pool = k * POOL_FACTOR;
        let text = self.text(index);
        // The two retrievers run at once: BM25 on the keyword pool, the dense
        // side here, in this read transaction.
        let mut sparse = Ok(Vec::new());
        let dense = self.keyword_pool.in_place_scope(|scope| {
            if let Some(t) = &text {
                let (sparse, allowed) = (&mut sparse, allowed.as_ref());
                scope.spawn(move |_| *sparse = t.top(query_text, pool, allowed));
            }
            self.dense(&rtxn, &meta, query_vector, pool, allowed.as_ref())
        });
        let (dense, sparse) = (dense?, sparse?);
        self.shape(&rtxn, index, fuse(&dense, &sparse, k).into_iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyword_hits_add_by_rank_not_by_score() {
        let dense = [Hit { id: 1, score: 0.80 }, Hit { id: 2, score: 0.78 }, Hit { id: 3, score: 0.50 }];
        // BM25's raw scores do not matter, only the order.
        let sparse = [(2, 40.0), (9, 39.0), (1, 0.1)];
        let fused = fuse(&dense, &sparse, 4);
        let ids: Vec<u32> = fused.iter().map(|c| c.id).collect();
        assert_eq!(ids, [2, 1, 3, 9]);
        assert!((fused[0].score - (0.7 * 0.78 + 0.3)).abs() < 1e-6);
        assert!((fused[1].score - (0.7 * 0.80 + 0.1)).abs() < 1e-6);
        assert_eq!(fused[2].source(), "dense_only");
        assert!((fused[2].score - 0.35).abs() < 1e-6);
        assert_eq!(fused[3].source(), "sparse_only");
        assert!((fused[3].score - 0.15).abs() < 1e-6);
        assert_eq!(fused[0].sparse, Some(Rank { rank: 0, score: 40.0 }));
    }
}
