//! In-memory vector search over one index's chunks.
//!
//! arroy holds the vectors durably; this mirror answers queries. Below
//! [`SearchParams::exact_below`] rows it scans every vector exactly (at 10k
//! rows that beats any graph or tree). Above it, every row also carries a
//! 1-bit code (the signs of the vector minus the index's mean): a Hamming scan
//! over those codes picks candidates and only those are rescored exactly.
//! Centring matters: embedding vectors share a large common component, and
//! signs of the raw vectors would mostly agree. Above
//! [`SearchParams::ivf_above`] rows the index is also partitioned
//! ([`Ivf`]) and only the nearest partitions' codes are scanned.

use crate::calibration;
use crate::ivf::Ivf;
use crate::kernels::{DOT, Hit, SCAN, TopK, normalize};
use rayon::prelude::*;
use std::collections::HashMap;
use std::convert::Infallible;

/// Tuning of the search path.
#[derive(Debug, Clone, Copy)]
pub struct SearchParams {
    /// Indexes with fewer rows are scanned exactly.
    pub exact_below: usize,
    /// Candidates rescored per requested result in the quantised path without
    /// partitions (the partitioned path calibrates its own).
    pub oversample: usize,
    /// Fewest candidates rescored in the quantised path without partitions.
    pub min_candidates: usize,
    /// Indexes with at least this many rows are partitioned ([`Ivf`]) and
    /// only the nearest partitions are scanned: as many as it takes to meet
    /// `target_recall` with the fastest candidate count, measured when the
    /// partition is trained.
    pub ivf_above: usize,
    /// recall@10 the partitioned search is calibrated to meet.
    pub target_recall: f32,
}

impl Default for SearchParams {
    fn default() -> Self {
        SearchParams {
            exact_below: 20_000,
            oversample: 40,
            min_candidates: 400,
            ivf_above: 50_000,
            target_recall: 0.95,
        }
    }
}

/// Vectors of one index, normalised, row-major, with their binary codes.
#[derive(Debug, Clone)]
pub struct VectorIndex {
    dim: usize,
    words: usize,
    ids: Vec<u32>,
    rows: HashMap<u32, usize>,
    data: Vec<f32>,
    codes: Vec<u64>,
    center: Vec<f32>,
    centered_at: usize,
    /// The partition of large indexes and how it is searched.
    ivf: Option<Partition>,
    params: SearchParams,
}

/// recall@k is calibrated at this k; larger requests rescore proportionally more.
const CALIBRATION_K: usize = 10;

/// A trained partition and how queries search it.
#[derive(Debug, Clone)]
struct Partition {
    ivf: Ivf,
    /// Row count it was trained at.
    trained_at: usize,
    /// Row count the probe below was calibrated at.
    calibrated_at: usize,
    /// How queries probe it; `None` when no setting met the target on the
    /// calibration sample, and queries then scan every row exactly.
    probe: Option<Probe>,
}

/// A probe as (lists scanned, candidates rescored per result), for tests.
#[cfg(test)]
pub(crate) type ProbeShape = (usize, usize);

/// Lists a query scans and candidates it rescores.
#[derive(Debug, Clone, Copy)]
struct Probe {
    /// Partitions a query scans.
    nprobe: usize,
    /// Candidates rescored exactly per requested result (at least `CALIBRATION_K` results' worth).
    oversample: usize,
}

impl VectorIndex {
    /// An empty index of `dim`-dimensional vectors.
    pub fn new(dim: usize, params: SearchParams) -> Self {
        VectorIndex {
            dim,
            words: dim.div_ceil(64),
            ids: Vec::new(),
            rows: HashMap::new(),
            data: Vec::new(),
            codes: Vec::new(),
            center: vec![0.0; dim],
            centered_at: 0,
            ivf: None,
            params,
        }
    }

    /// Dimensions of every vector.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True when there are no vectors.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Bytes held by vectors and codes.
    pub fn memory_bytes(&self) -> usize {
        self.data.len() * 4
            + self.codes.len() * 8
            + self.ids.len() * 4
            + self.ivf.as_ref().map_or(0, |p| p.ivf.memory_bytes())
    }

    /// An empty index filled by [`Bulk::push`]: the centre, the partition and
    /// its calibration computed once, when [`Bulk::finish`] is called, instead of
    /// at each size they would pass on the way (a cache filled at start).
    pub fn bulk(dim: usize, params: SearchParams) -> Bulk {
        Bulk(VectorIndex::new(dim, params))
    }

    /// Adds or replaces the vector of `id` (normalised here).
    pub fn insert(&mut self, id: u32, vector: &[f32]) {
        self.put(id, vector);
        self.maybe_recenter();
        self.maybe_partition();
    }

    /// Adds or replaces the vector of `id`, leaving the centre and partition as they are.
    fn put(&mut self, id: u32, vector: &[f32]) {
        assert_eq!(vector.len(), self.dim, "vector dimension");
        let mut v = vector.to_vec();
        normalize(&mut v);
        let code = self.code(&v);
        match self.rows.get(&id) {
            Some(&row) => {
                self.data[row * self.dim..(row + 1) * self.dim].copy_from_slice(&v);
                self.codes[row * self.words..(row + 1) * self.words].copy_from_slice(&code);
                if let Some(p) = &mut self.ivf {
                    p.ivf.refile(row, &v, &code);
                }
            }
            None => {
                self.rows.insert(id, self.ids.len());
                self.ids.push(id);
                self.data.extend_from_slice(&v);
                self.codes.extend_from_slice(&code);
                if let Some(p) = &mut self.ivf {
                    p.ivf.push(&v, &code);
                }
            }
        }
    }

    /// Removes the vector of `id`; false when it was not there.
    pub fn remove(&mut self, id: u32) -> bool {
        let Some(row) = self.rows.remove(&id) else { return false };
        let last = self.ids.len() - 1;
        if let Some(p) = &mut self.ivf {
            p.ivf.swap_remove(row);
        }
        if row != last {
            let moved = self.ids[last];
            self.ids[row] = moved;
            self.rows.insert(moved, row);
            self.data.copy_within(last * self.dim..(last + 1) * self.dim, row * self.dim);
            self.codes.copy_within(last * self.words..(last + 1) * self.words, row * self.words);
        }
        self.ids.pop();
        self.data.truncate(last * self.dim);
        self.codes.truncate(last * self.words);
        self.maybe_recenter();
        self.maybe_partition();
        true
    }

    /// The stored (normalised) vector of `id`.
    pub fn vector(&self, id: u32) -> Option<&[f32]> {
        self.rows.get(&id).map(|&row| &self.data[row * self.dim..(row + 1) * self.dim])
    }

    /// The `k` most similar rows among those `allow` accepts, best first.
    pub fn search(&self, query: &[f32], k: usize, allow: Option<&dyn Fn(u32) -> bool>) -> Vec<Hit> {
        assert_eq!(query.len(), self.dim, "query dimension");
        if k == 0 || self.is_empty() {
            return Vec::new();
        }
        let mut q = query.to_vec();
        normalize(&mut q);
        // A filter can exclude most of the quantised candidates; scanning the
        // allowed rows exactly never misses one.
        if self.len() < self.params.exact_below || allow.is_some() {
            return self.exact(&q, k, allow);
        }
        let (partition, want) = match self.ivf.as_ref().filter(|_| self.len() >= self.params.ivf_above) {
            Some(Partition { probe: None, .. }) => return self.exact(&q, k, None),
            Some(Partition { ivf, probe: Some(p), .. }) => (Some((ivf, p.nprobe)), k.max(CALIBRATION_K) * p.oversample),
            None => (None, (k * self.params.oversample).max(self.params.min_candidates)),
        };
        if want >= self.len() {
            return self.exact(&q, k, None);
        }
        self.approximate(&q, k, want, partition)
    }

    /// The quantised search: codes scanned (all, or the calibrated nearest
    /// partitions'), the `want` closest rescored exactly.
    fn approximate(&self, q: &[f32], k: usize, want: usize, partition: Option<(&Ivf, usize)>) -> Vec<Hit> {
        let qc = self.code(q);
        let mut top = TopK::new(k);
        if let Some((ivf, nprobe)) = partition {
            // Only the nearest partitions' codes are scanned.
            self.rescore_probed(ivf, q, &qc, nprobe, want, &mut top);
        } else {
            let picked: Vec<usize> = with_scratch(|dists| {
                let mut hist = vec![0u32; self.dim + 1];
                (*SCAN)(&qc, &self.codes, self.words, dists, &mut hist);
                closest(dists, &hist, want).map(|r| r as usize).collect()
            });
            self.rescore(q, &picked, &mut top);
        }
        top.into_sorted()
    }

    /// How to search `ivf`: the fastest setting of lists probed and
    /// candidates rescored whose recall@10 on sample queries (midpoints of two
    /// stored vectors, against the exact scan) meets the target, found by
    /// [`calibration::fastest`] as the on-disk partition's is. Which costs less
    /// depends on the data: on real MiniLM embeddings 20-30 candidates per
    /// result won at 0.95 and 40 at 0.99; at 1M synthetic vectors 0.99 took more.
    fn calibrate(&self, ivf: Ivf, trained_at: usize) -> Partition {
        const K: usize = CALIBRATION_K;
        const QUERIES: usize = 48;
        let n = self.len();
        let row = |i: usize| &self.data[i * self.dim..(i + 1) * self.dim];
        let queries: Vec<Vec<f32>> = (0..QUERIES)
            .map(|i| {
                let (a, b) = (i.wrapping_mul(2_654_435_761) % n, (i.wrapping_mul(40_503) + 7) % n);
                let mut m: Vec<f32> = row(a).iter().zip(row(b)).map(|(x, y)| x + y).collect();
                normalize(&mut m);
                m
            })
            .collect();
        // Recall is counted on all cores (the exact scans dominate a calibration at start, when the
        // cache is filled); only the timing passes run on one thread, as queries do.
        let truth: Vec<Vec<u32>> =
            queries.par_iter().map(|q| self.exact(q, K, None).iter().map(|h| h.id).collect()).collect();
        let recall = |nprobe: usize, oversample: usize| {
            let found: usize = queries
                .par_iter()
                .zip(&truth)
                .map(|(q, t)| {
                    let hits = self.approximate_with(&ivf, q, K, K * oversample, nprobe);
                    hits.iter().filter(|h| t.contains(&h.id)).count()
                })
                .sum();
            Ok::<_, Infallible>(found as f32 / (QUERIES * K) as f32)
        };
        let pass = |nprobe: usize, oversample: usize| {
            for q in &queries {
                std::hint::black_box(self.approximate_with(&ivf, q, K, K * oversample, nprobe));
            }
            Ok(())
        };
        let Ok(choice) = calibration::fastest(ivf.nlist(), n, K, self.params.target_recall, recall, pass);
        let probe = choice.map(|c| Probe { nprobe: c.nprobe, oversample: c.oversample });
        if probe.is_none() {
            tracing::warn!(
                rows = n,
                target = self.params.target_recall,
                "no partitioned search met the target; scanning exactly"
            );
        }
        Partition { ivf, trained_at, calibrated_at: n, probe }
    }

    fn approximate_with(&self, ivf: &Ivf, q: &[f32], k: usize, want: usize, nprobe: usize) -> Vec<Hit> {
        let qc = self.code(q);
        let mut top = TopK::new(k);
        self.rescore_probed(ivf, q, &qc, nprobe, want, &mut top);
        top.into_sorted()
    }

    /// Ranks the rows of the `nprobe` lists nearest `q` by their codes' Hamming distance to `qc` (each list's
    /// codes read in order) and rescores the `want` closest exactly.
    fn rescore_probed(&self, ivf: &Ivf, q: &[f32], qc: &[u64], nprobe: usize, want: usize, top: &mut TopK) {
        let scan = *SCAN;
        let picked: Vec<usize> = with_scratch(|dists| {
            let mut hist = vec![0u32; self.words * 64 + 1];
            let mut rows: Vec<u32> = Vec::new();
            for l in ivf.probe(q, nprobe) {
                let (list_rows, codes) = ivf.list(l);
                scan(qc, codes, self.words, dists, &mut hist);
                rows.extend_from_slice(list_rows);
            }
            closest(dists, &hist, want).map(|i| rows[i as usize] as usize).collect()
        });
        self.rescore(q, &picked, top);
    }

    /// Exact scores of `rows`. The rows are scattered over a matrix far
    /// larger than the cache, so each is prefetched a few rows ahead: the
    /// fetches overlap instead of waiting on memory one row at a time.
    fn rescore(&self, q: &[f32], rows: &[usize], top: &mut TopK) {
        const AHEAD: usize = 6;
        let dot = *DOT;
        let row_slice = |r: usize| &self.data[r * self.dim..(r + 1) * self.dim];
        for &r in rows.iter().take(AHEAD) {
            prefetch(row_slice(r));
        }
        for (i, &r) in rows.iter().enumerate() {
            if let Some(&next) = rows.get(i + AHEAD) {
                prefetch(row_slice(next));
            }
            top.push(self.ids[r], dot(q, row_slice(r)));
        }
    }

    /// Trains the partition when the index grows past `ivf_above`, and again
    /// when it grew or shrank fourfold ([`retrain_due`], the on-disk
    /// partition's rule too); drops it below half the threshold.
    /// Between trainings the probe is calibrated again whenever the size moved
    /// by a quarter: lists twice as long need more candidates or more lists
    /// for the same recall (a probe calibrated at 50k vectors reached 0.980
    /// instead of 0.99 at 100k).
    fn maybe_partition(&mut self) {
        let n = self.len();
        if n < self.params.ivf_above / 2 || self.params.ivf_above == usize::MAX {
            self.ivf = None;
            return;
        }
        let trained_at = self.ivf.as_ref().map(|p| p.trained_at);
        let stale = match trained_at {
            None => n >= self.params.ivf_above,
            Some(at) => retrain_due(at, n),
        };
        if stale {
            let ivf = Ivf::train(&self.data, self.dim, &self.codes, self.words);
            self.ivf = Some(self.calibrate(ivf, n));
        } else if let Some(p) = self.ivf.take_if(|p| moved_by_a_quarter(p.calibrated_at, n)) {
            self.ivf = Some(self.calibrate(p.ivf, p.trained_at));
        }
    }

    /// The partition's training size, list count and probe (lists, candidates per result), for tests.
    #[cfg(test)]
    pub(crate) fn partition_shape(&self) -> Option<(usize, usize, Option<ProbeShape>)> {
        self.ivf.as_ref().map(|p| (p.trained_at, p.ivf.nlist(), p.probe.map(|q| (q.nprobe, q.oversample))))
    }

    /// Exact scan, optionally over the rows `allow` accepts.
    pub fn exact(&self, q: &[f32], k: usize, allow: Option<&dyn Fn(u32) -> bool>) -> Vec<Hit> {
        let dot = *DOT;
        let mut top = TopK::new(k);
        for (row, &id) in self.ids.iter().enumerate() {
            if allow.is_some_and(|f| !f(id)) {
                continue;
            }
            top.push(id, dot(q, &self.data[row * self.dim..(row + 1) * self.dim]));
        }
        top.into_sorted()
    }

    fn code(&self, v: &[f32]) -> Vec<u64> {
        crate::ivf::code(v, &self.center)
    }

    /// Recomputes the mean and every code when the row count has doubled or
    /// halved since the last time, so the codes follow the data's centre.
    fn maybe_recenter(&mut self) {
        let n = self.len();
        if n < self.params.exact_below.min(1024) && self.centered_at == 0 {
            return;
        }
        if n <= self.centered_at * 2 && n * 2 >= self.centered_at {
            return;
        }
        let mut sum = vec![0f64; self.dim];
        for row in self.data.chunks_exact(self.dim) {
            for (s, x) in sum.iter_mut().zip(row) {
                *s += f64::from(*x);
            }
        }
        self.center = sum.iter().map(|s| (*s / n.max(1) as f64) as f32).collect();
        self.centered_at = n.max(1);
        let codes: Vec<u64> = self.data.chunks_exact(self.dim).flat_map(|row| self.code(row)).collect();
        self.codes = codes;
        if let Some(p) = &mut self.ivf {
            p.ivf.recode(&self.codes);
        }
    }
}

/// Whether a size went from `then` to `now` by more than a quarter either way: when a calibrated search
/// (the cache's and the store's) is measured again.
pub(crate) fn moved_by_a_quarter(then: usize, now: usize) -> bool {
    now * 4 > then * 5 || now * 4 < then * 3
}

/// Whether a partition trained at `trained_at` vectors is trained again at
/// `now`: when the size grew or shrank fourfold. Between trainings lists grow
/// longer and the calibration probes more of them for the same recall; a
/// training costs a pass over every vector (a rewrite of every list on disk).
pub(crate) fn retrain_due(trained_at: usize, now: usize) -> bool {
    now > trained_at.saturating_mul(4) || now.saturating_mul(4) < trained_at
}

/// A partition trained elsewhere (the store's on-disk one) that a cache being
/// filled takes over instead of training and calibrating its own: filling a
/// cache of 1M vectors then reads them and files each by its stored list.
#[derive(Debug, Clone)]
pub struct Seed {
    /// Vectors in the index when it was trained.
    pub trained_at: usize,
    /// The mean its codes are taken around.
    pub centre: Vec<f32>,
    /// Its centroids, row-major.
    pub centroids: Vec<f32>,
    /// The list each id is filed under.
    pub lists: HashMap<u32, u32>,
    /// How it was calibrated to be probed for this cache's recall target, if it was.
    pub probe: Option<SeedProbe>,
}

/// A calibrated probe of a [`Seed`].
#[derive(Debug, Clone, Copy)]
pub struct SeedProbe {
    /// Lists scanned per query.
    pub nprobe: usize,
    /// Candidates rescored exactly per result.
    pub oversample: usize,
    /// Vectors in the index when it was calibrated.
    pub calibrated_at: usize,
}

/// A [`VectorIndex`] being filled in bulk.
pub struct Bulk(VectorIndex);

impl Bulk {
    /// Adds or replaces the vector of `id` (normalised here).
    pub fn push(&mut self, id: u32, vector: &[f32]) {
        self.0.put(id, vector);
    }

    /// The filled index, centred, partitioned and calibrated at its size.
    pub fn finish(mut self) -> VectorIndex {
        self.0.maybe_recenter();
        self.0.maybe_partition();
        self.0
    }

    /// The filled index with `seed`'s partition, centre and (when still
    /// current) probe, where the index is large enough to be partitioned and
    /// the seed fits it (same dimensions, not due to be trained again at this
    /// size); otherwise as [`Bulk::finish`].
    pub fn finish_with(mut self, seed: Seed) -> VectorIndex {
        let index = &mut self.0;
        let n = index.len();
        let fits = n >= index.params.ivf_above
            && index.params.ivf_above != usize::MAX
            && seed.centre.len() == index.dim
            && !seed.centroids.is_empty()
            && seed.centroids.len().is_multiple_of(index.dim)
            && !retrain_due(seed.trained_at, n);
        if !fits {
            return self.finish();
        }
        // The seed's centre, so each row's code is the one its stored list was probed with; taken as
        // current at this size (recentring later recodes every row, and the probe was calibrated on these).
        index.center = seed.centre;
        index.centered_at = n;
        let codes: Vec<u64> = index.data.chunks_exact(index.dim).flat_map(|row| index.code(row)).collect();
        index.codes = codes;
        let ivf = Ivf::filed(&index.data, index.dim, &index.codes, index.words, seed.centroids, |row| {
            seed.lists.get(&index.ids[row]).copied()
        });
        let current = seed.probe.filter(|p| !moved_by_a_quarter(p.calibrated_at, n));
        index.ivf = Some(match current {
            Some(p) => Partition {
                ivf,
                trained_at: seed.trained_at,
                calibrated_at: p.calibrated_at,
                probe: Some(Probe { nprobe: p.nprobe, oversample: p.oversample }),
            },
            None => index.calibrate(ivf, seed.trained_at),
        });
        self.0
    }
}

/// Positions of the `want` smallest distances (ties at the cut taken in
/// order), found with the distances' histogram instead of a sort.
pub(crate) fn closest<'a>(dists: &'a [u16], hist: &[u32], want: usize) -> impl Iterator<Item = u32> + 'a {
    let (mut seen, mut t) = (0usize, hist.len());
    for (d, &count) in hist.iter().enumerate() {
        if seen + count as usize >= want {
            t = d;
            break;
        }
        seen += count as usize;
    }
    let mut at_t = want.saturating_sub(seen);
    dists.iter().enumerate().filter_map(move |(i, &d)| {
        let d = d as usize;
        if d < t {
            Some(i as u32)
        } else if d == t && at_t > 0 {
            at_t -= 1;
            Some(i as u32)
        } else {
            None
        }
    })
}

/// Runs `f` with this thread's distance buffer, emptied. A fresh buffer per
/// query would be a large allocation, and the kernel would zero its pages on
/// every search.
pub(crate) fn with_scratch<T>(f: impl FnOnce(&mut Vec<u16>) -> T) -> T {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u16>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SCRATCH.with(|s| {
        let mut buf = s.borrow_mut();
        buf.clear();
        f(&mut buf)
    })
}

/// Asks the CPU to start loading `v` into the cache.
#[inline(always)]
fn prefetch(v: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in v.chunks(16) {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // SAFETY: SSE is part of x86_64's baseline, and a prefetch never
        // faults (this address is in bounds anyway).
        unsafe { _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = v;
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Embedding-like test vectors, not normalised (shared with the store's tests).
    pub(crate) fn vectors(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
        // A small xorshift keeps the test free of a rand dependency.
        let mut s = seed;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f32 / (1u64 << 53) as f32 - 0.5
        };
        // A shared offset plus a few directions plus noise, like real embeddings.
        let offset: Vec<f32> = (0..dim).map(|_| next()).collect();
        let basis: Vec<Vec<f32>> = (0..8).map(|_| (0..dim).map(|_| next()).collect()).collect();
        (0..n)
            .map(|_| {
                let w: Vec<f32> = (0..8).map(|_| next() * 2.0).collect();
                (0..dim)
                    .map(|i| offset[i] + basis.iter().zip(&w).map(|(b, w)| b[i] * w).sum::<f32>() + 0.3 * next())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn exact_search_finds_the_vector_itself_first() {
        let v = vectors(500, 64, 3);
        let mut index = VectorIndex::new(64, SearchParams::default());
        for (i, x) in v.iter().enumerate() {
            index.insert(i as u32 * 10, x);
        }
        let hits = index.search(&v[42], 3, None);
        assert_eq!(hits[0].id, 420);
        assert!((hits[0].score - 1.0).abs() < 1e-5);
        assert!(hits[0].score >= hits[1].score && hits[1].score >= hits[2].score);
    }

    #[test]
    fn remove_and_replace_keep_rows_consistent() {
        let v = vectors(50, 16, 5);
        let mut index = VectorIndex::new(16, SearchParams::default());
        for (i, x) in v.iter().enumerate() {
            index.insert(i as u32, x);
        }
        assert!(index.remove(0));
        assert!(!index.remove(0));
        assert_eq!(index.len(), 49);
        // Row 0 now holds the former last row; its vector must be intact.
        let mut last = v[49].clone();
        normalize(&mut last);
        assert_eq!(index.vector(49).unwrap(), last.as_slice());
        index.insert(7, &v[3]);
        assert_eq!(index.search(&v[3], 2, None).iter().map(|h| h.id).collect::<Vec<_>>().len(), 2);
        assert!(index.search(&v[3], 2, None).iter().any(|h| h.id == 7));
        let only_odd = |id: u32| id % 2 == 1;
        assert!(index.search(&v[10], 5, Some(&only_odd)).iter().all(|h| h.id % 2 == 1));
    }

    #[test]
    fn partitions_follow_removals_and_replacements() {
        let v = vectors(3000, 32, 21);
        let params = SearchParams { exact_below: 100, ivf_above: 500, target_recall: 1.0, ..SearchParams::default() };
        let mut index = VectorIndex::new(32, params);
        for (i, x) in v.iter().enumerate() {
            index.insert(i as u32, x);
        }
        for i in (0..3000).step_by(3) {
            index.remove(i);
        }
        index.insert(1, &v[2999]);
        // A target of 1.0 probes every partition: the partitioned search sees every row exactly once.
        let q = &v[10];
        let mut qn = q.clone();
        normalize(&mut qn);
        let got: Vec<u32> = index.search(q, 10, None).iter().map(|h| h.id).collect();
        let want: Vec<u32> = index.exact(&qn, 10, None).iter().map(|h| h.id).collect();
        assert_eq!(got, want);
        assert_lists_hold_every_row(&index, &qn);
    }

    /// Every row is filed once, its list holding the same code as the row.
    fn assert_lists_hold_every_row(index: &VectorIndex, q: &[f32]) {
        let ivf = &index.ivf.as_ref().expect("partitioned").ivf;
        let mut filed = Vec::new();
        for l in ivf.probe(q, usize::MAX) {
            let (rows, codes) = ivf.list(l);
            assert_eq!(rows.len() * index.words, codes.len());
            for (r, code) in rows.iter().zip(codes.chunks_exact(index.words)) {
                let r = *r as usize;
                assert_eq!(code, &index.codes[r * index.words..(r + 1) * index.words], "row {r}'s code");
                filed.push(r);
            }
        }
        filed.sort_unstable();
        assert_eq!(filed, (0..index.len()).collect::<Vec<_>>());
    }

    #[test]
    fn list_codes_follow_recentred_codes() {
        // Trained at 500 rows, the codes recomputed later (the row count doubled since they last were): the lists
        // take the new codes; then removals and a replacement move rows between and within lists.
        let v = vectors(900, 32, 5);
        let params = SearchParams { exact_below: 100, ivf_above: 500, target_recall: 1.0, ..SearchParams::default() };
        let mut index = VectorIndex::new(32, params);
        for (i, x) in v.iter().enumerate() {
            index.insert(i as u32, x);
        }
        let trained_at = index.ivf.as_ref().expect("partitioned").trained_at;
        assert!(trained_at < index.centered_at, "trained at {trained_at}, centred at {}", index.centered_at);
        for i in (0..900).step_by(7) {
            index.remove(i);
        }
        index.insert(3, &v[899]);
        let mut q = v[1].clone();
        normalize(&mut q);
        assert_lists_hold_every_row(&index, &q);
    }

    #[test]
    fn probe_is_calibrated_again_as_the_index_grows_and_once_in_bulk() {
        let dim = 64;
        let v = vectors(5200, dim, 5);
        let params = SearchParams { exact_below: 500, ivf_above: 2000, ..SearchParams::default() };
        let at = |index: &VectorIndex| index.ivf.as_ref().map(|p| (p.trained_at, p.calibrated_at));
        let mut index = VectorIndex::new(dim, params);
        for (i, x) in v[..2500].iter().enumerate() {
            index.insert(i as u32, x);
        }
        assert_eq!(at(&index), Some((2000, 2000)), "trained and calibrated at the threshold");
        index.insert(2500, &v[2500]);
        assert_eq!(at(&index), Some((2000, 2501)), "calibrated again a quarter later, same lists");
        for i in 0..700 {
            index.remove(i);
        }
        assert_eq!(at(&index), Some((2000, 1875)), "and a quarter smaller");
        let mut bulk = VectorIndex::bulk(dim, params);
        for (i, x) in v.iter().enumerate() {
            bulk.push(i as u32, x);
        }
        let index = bulk.finish();
        assert_eq!(at(&index), Some((5200, 5200)), "bulk: trained once, at the full size");
        assert_eq!(index.search(&v[17], 1, None)[0].id, 17);
    }

    #[test]
    fn quantised_path_keeps_recall_high() {
        let dim = 128;
        // Queries come from the same distribution but are not in the index.
        let mut v = vectors(6050, dim, 11);
        let queries = v.split_off(6000);
        for ivf_above in [usize::MAX, 2000] {
            let params = SearchParams { exact_below: 1000, ivf_above, ..SearchParams::default() };
            let mut index = VectorIndex::new(dim, params);
            for (i, x) in v.iter().enumerate() {
                index.insert(i as u32, x);
            }
            let mut found = 0;
            for q in &queries {
                let mut qn = q.clone();
                normalize(&mut qn);
                let truth: Vec<u32> = index.exact(&qn, 10, None).iter().map(|h| h.id).collect();
                let got = index.search(q, 10, None);
                assert_eq!(got.len(), 10);
                found += got.iter().filter(|h| truth.contains(&h.id)).count();
            }
            let recall = found as f64 / 500.0;
            assert!(recall >= 0.95, "recall@10 {recall} (partitions above {ivf_above})");
        }
    }
}
