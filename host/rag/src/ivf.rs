//! A coarse partition of a large index (an inverted file): spherical k-means
//! centroids trained on a sample, each row filed under its nearest centroid.
//! A query scans only the rows of its `nprobe` nearest lists. Each list keeps
//! its rows' binary codes side by side, as FAISS's inverted lists do: a probe
//! then reads its lists' codes in order instead of one scattered row at a time.

use crate::kernels::{DOT, TopK};
use rayon::prelude::*;

/// Rows sampled to train the centroids.
pub const SAMPLE: usize = 16_384;
/// k-means rounds over the sample.
const ROUNDS: usize = 6;

/// Lists for an index of `n` rows: about sqrt(n).
pub fn nlist_for(n: usize) -> usize {
    ((n as f64).sqrt() as usize).clamp(16, 1024).min(n.max(1))
}

/// Spherical k-means: about `nlist` unit centroids (row-major) trained on `sample` (unit rows).
pub fn train_centroids(sample: &[&[f32]], dim: usize, nlist: usize) -> Vec<f32> {
    let pick = (sample.len() / nlist.max(1)).max(1);
    let mut centroids: Vec<f32> = sample.iter().step_by(pick).take(nlist).flat_map(|r| r.iter().copied()).collect();
    let nlist = centroids.len() / dim;
    for _ in 0..ROUNDS {
        let mut sums = vec![0f32; nlist * dim];
        let mut counts = vec![0usize; nlist];
        // The nearest centroids on all cores; the sums in order, so training does not depend on the core count.
        let nearest: Vec<usize> = sample.par_iter().map(|r| nearest(&centroids, dim, r)).collect();
        for (r, &l) in sample.iter().zip(&nearest) {
            counts[l] += 1;
            for (s, x) in sums[l * dim..(l + 1) * dim].iter_mut().zip(r.iter()) {
                *s += x;
            }
        }
        for l in 0..nlist {
            // An empty cluster keeps its centroid.
            if counts[l] > 0 {
                let c = &mut sums[l * dim..(l + 1) * dim];
                crate::kernels::normalize(c);
                centroids[l * dim..(l + 1) * dim].copy_from_slice(c);
            }
        }
    }
    centroids
}

/// The centroid (of `centroids`, row-major) nearest `v`.
pub fn nearest(centroids: &[f32], dim: usize, v: &[f32]) -> usize {
    let dot = *DOT;
    let mut best = (f32::MIN, 0);
    for (l, c) in centroids.chunks_exact(dim).enumerate() {
        let s = dot(v, c);
        if s > best.0 {
            best = (s, l);
        }
    }
    best.1
}

/// The 1-bit code of `v`: the signs of `v` minus `centre`, 64 dimensions per word.
pub fn code(v: &[f32], centre: &[f32]) -> Vec<u64> {
    let mut code = vec![0u64; v.len().div_ceil(64)];
    for (i, (x, c)) in v.iter().zip(centre).enumerate() {
        if x > c {
            code[i / 64] |= 1 << (i % 64);
        }
    }
    code
}

/// The `nprobe` centroids nearest `q`, nearest first.
pub fn probe(centroids: &[f32], dim: usize, q: &[f32], nprobe: usize) -> Vec<u32> {
    let dot = *DOT;
    let mut top = TopK::new(nprobe.min(centroids.len() / dim));
    for (l, c) in centroids.chunks_exact(dim).enumerate() {
        top.push(l as u32, dot(q, c));
    }
    top.into_sorted().iter().map(|h| h.id).collect()
}

/// Centroids and the rows filed under each.
#[derive(Debug, Clone)]
pub struct Ivf {
    dim: usize,
    /// u64 words per code.
    words: usize,
    centroids: Vec<f32>,
    /// Row numbers per list.
    lists: Vec<Vec<u32>>,
    /// Codes per list, in the order of `lists`.
    codes: Vec<Vec<u64>>,
    /// List of each row.
    row_list: Vec<u32>,
}

impl Ivf {
    /// Trains about sqrt(n) centroids on a sample of `data` (row-major, unit
    /// rows) and files every row with its code (`codes`, row-major, `words` per row).
    pub fn train(data: &[f32], dim: usize, codes: &[u64], words: usize) -> Ivf {
        let n = data.len() / dim;
        let sample: Vec<&[f32]> = data.chunks_exact(dim).step_by((n / SAMPLE).max(1)).collect();
        let centroids = train_centroids(&sample, dim, nlist_for(n));
        Ivf::filed(data, dim, codes, words, centroids, |_| None)
    }

    /// Files every row of `data` with its code under `centroids` (trained
    /// elsewhere): under the list `list_of(row)` names, where it names one
    /// within range, else under the nearest centroid.
    pub fn filed(
        data: &[f32],
        dim: usize,
        codes: &[u64],
        words: usize,
        centroids: Vec<f32>,
        list_of: impl Fn(usize) -> Option<u32> + Sync,
    ) -> Ivf {
        let nlist = centroids.len() / dim;
        let mut ivf = Ivf {
            dim,
            words,
            centroids,
            lists: vec![Vec::new(); nlist],
            codes: vec![Vec::new(); nlist],
            row_list: Vec::new(),
        };
        // Finding the nearest is sqrt(n) dot products a row (most of a training): on all cores.
        let filed: Vec<usize> = data
            .par_chunks_exact(dim)
            .enumerate()
            .map(|(row, r)| list_of(row).map(|l| l as usize).filter(|&l| l < nlist).unwrap_or_else(|| ivf.nearest(r)))
            .collect();
        for (row, l) in filed.into_iter().enumerate() {
            ivf.lists[l].push(row as u32);
            ivf.codes[l].extend_from_slice(&codes[row * words..(row + 1) * words]);
            ivf.row_list.push(l as u32);
        }
        ivf
    }

    /// Bytes held by centroids, lists and codes.
    pub fn memory_bytes(&self) -> usize {
        self.centroids.len() * 4 + self.row_list.len() * (4 + 4 + self.words * 8)
    }

    /// Replaces every row's code (`codes`, row-major), after the codes were recomputed.
    pub fn recode(&mut self, codes: &[u64]) {
        let w = self.words;
        for (rows, list_codes) in self.lists.iter().zip(&mut self.codes) {
            list_codes.clear();
            for &r in rows {
                list_codes.extend_from_slice(&codes[r as usize * w..(r as usize + 1) * w]);
            }
        }
    }

    /// Number of lists.
    pub fn nlist(&self) -> usize {
        self.lists.len()
    }

    fn nearest(&self, v: &[f32]) -> usize {
        nearest(&self.centroids, self.dim, v)
    }

    /// The `nprobe` lists nearest `q`, nearest first.
    pub fn probe(&self, q: &[f32], nprobe: usize) -> Vec<u32> {
        probe(&self.centroids, self.dim, q, nprobe)
    }

    /// A list's rows and their codes (`words` per row, in the same order).
    pub fn list(&self, l: u32) -> (&[u32], &[u64]) {
        (&self.lists[l as usize], &self.codes[l as usize])
    }

    /// Files a new row (the next row number) with its code.
    pub fn push(&mut self, v: &[f32], code: &[u64]) {
        let l = self.nearest(v);
        self.lists[l].push(self.row_list.len() as u32);
        self.codes[l].extend_from_slice(code);
        self.row_list.push(l as u32);
    }

    /// Refiles `row` after its vector (and code) changed.
    pub fn refile(&mut self, row: usize, v: &[f32], code: &[u64]) {
        self.unfile(row);
        let l = self.nearest(v);
        self.lists[l].push(row as u32);
        self.codes[l].extend_from_slice(code);
        self.row_list[row] = l as u32;
    }

    /// Takes `row` out of its list; the list's last row fills its place, code too.
    fn unfile(&mut self, row: usize) {
        let l = self.row_list[row] as usize;
        let (list, codes, w) = (&mut self.lists[l], &mut self.codes[l], self.words);
        if let Some(i) = list.iter().position(|&r| r as usize == row) {
            let last = list.len() - 1;
            list.swap_remove(i);
            codes.copy_within(last * w..(last + 1) * w, i * w);
            codes.truncate(last * w);
        }
    }

    /// Mirrors a swap-remove: `row` goes, and the last row takes its number.
    pub fn swap_remove(&mut self, row: usize) {
        let last = self.row_list.len() - 1;
        self.unfile(row);
        if row != last {
            let l = self.row_list[last];
            let list = &mut self.lists[l as usize];
            if let Some(i) = list.iter().position(|&r| r as usize == last) {
                list[i] = row as u32;
            }
            self.row_list[row] = l;
        }
        self.row_list.pop();
    }
}
