//! The on-disk partition of a large index: an inverted file in LMDB.
//!
//! The same search as the RAM cache's partitioned path (spherical k-means
//! centroids, each vector filed under its nearest one with a 1-bit code of
//! its signs around the index's mean, the closest codes of the nearest lists
//! rescored exactly), read from memory-mapped pages instead of RAM: a list is
//! one LMDB value holding its rows' codes side by side, so a probe reads it
//! in order. RAM holds nothing per vector; a query touches the centroids, the
//! probed lists and the shortlist's vectors.
//!
//! It exists because arroy's trees, on real embeddings, need about half the
//! index read to reach recall 0.95 (README, "RAG search"); the calibration
//! measures both on the same sample queries and keeps the partition only
//! where it is faster. Filtered queries keep arroy's walk, which takes a
//! candidate set.
//!
//! Everything is written in the caller's write transaction: a crash leaves
//! the lists and the vectors as of the last commit, together.

use super::{VectorDb, dot_bytes, slice_of, to_bytes};
use crate::error::Result;
use crate::ivf;
use crate::kernels::{DOT, Hit, SCAN, TopK, normalize};
use crate::vectors::{Seed, SeedProbe, closest, with_scratch};
use heed::{RoTxn, RwTxn};
use rayon::prelude::*;
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

/// Vectors read per batch while training and filing (bounded memory at any size).
const BATCH: usize = 8192;

/// A partition's header: when it was trained, the mean the codes are taken
/// around, and the centroids.
pub struct Header<'a> {
    /// Vectors in the index when it was trained.
    pub trained_at: u64,
    dim: usize,
    centre: Cow<'a, [f32]>,
    centroids: Cow<'a, [f32]>,
}

impl<'a> Header<'a> {
    /// Header bytes: trained_at (u64), dim (u32), nlist (u32), centre, centroids (f32, little-endian).
    fn encode(trained_at: u64, dim: usize, centre: &[f32], centroids: &[f32]) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + 4 * (centre.len() + centroids.len()));
        out.extend_from_slice(&trained_at.to_le_bytes());
        out.extend_from_slice(&(dim as u32).to_le_bytes());
        out.extend_from_slice(&((centroids.len() / dim) as u32).to_le_bytes());
        out.extend_from_slice(&to_bytes(centre));
        out.extend_from_slice(&to_bytes(centroids));
        out
    }

    fn decode(b: &'a [u8]) -> Header<'a> {
        let trained_at = u64::from_le_bytes(b[0..8].try_into().expect("header"));
        let dim = u32::from_le_bytes(b[8..12].try_into().expect("header")) as usize;
        let floats = &b[16..];
        Header { trained_at, dim, centre: slice_of(&floats[..dim * 4]), centroids: slice_of(&floats[dim * 4..]) }
    }

    /// Number of lists.
    pub fn nlist(&self) -> usize {
        self.centroids.len() / self.dim
    }

    fn code(&self, v: &[f32]) -> Vec<u64> {
        ivf::code(v, &self.centre)
    }
}

/// Key of list `list` of index number `arroy`: both big-endian, so an index's lists are adjacent.
fn list_key(arroy: u16, list: u32) -> [u8; 6] {
    let mut k = [0u8; 6];
    k[..2].copy_from_slice(&arroy.to_be_bytes());
    k[2..].copy_from_slice(&list.to_be_bytes());
    k
}

/// A list's rows: their codes (`words` u64 each) then their ids, as stored.
struct List {
    codes: Vec<u64>,
    ids: Vec<u32>,
}

impl List {
    fn decode(b: &[u8], words: usize) -> List {
        let rows = b.len() / (words * 8 + 4);
        let (codes, ids) = b.split_at(rows * words * 8);
        List { codes: slice_of::<u64>(codes).into_owned(), ids: slice_of::<u32>(ids).into_owned() }
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.codes.len() * 8 + self.ids.len() * 4);
        out.extend(self.codes.iter().flat_map(|c| c.to_le_bytes()));
        out.extend(self.ids.iter().flat_map(|i| i.to_le_bytes()));
        out
    }
}

/// How a partitioned index is probed, chosen by calibration.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Probe {
    /// Lists scanned per query.
    pub nprobe: usize,
    /// Candidates rescored exactly per result (at least 10 results' worth).
    pub oversample: usize,
    /// Mean time of one sample query, microseconds.
    pub micros: f32,
    /// Recall@10 it reached on the sample.
    pub recall: f32,
}

impl VectorDb {
    /// The partition of index number `arroy`, if it has one.
    pub fn partition<'t>(&self, rtxn: &'t RoTxn, arroy: u16) -> Result<Option<Header<'t>>> {
        Ok(self.headers.get(rtxn, &arroy)?.map(Header::decode))
    }

    /// Files the committed changes of one write transaction (`adds`: new
    /// chunks and their vectors; `removes`: chunks gone) into the partition
    /// of index number `arroy`, whose item count is now `n`; trains it the
    /// first time the index holds `train_at` vectors, and again whenever it
    /// has grown or shrunk fourfold ([`crate::vectors::retrain_due`]). True when it was (re)trained or dropped.
    pub fn file(
        &self,
        wtxn: &mut RwTxn,
        arroy: u16,
        dim: usize,
        adds: &[(u32, &[f32])],
        removes: &[u32],
        train_at: usize,
    ) -> Result<bool> {
        let ids = self.items(wtxn, arroy)?;
        let n = ids.len() as usize;
        // Owned: the lists are rewritten below, in the transaction the header is read from.
        let header = self
            .partition(wtxn, arroy)?
            .map(|h| (h.trained_at as usize, h.centroids.into_owned(), h.centre.into_owned()));
        let stale = match &header {
            None => n >= train_at,
            Some((at, ..)) => crate::vectors::retrain_due(*at, n),
        };
        if stale {
            for id in removes {
                self.rows.delete(wtxn, id)?;
            }
            self.drop_lists(wtxn, arroy)?;
            if n >= train_at {
                self.train(wtxn, arroy, dim, &ids.iter().collect::<Vec<_>>())?;
            } else {
                self.headers.delete(wtxn, &arroy)?;
                for id in &ids {
                    self.rows.delete(wtxn, &id)?;
                }
            }
            return Ok(true);
        }
        let Some((_, centroids, centre)) = header else { return Ok(false) };
        let mut gone: HashMap<u32, HashSet<u32>> = HashMap::new();
        for &id in removes {
            if let Some(l) = self.rows.get(wtxn, &id)? {
                gone.entry(l).or_default().insert(id);
                self.rows.delete(wtxn, &id)?;
            }
        }
        let mut added: HashMap<u32, List> = HashMap::new();
        for &(id, vector) in adds {
            let mut v = vector.to_vec();
            normalize(&mut v);
            let l = ivf::nearest(&centroids, dim, &v) as u32;
            let list = added.entry(l).or_insert_with(|| List { codes: Vec::new(), ids: Vec::new() });
            list.codes.extend(ivf::code(&v, &centre));
            list.ids.push(id);
            self.rows.put(wtxn, &id, &l)?;
        }
        let words = dim.div_ceil(64);
        let touched: HashSet<u32> = gone.keys().chain(added.keys()).copied().collect();
        for l in touched {
            let key = list_key(arroy, l);
            let mut list = match self.lists.get(wtxn, &key)? {
                Some(b) => List::decode(b, words),
                None => List { codes: Vec::new(), ids: Vec::new() },
            };
            if let Some(gone) = gone.get(&l) {
                let mut kept = List { codes: Vec::with_capacity(list.codes.len()), ids: Vec::new() };
                for (i, id) in list.ids.iter().enumerate() {
                    if !gone.contains(id) {
                        kept.ids.push(*id);
                        kept.codes.extend_from_slice(&list.codes[i * words..(i + 1) * words]);
                    }
                }
                list = kept;
            }
            if let Some(new) = added.remove(&l) {
                list.codes.extend(new.codes);
                list.ids.extend(new.ids);
            }
            if list.ids.is_empty() {
                self.lists.delete(wtxn, &key)?;
            } else {
                self.lists.put(wtxn, &key, &list.encode())?;
            }
        }
        Ok(false)
    }

    /// Trains the partition of index number `arroy` on `ids` (every vector
    /// it holds) and files each under its nearest centroid; a list is written
    /// once, with all its rows.
    fn train(&self, wtxn: &mut RwTxn, arroy: u16, dim: usize, ids: &[u32]) -> Result<()> {
        let n = ids.len();
        let mut sum = vec![0f64; dim];
        for id in ids {
            if let Some(b) = self.exact.get(wtxn, id)? {
                for (s, x) in sum.iter_mut().zip(slice_of::<f32>(b).iter()) {
                    *s += f64::from(*x);
                }
            }
        }
        let centre: Vec<f32> = sum.iter().map(|s| (s / n.max(1) as f64) as f32).collect();
        let mut sample = Vec::new();
        for id in ids.iter().step_by((n / ivf::SAMPLE).max(1)) {
            if let Some(v) = self.vector(wtxn, *id)? {
                sample.push(v);
            }
        }
        let refs: Vec<&[f32]> = sample.iter().map(Vec::as_slice).collect();
        let centroids = ivf::train_centroids(&refs, dim, ivf::nlist_for(n));
        drop(sample);
        let nlist = centroids.len() / dim;
        // Every vector's list (4 bytes each), assigned a batch at a time on all cores.
        let mut assigned = Vec::with_capacity(n);
        for batch in ids.chunks(BATCH) {
            let mut rows = Vec::with_capacity(batch.len());
            for id in batch {
                rows.push(self.vector(wtxn, *id)?.unwrap_or_else(|| vec![0.0; dim]));
            }
            assigned.par_extend(rows.par_iter().map(|v| ivf::nearest(&centroids, dim, v) as u32));
        }
        let mut members: Vec<Vec<u32>> = vec![Vec::new(); nlist];
        for (&id, &l) in ids.iter().zip(&assigned) {
            members[l as usize].push(id);
        }
        drop(assigned);
        for (l, list_ids) in members.into_iter().enumerate() {
            if list_ids.is_empty() {
                continue;
            }
            let mut list = List { codes: Vec::with_capacity(list_ids.len() * dim.div_ceil(64)), ids: list_ids };
            for id in &list.ids {
                let v = self.vector(wtxn, *id)?.unwrap_or_else(|| vec![0.0; dim]);
                list.codes.extend(ivf::code(&v, &centre));
            }
            self.lists.put(wtxn, &list_key(arroy, l as u32), &list.encode())?;
            for id in &list.ids {
                self.rows.put(wtxn, id, &(l as u32))?;
            }
        }
        self.headers.put(wtxn, &arroy, &Header::encode(n as u64, dim, &centre, &centroids))?;
        tracing::info!(arroy, vectors = n, lists = nlist, "on-disk partition trained");
        Ok(())
    }

    /// Deletes every list of index number `arroy`.
    fn drop_lists(&self, wtxn: &mut RwTxn, arroy: u16) -> Result<()> {
        let mut iter = self.lists.prefix_iter_mut(wtxn, &arroy.to_be_bytes())?;
        while iter.next().transpose()?.is_some() {
            // SAFETY: no reference into the database is held across the deletion.
            unsafe { iter.del_current()? };
        }
        Ok(())
    }

    /// Removes the partition of index number `arroy` (its lists, header and the list of each of `ids`).
    pub fn clear_partition(&self, wtxn: &mut RwTxn, arroy: u16, ids: &[u32]) -> Result<()> {
        self.drop_lists(wtxn, arroy)?;
        self.headers.delete(wtxn, &arroy)?;
        for id in ids {
            self.rows.delete(wtxn, id)?;
        }
        Ok(())
    }

    /// The `k` nearest chunks to the normalised query `q` through the
    /// partition: the `nprobe` nearest lists' codes scanned in order, the
    /// `oversample × max(k, 10)` closest rescored exactly. `None` when the
    /// index has no partition.
    pub fn probe_search(
        &self,
        rtxn: &RoTxn,
        arroy: u16,
        q: &[f32],
        k: usize,
        probe: &Probe,
    ) -> Result<Option<Vec<Hit>>> {
        let Some(header) = self.partition(rtxn, arroy)? else { return Ok(None) };
        let words = header.dim.div_ceil(64);
        let qc = header.code(q);
        let want = k.max(10) * probe.oversample;
        let scan = *SCAN;
        let picked: Result<Vec<u32>> = with_scratch(|dists| {
            let mut hist = vec![0u32; words * 64 + 1];
            let mut ids: Vec<u32> = Vec::new();
            for l in ivf::probe(&header.centroids, header.dim, q, probe.nprobe) {
                let Some(b) = self.lists.get(rtxn, &list_key(arroy, l))? else { continue };
                let rows = b.len() / (words * 8 + 4);
                let (codes, list_ids) = b.split_at(rows * words * 8);
                scan(&qc, &slice_of::<u64>(codes), words, dists, &mut hist);
                ids.extend_from_slice(&slice_of::<u32>(list_ids));
            }
            Ok(closest(dists, &hist, want).map(|i| ids[i as usize]).collect())
        });
        let dot = *DOT;
        let mut top = TopK::new(k);
        for id in picked? {
            if let Some(b) = self.exact.get(rtxn, &id)? {
                top.push(id, dot_bytes(dot, q, b));
            }
        }
        Ok(Some(top.into_sorted()))
    }

    /// The partition of index number `arroy` as a RAM cache takes it over
    /// ([`crate::vectors::Bulk::finish_with`]): its centre, centroids, each
    /// id's list (the lists read in key order, one value each), and `tuning`'s
    /// probe where it was calibrated for `target`. `None` without a partition.
    pub fn seed(&self, rtxn: &RoTxn, arroy: u16, tuning: Option<&super::Tuning>, target: f32) -> Result<Option<Seed>> {
        let Some(header) = self.partition(rtxn, arroy)? else { return Ok(None) };
        let words = header.dim.div_ceil(64);
        let mut lists = HashMap::new();
        for entry in self.lists.prefix_iter(rtxn, &arroy.to_be_bytes())? {
            let (key, bytes) = entry?;
            let l = u32::from_be_bytes(key[2..6].try_into().expect("list key"));
            let rows = bytes.len() / (words * 8 + 4);
            // The ids follow the codes; only they are read.
            for id in slice_of::<u32>(&bytes[rows * words * 8..]).iter() {
                lists.insert(*id, l);
            }
        }
        let probe = tuning.filter(|t| t.target == target).and_then(|t| {
            t.probe.map(|p| SeedProbe { nprobe: p.nprobe, oversample: p.oversample, calibrated_at: t.items as usize })
        });
        Ok(Some(Seed {
            trained_at: header.trained_at as usize,
            centre: header.centre.into_owned(),
            centroids: header.centroids.into_owned(),
            lists,
            probe,
        }))
    }

    /// The list each of `ids` is filed under (`None`: not filed, or its
    /// list does not hold it), for consistency checks; each list is read once.
    pub fn filed(&self, rtxn: &RoTxn, arroy: u16, ids: &[u32]) -> Result<Vec<Option<u32>>> {
        let words = match self.partition(rtxn, arroy)? {
            Some(h) => h.dim.div_ceil(64),
            None => return Ok(vec![None; ids.len()]),
        };
        let recorded: Vec<Option<u32>> = ids.iter().map(|id| self.rows.get(rtxn, id)).collect::<Result<_, _>>()?;
        let mut held: HashMap<u32, HashSet<u32>> = HashMap::new();
        for &l in recorded.iter().flatten() {
            if let std::collections::hash_map::Entry::Vacant(e) = held.entry(l) {
                let list = self.lists.get(rtxn, &list_key(arroy, l))?.map(|b| List::decode(b, words).ids);
                e.insert(list.unwrap_or_default().into_iter().collect());
            }
        }
        Ok(ids.iter().zip(recorded).map(|(id, l)| l.filter(|l| held[l].contains(id))).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_list_round_trip_aligned_or_not() {
        let centre = [0.5f32, -0.25, 0.0];
        let centroids = [1.0f32, 0.0, 0.0, 0.0, 1.0, 0.0];
        let bytes = Header::encode(42, 3, &centre, &centroids);
        // One byte off: the slices are copied instead of borrowed, with the same values.
        let mut shifted = vec![0u8];
        shifted.extend_from_slice(&bytes);
        for b in [&bytes[..], &shifted[1..]] {
            let h = Header::decode(b);
            assert_eq!((h.trained_at, h.dim, h.nlist()), (42, 3, 2));
            assert_eq!(&*h.centre, &centre);
            assert_eq!(&*h.centroids, &centroids);
        }
        let list = List { codes: vec![1, 2, u64::MAX, 4], ids: vec![7, 9] };
        let back = List::decode(&list.encode(), 2);
        assert_eq!((back.codes, back.ids), (list.codes, list.ids));
        assert_eq!(ivf::code(&[0.6, -0.3, 0.1], &centre), vec![0b101]);
    }
}
