//! Scoring kernels shared by the in-memory cache and the on-disk index:
//! dot products, Hamming scans over 1-bit codes, and a top-k heap. Each
//! kernel is picked once per process for the CPU it runs on.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::LazyLock;

/// One scored row: the caller's item id and its cosine similarity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    /// Item id given to the caller.
    pub id: u32,
    /// Cosine similarity to the query.
    pub score: f32,
}

/// Scales `v` to unit length (a zero vector stays zero).
pub fn normalize(v: &mut [f32]) {
    let norm = DOT(v, v).sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

/// A dot-product kernel.
pub type DotFn = fn(&[f32], &[f32]) -> f32;
/// A Hamming-distance kernel.
pub type HammingFn = fn(&[u64], &[u64]) -> u32;

/// Dot product, the fastest kernel this CPU runs.
pub static DOT: LazyLock<DotFn> = LazyLock::new(|| {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        return |a, b| {
            // SAFETY: the CPU was just checked for AVX2 and FMA.
            unsafe { dot_avx2(a, b) }
        };
    }
    dot_portable
});

/// A scan of every code's Hamming distance to a query code, appended to `out`, each distance counted in `hist`
/// (so one query's scans of several lists add up).
pub type ScanFn = fn(&[u64], &[u64], usize, &mut Vec<u16>, &mut [u32]);

/// Hamming distances of all rows, one call per query (not one per row).
pub static SCAN: LazyLock<ScanFn> = LazyLock::new(|| {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("popcnt") {
        return |q, codes, words, out, hist| {
            // SAFETY: the CPU was just checked for POPCNT.
            unsafe { scan_popcnt(q, codes, words, out, hist) }
        };
    }
    scan_portable
});

fn scan_portable(q: &[u64], codes: &[u64], words: usize, out: &mut Vec<u16>, hist: &mut [u32]) {
    scan_dispatch(q, codes, words, out, hist)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "popcnt")]
unsafe fn scan_popcnt(q: &[u64], codes: &[u64], words: usize, out: &mut Vec<u16>, hist: &mut [u32]) {
    scan_dispatch(q, codes, words, out, hist)
}

/// A fixed width unrolls; 384 bits is MiniLM's and bge-small's.
#[inline(always)]
fn scan_dispatch(q: &[u64], codes: &[u64], words: usize, out: &mut Vec<u16>, hist: &mut [u32]) {
    match words {
        6 => scan_fixed::<6>(q, codes, out, hist),
        _ => scan_any(q, codes, words, out, hist),
    }
}

#[inline(always)]
fn scan_fixed<const W: usize>(q: &[u64], codes: &[u64], out: &mut Vec<u16>, hist: &mut [u32]) {
    let q: [u64; W] = q[..W].try_into().expect("query code width");
    let start = out.len();
    if codes.len() < 4096 * W {
        // A short run (one inverted list): four histograms would cost more to
        // clear and fold than the increments they spare.
        out.resize(start + codes.len() / W, 0);
        for (code, slot) in codes.chunks_exact(W).zip(&mut out[start..]) {
            let mut d = 0;
            for w in 0..W {
                d += (q[w] ^ code[w]).count_ones();
            }
            *slot = d as u16;
            hist[d as usize] += 1;
        }
        return;
    }
    // Four histograms, so consecutive rows at the same distance do not wait
    // on each other's increment.
    let bins = hist.len();
    let mut lanes = vec![0u32; 4 * bins];
    out.resize(start + codes.len() / W, 0);
    for (i, (code, slot)) in codes.chunks_exact(W).zip(&mut out[start..]).enumerate() {
        let mut d = 0;
        for w in 0..W {
            d += (q[w] ^ code[w]).count_ones();
        }
        *slot = d as u16;
        lanes[(i & 3) * bins + d as usize] += 1;
    }
    for (b, h) in hist.iter_mut().enumerate() {
        *h += lanes[b] + lanes[bins + b] + lanes[2 * bins + b] + lanes[3 * bins + b];
    }
}

fn scan_any(q: &[u64], codes: &[u64], words: usize, out: &mut Vec<u16>, hist: &mut [u32]) {
    for code in codes.chunks_exact(words) {
        let d = hamming_portable(q, code);
        out.push(d as u16);
        hist[d as usize] += 1;
    }
}

/// Hamming distance between two codes.
pub static HAMMING: LazyLock<HammingFn> = LazyLock::new(|| {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("popcnt") {
        return |a, b| {
            // SAFETY: the CPU was just checked for POPCNT.
            unsafe { hamming_popcnt(a, b) }
        };
    }
    hamming_portable
});

fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut i = 0;
    // SAFETY: every load reads 8 floats at i or i + 8, both below n.
    unsafe {
        while i + 16 <= n {
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a.as_ptr().add(i)), _mm256_loadu_ps(b.as_ptr().add(i)), s0);
            s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a.as_ptr().add(i + 8)), _mm256_loadu_ps(b.as_ptr().add(i + 8)), s1);
            i += 16;
        }
        while i + 8 <= n {
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a.as_ptr().add(i)), _mm256_loadu_ps(b.as_ptr().add(i)), s0);
            i += 8;
        }
    }
    let mut lanes = [0f32; 8];
    // SAFETY: lanes holds exactly 8 floats.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(s0, s1)) };
    let mut total: f32 = lanes.iter().sum();
    while i < n {
        total += a[i] * b[i];
        i += 1;
    }
    total
}

fn hamming_portable(a: &[u64], b: &[u64]) -> u32 {
    a.iter().zip(b).map(|(x, y)| (x ^ y).count_ones()).sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "popcnt")]
unsafe fn hamming_popcnt(a: &[u64], b: &[u64]) -> u32 {
    a.iter().zip(b).map(|(x, y)| (x ^ y).count_ones()).sum()
}

/// The best `k` hits seen so far (a min-heap on score).
pub struct TopK {
    k: usize,
    heap: BinaryHeap<Reverse>,
}

#[derive(PartialEq)]
struct Reverse(Hit);

impl Eq for Reverse {}

impl PartialOrd for Reverse {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Reverse {
    fn cmp(&self, other: &Self) -> Ordering {
        other.0.score.total_cmp(&self.0.score).then(other.0.id.cmp(&self.0.id))
    }
}

impl TopK {
    /// Keeps the best `k`.
    pub fn new(k: usize) -> Self {
        TopK { k, heap: BinaryHeap::with_capacity(k + 1) }
    }

    /// Offers one hit.
    pub fn push(&mut self, id: u32, score: f32) {
        if self.heap.len() < self.k {
            self.heap.push(Reverse(Hit { id, score }));
        } else if self.heap.peek().is_some_and(|worst| score > worst.0.score) {
            self.heap.pop();
            self.heap.push(Reverse(Hit { id, score }));
        }
    }

    /// The kept hits, best first.
    pub fn into_sorted(self) -> Vec<Hit> {
        let mut hits: Vec<Hit> = self.heap.into_iter().map(|r| r.0).collect();
        hits.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id)));
        hits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_agree_with_the_obvious_loop() {
        let v: Vec<Vec<f32>> =
            (0..2).map(|r| (0..389).map(|i| ((i * 7 + r * 13) % 17) as f32 / 17.0 - 0.5).collect()).collect();
        let naive: f32 = v[0].iter().zip(&v[1]).map(|(a, b)| a * b).sum();
        assert!((DOT(&v[0], &v[1]) - naive).abs() < 1e-3);
        assert!((dot_portable(&v[0], &v[1]) - naive).abs() < 1e-3);
        let (a, b) = ([0b1011u64, u64::MAX], [0b0001u64, 0]);
        assert_eq!(HAMMING(&a, &b), 2 + 64);
        assert_eq!(hamming_portable(&a, &b), 66);
        let codes = [a[0], a[1], b[0], b[1], a[0], b[1]];
        let (mut out, mut hist) = (Vec::new(), vec![0u32; 129]);
        SCAN(&a, &codes, 2, &mut out, &mut hist);
        assert_eq!(out, [0, 66, 64]);
        assert_eq!((hist[0], hist[64], hist[66]), (1, 1, 1));
    }
}
