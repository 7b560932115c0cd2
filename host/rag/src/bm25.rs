//! BM25 over one index's chunks, the sparse half of hybrid retrieval.

use std::collections::HashMap;

const K1: f32 = 1.2;
const B: f32 = 0.75;

/// Lower-cased alphanumeric words: the terms BM25 counts.
pub fn terms(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase)
}

/// Posting lists and lengths of every chunk in one index.
#[derive(Debug, Default, Clone)]
pub struct Bm25 {
    postings: HashMap<String, Vec<(u32, u32)>>,
    lengths: HashMap<u32, u32>,
    total: u64,
}

impl Bm25 {
    /// Adds a chunk (replacing nothing: remove first to update).
    pub fn insert(&mut self, id: u32, text: &str) {
        let mut tf: HashMap<String, u32> = HashMap::new();
        let mut len = 0;
        for term in terms(text) {
            *tf.entry(term).or_default() += 1;
            len += 1;
        }
        for (term, n) in tf {
            self.postings.entry(term).or_default().push((id, n));
        }
        self.lengths.insert(id, len);
        self.total += u64::from(len);
    }

    /// Removes a chunk; `text` must be the text it was inserted with.
    pub fn remove(&mut self, id: u32, text: &str) {
        let Some(len) = self.lengths.remove(&id) else { return };
        self.total -= u64::from(len);
        let mut seen: Vec<String> = terms(text).collect();
        seen.sort();
        seen.dedup();
        for term in seen {
            if let Some(list) = self.postings.get_mut(&term) {
                list.retain(|(c, _)| *c != id);
                if list.is_empty() {
                    self.postings.remove(&term);
                }
            }
        }
    }

    /// Number of chunks.
    pub fn len(&self) -> usize {
        self.lengths.len()
    }

    /// True when no chunk is indexed.
    pub fn is_empty(&self) -> bool {
        self.lengths.is_empty()
    }

    /// BM25 score of every chunk sharing a term with `query` (Okapi, k1 1.2, b 0.75).
    pub fn scores(&self, query: &str) -> HashMap<u32, f32> {
        let n = self.lengths.len() as f32;
        let mut out: HashMap<u32, f32> = HashMap::new();
        if n == 0.0 {
            return out;
        }
        let avg = self.total as f32 / n;
        let mut qterms: Vec<String> = terms(query).collect();
        qterms.sort();
        qterms.dedup();
        for term in qterms {
            let Some(list) = self.postings.get(&term) else { continue };
            let df = list.len() as f32;
            let idf = ((n - df + 0.5) / (df + 0.5) + 1.0).ln();
            for &(id, tf) in list {
                let len = self.lengths.get(&id).copied().unwrap_or(0) as f32;
                let tf = tf as f32;
                *out.entry(id).or_default() += idf * tf * (K1 + 1.0) / (tf + K1 * (1.0 - B + B * len / avg.max(1e-6)));
            }
        }
        out
    }
}

impl Bm25 {
    /// The `k` best-scoring chunks `allow` accepts, best first (ties by id).
    pub fn top(&self, query: &str, k: usize, allow: impl Fn(u32) -> bool) -> Vec<(u32, f32)> {
        let mut hits: Vec<(u32, f32)> = self.scores(query).into_iter().filter(|(id, _)| allow(*id)).collect();
        let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if hits.len() > k && k > 0 {
            hits.select_nth_unstable_by(k - 1, order);
        }
        hits.truncate(k);
        hits.sort_by(order);
        hits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rarer_and_denser_terms_score_higher() {
        let mut bm = Bm25::default();
        bm.insert(1, "The cat sat on the mat.");
        bm.insert(2, "A dog chased the cat around the garden, the cat ran.");
        bm.insert(3, "Kubernetes schedules pods onto GPU nodes.");
        let s = bm.scores("cat");
        assert!(s[&2] > 0.0 && s[&1] > 0.0);
        assert!(!s.contains_key(&3));
        let gpu = bm.scores("GPU nodes");
        assert_eq!(gpu.keys().copied().collect::<Vec<_>>(), vec![3]);
        bm.remove(3, "Kubernetes schedules pods onto GPU nodes.");
        assert!(bm.scores("gpu").is_empty());
        assert_eq!(bm.len(), 2);
    }

    #[test]
    fn top_keeps_the_best_allowed() {
        let mut bm = Bm25::default();
        bm.insert(1, "gpu gpu gpu nodes");
        bm.insert(2, "gpu");
        bm.insert(3, "a gpu among many other words here");
        assert_eq!(bm.top("gpu", 2, |_| true).iter().map(|h| h.0).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(bm.top("gpu", 2, |id| id != 1).iter().map(|h| h.0).collect::<Vec<_>>(), [2, 3]);
    }

    #[test]
    fn terms_are_lowercase_words() {
        assert_eq!(terms("Hello, World! v1.2").collect::<Vec<_>>(), ["hello", "world", "v1", "2"]);
    }
}
