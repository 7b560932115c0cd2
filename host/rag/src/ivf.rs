//! A coarse partition of a large index (an inverted file): spherical k-means
//! centroids trained on a sample, each row filed under its nearest centroid.
//! A query scans only the rows of its `nprobe` nearest lists.

use crate::kernels::{DOT, TopK};

/// Rows sampled to train the centroids.
const SAMPLE: usize = 16_384;
/// k-means rounds over the sample.
const ROUNDS: usize = 6;

/// Centroids and the rows filed under each.
#[derive(Debug, Clone)]
pub struct Ivf {
    dim: usize,
    centroids: Vec<f32>,
    /// Row numbers per list.
    lists: Vec<Vec<u32>>,
    /// List of each row.
    row_list: Vec<u32>,
}

impl Ivf {
    /// Trains about sqrt(n) centroids on a sample of `data` (row-major, unit
    /// rows) and files every row.
    pub fn train(data: &[f32], dim: usize) -> Ivf {
        let n = data.len() / dim;
        let nlist = ((n as f64).sqrt() as usize).clamp(16, 1024).min(n.max(1));
        let step = (n / SAMPLE).max(1);
        let sample: Vec<&[f32]> = data.chunks_exact(dim).step_by(step).collect();
        let pick = (sample.len() / nlist).max(1);
        let mut centroids: Vec<f32> = sample.iter().step_by(pick).take(nlist).flat_map(|r| r.iter().copied()).collect();
        let nlist = centroids.len() / dim;
        let mut ivf = Ivf { dim, centroids: Vec::new(), lists: vec![Vec::new(); nlist], row_list: Vec::new() };
        for _ in 0..ROUNDS {
            ivf.centroids = centroids.clone();
            let mut sums = vec![0f32; nlist * dim];
            let mut counts = vec![0usize; nlist];
            for r in &sample {
                let l = ivf.nearest(r);
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
        ivf.centroids = centroids;
        for (row, r) in data.chunks_exact(dim).enumerate() {
            let l = ivf.nearest(r);
            ivf.lists[l].push(row as u32);
            ivf.row_list.push(l as u32);
        }
        ivf
    }

    /// Number of lists.
    pub fn nlist(&self) -> usize {
        self.lists.len()
    }

    fn nearest(&self, v: &[f32]) -> usize {
        let dot = *DOT;
        let mut best = (f32::MIN, 0);
        for (l, c) in self.centroids.chunks_exact(self.dim).enumerate() {
            let s = dot(v, c);
            if s > best.0 {
                best = (s, l);
            }
        }
        best.1
    }

    /// The rows of the `nprobe` lists nearest `q`.
    pub fn probe(&self, q: &[f32], nprobe: usize) -> Vec<u32> {
        let dot = *DOT;
        let mut top = TopK::new(nprobe.min(self.nlist()));
        for (l, c) in self.centroids.chunks_exact(self.dim).enumerate() {
            top.push(l as u32, dot(q, c));
        }
        top.into_sorted().iter().flat_map(|h| self.lists[h.id as usize].iter().copied()).collect()
    }

    /// Files a new row (the next row number).
    pub fn push(&mut self, v: &[f32]) {
        let l = self.nearest(v);
        self.lists[l].push(self.row_list.len() as u32);
        self.row_list.push(l as u32);
    }

    /// Refiles `row` after its vector changed.
    pub fn refile(&mut self, row: usize, v: &[f32]) {
        self.unfile(row);
        let l = self.nearest(v);
        self.lists[l].push(row as u32);
        self.row_list[row] = l as u32;
    }

    fn unfile(&mut self, row: usize) {
        let list = &mut self.lists[self.row_list[row] as usize];
        if let Some(i) = list.iter().position(|&r| r as usize == row) {
            list.swap_remove(i);
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
