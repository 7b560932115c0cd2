//! The keyword (BM25) side of retrieval: one tantivy index per RAG index,
//! on disk next to the LMDB environment; the only file naming tantivy.
//!
//! LMDB stays the source of truth. The store applies each committed write
//! transaction's chunk changes here (under its writer lock) and commits with
//! the index's generation as the commit payload; at open, an index whose
//! payload disagrees with LMDB's generation (a crash between the two
//! commits, a missing directory, an older layout) is rebuilt from LMDB's
//! chunks. Queries read tantivy's memory-mapped segments: nothing per chunk
//! is held in RAM.

use super::vector_db::ChunkSet;
use crate::error::Result;
use std::path::{Path, PathBuf};
use tantivy::columnar::Column;
use tantivy::fastfield::AliveBitSet;
use tantivy::fieldnorm::FieldNormReader;
use tantivy::postings::BlockSegmentPostings;
use tantivy::query::Bm25Weight;
use tantivy::schema::{FAST, Field, INDEXED, IndexRecordOption, Schema, TextFieldIndexing, TextOptions};
use tantivy::tokenizer::{
    Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer, StopWordFilter, TextAnalyzer,
};
use tantivy::{DocId, Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};

/// The analyzer's name in the schema.
const ANALYZER: &str = "kaito_en";

/// Words as KAITO's BM25 retriever (llama-index's, on bm25s) cuts them:
/// lower-cased, English stop words dropped, Snowball-stemmed. Dropping stop
/// words also keeps queries off the longest posting lists.
fn analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(40))
        .filter(LowerCaser)
        .filter(StopWordFilter::new(Language::English).expect("tantivy ships English stop words"))
        .filter(Stemmer::new(Language::English))
        .build()
}

/// Memory tantivy's writer may buffer before it writes a segment (its minimum is 15 MB).
const WRITER_BUDGET: usize = 32 << 20;

fn tantivy_err(e: tantivy::TantivyError) -> crate::error::Error {
    crate::error::Error::Internal(anyhow::anyhow!("keyword index: {e}"))
}

/// One RAG index's keyword index.
pub struct TextIndex {
    index: Index,
    reader: IndexReader,
    chunk: Field,
    text: Field,
    dir: PathBuf,
}

/// A chunk change to apply.
pub enum TextChange<'a> {
    /// Index a chunk's text.
    Add(u32, &'a str),
    /// Forget a chunk.
    Remove(u32),
}

fn schema() -> (Schema, Field, Field) {
    let mut b = Schema::builder();
    let chunk = b.add_u64_field("chunk", INDEXED | FAST);
    // BM25 needs term frequencies, not positions; the text itself lives in LMDB.
    let text = b.add_text_field(
        "text",
        TextOptions::default().set_indexing_options(
            TextFieldIndexing::default().set_tokenizer(ANALYZER).set_index_option(IndexRecordOption::WithFreqs),
        ),
    );
    (b.build(), chunk, text)
}

impl TextIndex {
    /// Opens the index in `dir`, creating it empty when missing or unreadable;
    /// also returns the generation of its last commit (`None`: never committed).
    pub fn open(dir: &Path) -> Result<(TextIndex, Option<u64>)> {
        let (schema, chunk, text) = schema();
        let opened = Index::open_in_dir(dir).ok().filter(|i| i.schema() == schema);
        let index = match opened {
            Some(i) => i,
            None => {
                // Missing or from another schema: start over (the caller rebuilds from LMDB).
                let _ = std::fs::remove_dir_all(dir);
                std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
                Index::create_in_dir(dir, schema).map_err(tantivy_err)?
            }
        };
        // Analyzers are not stored with the index: register ours on every open.
        index.tokenizers().register(ANALYZER, analyzer());
        let generation = index.load_metas().map_err(tantivy_err)?.payload.and_then(|p| p.parse().ok());
        let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into().map_err(tantivy_err)?;
        Ok((TextIndex { index, reader, chunk, text, dir: dir.to_path_buf() }, generation))
    }

    fn writer(&self) -> Result<IndexWriter> {
        self.index.writer_with_num_threads(1, WRITER_BUDGET).map_err(tantivy_err)
    }

    fn commit(&self, mut writer: IndexWriter, generation: u64) -> Result<()> {
        // The writer is consumed here; callers hand it over as built.
        let mut prepared = writer.prepare_commit().map_err(tantivy_err)?;
        prepared.set_payload(&generation.to_string());
        prepared.commit().map_err(tantivy_err)?;
        writer.wait_merging_threads().map_err(tantivy_err)?;
        self.reader.reload().map_err(tantivy_err)
    }

    /// Applies `changes` and commits them as `generation`.
    pub fn apply(&self, changes: &[TextChange], generation: u64) -> Result<()> {
        let writer = self.writer()?;
        for change in changes {
            match change {
                TextChange::Add(id, text) => {
                    let mut doc = TantivyDocument::default();
                    doc.add_u64(self.chunk, u64::from(*id));
                    doc.add_text(self.text, text);
                    writer.add_document(doc).map_err(tantivy_err)?;
                }
                TextChange::Remove(id) => {
                    writer.delete_term(Term::from_field_u64(self.chunk, u64::from(*id)));
                }
            }
        }
        self.commit(writer, generation)
    }

    /// Replaces everything with `chunks` and commits as `generation`.
    pub fn rebuild<'a>(&self, chunks: impl Iterator<Item = (u32, &'a str)>, generation: u64) -> Result<usize> {
        let writer = self.writer()?;
        writer.delete_all_documents().map_err(tantivy_err)?;
        let mut n = 0;
        for (id, text) in chunks {
            let mut doc = TantivyDocument::default();
            doc.add_u64(self.chunk, u64::from(id));
            doc.add_text(self.text, text);
            writer.add_document(doc).map_err(tantivy_err)?;
            n += 1;
        }
        self.commit(writer, generation)?;
        Ok(n)
    }

    /// Deletes the index's files.
    pub fn destroy(self) {
        let dir = self.dir.clone();
        drop(self);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// The query's distinct words, cut as the indexed text was.
    fn words(&self, query: &str) -> Result<Vec<Term>> {
        let mut analyzer = self.index.tokenizer_for_field(self.text).map_err(tantivy_err)?;
        let mut stream = analyzer.token_stream(query);
        let mut words: Vec<Term> = Vec::new();
        while let Some(token) = stream.next() {
            let term = Term::from_field_text(self.text, &token.text);
            if !words.contains(&term) {
                words.push(term);
            }
        }
        Ok(words)
    }

    /// The `k` chunks (among `allowed`) with the best BM25 score for `query`'s
    /// words, best first; equal scores in chunk-id order.
    ///
    /// Scored as tantivy's `BooleanQuery` of `Should` term queries scores
    /// (its `Bm25Weight` per word, statistics over all segments), but term at
    /// a time over windows of documents instead of its block-max WAND: a
    /// query is a whole question, 10-20 words after stop words, and WAND
    /// skips little across that many lists (on the 100k real sentences, k=30,
    /// p50 0.18-0.19 ms against 0.56 ms; README, "RAG search"). Each window's accumulator is small enough to stay in cache
    /// whatever the segment's size.
    pub fn top(&self, query: &str, k: usize, allowed: Option<&ChunkSet>) -> Result<Vec<(u32, f32)>> {
        if k == 0 {
            return Ok(Vec::new());
        }
        let terms = self.words(query)?;
        if terms.is_empty() {
            return Ok(Vec::new());
        }
        let searcher = self.reader.searcher();
        let segments = searcher.segment_readers();
        // Each word is looked up once per segment: its postings there, and its document frequency for the
        // statistics tantivy's `Bm25Weight::for_terms` would gather with a second lookup (the same numbers:
        // documents and tokens over all segments, deleted ones included).
        let mut infos = Vec::with_capacity(segments.len());
        let (mut docs, mut tokens) = (0u64, 0u64);
        for segment in segments {
            let inverted = segment.inverted_index(self.text).map_err(tantivy_err)?;
            let found = terms.iter().map(|t| inverted.get_term_info(t)).collect::<std::io::Result<Vec<_>>>();
            docs += u64::from(segment.max_doc());
            tokens += inverted.total_num_tokens();
            infos.push((inverted, found.map_err(io_err)?));
        }
        let average = tokens as f32 / docs as f32;
        let weights: Vec<Bm25Weight> = (0..terms.len())
            .map(|t| {
                let freq = infos.iter().filter_map(|(_, found)| found[t].as_ref()).map(|i| u64::from(i.doc_freq)).sum();
                Bm25Weight::for_one_term_without_explain(freq, docs, average)
            })
            .collect();
        let mut best = Best::new(k);
        for (ord, (segment, (inverted, found))) in segments.iter().zip(&infos).enumerate() {
            let mut lists = Vec::with_capacity(terms.len());
            for (info, weight) in found.iter().zip(&weights) {
                if let Some(info) = info {
                    let postings = inverted
                        .read_block_postings_from_terminfo(info, IndexRecordOption::WithFreqs)
                        .map_err(io_err)?;
                    lists.push(List { postings, at: 0, weight });
                }
            }
            let segment_hits = Segment {
                ord: ord as u32,
                norms: segment.get_fieldnorms_reader(self.text).map_err(tantivy_err)?,
                ids: segment.fast_fields().u64("chunk").map_err(tantivy_err)?,
                alive: segment.alive_bitset(),
                allowed,
            };
            segment_hits.score(&mut lists, &mut best);
        }
        Ok(best.into_sorted())
    }

    /// Chunks indexed.
    pub fn len(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// True when no chunk is indexed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Documents scored together: 16 KiB of scores.
const WINDOW: u32 = 4096;

fn io_err(e: std::io::Error) -> crate::error::Error {
    crate::error::Error::Internal(anyhow::anyhow!("keyword index: {e}"))
}

/// One word's postings in one segment, read block by block.
struct List<'a> {
    postings: BlockSegmentPostings,
    /// Next unread position in the current block.
    at: usize,
    weight: &'a Bm25Weight,
}

impl List<'_> {
    fn next_doc(&self) -> Option<DocId> {
        self.postings.docs().get(self.at).copied()
    }
}

/// What scoring one segment needs besides its postings.
struct Segment<'a> {
    ord: u32,
    norms: FieldNormReader,
    ids: Column<u64>,
    alive: Option<&'a AliveBitSet>,
    allowed: Option<&'a ChunkSet>,
}

impl Segment<'_> {
    /// Adds every word's score of each document, a window at a time, and
    /// offers each scored document to `best`.
    fn score(&self, lists: &mut [List], best: &mut Best) {
        let mut acc = vec![0f32; WINDOW as usize];
        // Which of the window's documents some word scored, one bit each: read back word by word, they come
        // out in document order without a sort.
        let mut seen = [0u64; (WINDOW / 64) as usize];
        // Each round scores the window holding the smallest unread document.
        while let Some(first) = lists.iter().filter_map(List::next_doc).min() {
            let base = first - first % WINDOW;
            let end = base + WINDOW;
            for list in lists.iter_mut() {
                loop {
                    let docs = list.postings.docs();
                    if docs.is_empty() {
                        break; // read to the end
                    }
                    let freqs = list.postings.freqs();
                    while list.at < docs.len() && docs[list.at] < end {
                        let doc = docs[list.at];
                        let at = (doc - base) as usize;
                        seen[at / 64] |= 1 << (at % 64);
                        acc[at] += list.weight.score(self.norms.fieldnorm_id(doc), freqs[list.at]);
                        list.at += 1;
                    }
                    if list.at < docs.len() {
                        break; // the rest is past this window
                    }
                    list.postings.advance();
                    list.at = 0;
                }
            }
            // Documents in increasing order, so a later equal score loses the tie, as in tantivy's TopDocs.
            for (word, bits) in seen.iter_mut().enumerate() {
                while *bits != 0 {
                    let at = word * 64 + bits.trailing_zeros() as usize;
                    *bits &= *bits - 1;
                    let doc = base + at as u32;
                    let score = std::mem::take(&mut acc[at]);
                    if !best.admits(score) || self.alive.is_some_and(|a| !a.is_alive(doc)) {
                        continue;
                    }
                    let Some(chunk) = self.ids.first(doc).and_then(|id| u32::try_from(id).ok()) else { continue };
                    if self.allowed.is_some_and(|set| !set.contains(chunk)) {
                        continue;
                    }
                    best.push(Scored { score, ord: self.ord, doc, chunk });
                }
            }
        }
    }
}

/// A scored document.
#[derive(Clone, Copy)]
struct Scored {
    score: f32,
    ord: u32,
    doc: DocId,
    chunk: u32,
}

/// Better first: higher score, then earlier document.
fn better(a: &Scored, b: &Scored) -> std::cmp::Ordering {
    b.score.total_cmp(&a.score).then((a.ord, a.doc).cmp(&(b.ord, b.doc)))
}

/// The `k` best scored documents seen: collected up to `2k`, then cut back to `k`.
struct Best {
    k: usize,
    kept: Vec<Scored>,
    /// The `k`-th best score after the last cut: a score not above it cannot enter.
    floor: Option<f32>,
}

impl Best {
    fn new(k: usize) -> Best {
        Best { k, kept: Vec::with_capacity(2 * k), floor: None }
    }

    fn admits(&self, score: f32) -> bool {
        self.floor.is_none_or(|f| score > f)
    }

    fn push(&mut self, s: Scored) {
        self.kept.push(s);
        if self.kept.len() >= 2 * self.k {
            self.cut();
        }
    }

    fn cut(&mut self) {
        if self.kept.len() > self.k {
            self.kept.select_nth_unstable_by(self.k - 1, better);
            self.kept.truncate(self.k);
            self.floor = self.kept.iter().map(|s| s.score).min_by(f32::total_cmp);
        }
    }

    /// Chunk ids and scores, best first; equal scores in chunk-id order, so results do not depend on segment layout.
    fn into_sorted(mut self) -> Vec<(u32, f32)> {
        self.cut();
        let mut out: Vec<(u32, f32)> = self.kept.iter().map(|s| (s.chunk, s.score)).collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rarer_and_denser_words_score_higher_and_changes_apply() {
        let dir = tempfile::tempdir().unwrap();
        let (index, generation) = TextIndex::open(dir.path()).unwrap();
        assert_eq!(generation, None);
        index
            .apply(
                &[
                    TextChange::Add(1, "The cat sat on the mat."),
                    TextChange::Add(2, "A dog chased the cat around the garden, the cat ran."),
                    TextChange::Add(3, "Kubernetes schedules pods onto GPU nodes."),
                ],
                1,
            )
            .unwrap();
        let cat = index.top("CATS", 10, None).unwrap();
        assert_eq!(cat.iter().map(|h| h.0).collect::<Vec<_>>(), [2, 1], "stemmed: cats finds cat");
        assert!(index.top("the on a", 10, None).unwrap().is_empty(), "stop words match nothing");
        assert_eq!(index.top("gpu nodes", 10, None).unwrap().iter().map(|h| h.0).collect::<Vec<_>>(), [3]);
        let only_1: ChunkSet = [1u32].into_iter().collect();
        assert_eq!(index.top("cat", 10, Some(&only_1)).unwrap().iter().map(|h| h.0).collect::<Vec<_>>(), [1]);
        index.apply(&[TextChange::Remove(3)], 2).unwrap();
        assert!(index.top("gpu", 10, None).unwrap().is_empty());
        drop(index);
        // The generation survives a reopen; a rebuild replaces everything.
        let (index, generation) = TextIndex::open(dir.path()).unwrap();
        assert_eq!((generation, index.len()), (Some(2), 2));
        assert_eq!(index.rebuild([(7, "gpu")].into_iter(), 3).unwrap(), 1);
        assert_eq!(index.top("gpu cat", 10, None).unwrap().iter().map(|h| h.0).collect::<Vec<_>>(), [7]);
    }

    /// Tantivy's own evaluation of the same words (a `BooleanQuery` of
    /// `Should` term queries, block-max WAND under `TopDocs`): what `top` must agree with.
    fn tantivy_top(index: &TextIndex, query: &str, k: usize) -> Vec<(u32, f32)> {
        use tantivy::collector::TopDocs;
        use tantivy::query::{BooleanQuery, Occur, Query, TermQuery};
        let clauses: Vec<(Occur, Box<dyn Query>)> = index
            .words(query)
            .unwrap()
            .into_iter()
            .map(|t| (Occur::Should, Box::new(TermQuery::new(t, IndexRecordOption::WithFreqs)) as Box<dyn Query>))
            .collect();
        let searcher = index.reader.searcher();
        let hits = searcher.search(&BooleanQuery::new(clauses), &TopDocs::with_limit(k)).unwrap();
        let mut out: Vec<(u32, f32)> = hits
            .into_iter()
            .map(|(score, at)| {
                let ids = searcher.segment_reader(at.segment_ord).fast_fields().u64("chunk").unwrap();
                (ids.first(at.doc_id).unwrap() as u32, score)
            })
            .collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        out
    }

    fn assert_same(ours: &[(u32, f32)], theirs: &[(u32, f32)], query: &str) {
        assert_eq!(ours.len(), theirs.len(), "{query:?}");
        for (a, b) in ours.iter().zip(theirs) {
            assert!((a.1 - b.1).abs() <= 1e-5 * b.1.abs().max(1.0), "{query:?}: {ours:?} vs {theirs:?}");
        }
        // The same chunks: compare as sets of ids above the last score (ties there may be cut either way).
        let last = theirs.last().map_or(0.0, |h| h.1);
        let above = |hits: &[(u32, f32)]| {
            let mut ids: Vec<u32> = hits.iter().filter(|h| h.1 > last + 1e-4).map(|h| h.0).collect();
            ids.sort_unstable();
            ids
        };
        assert_eq!(above(ours), above(theirs), "{query:?}");
    }

    #[test]
    fn scores_as_tantivys_own_query_across_segments_windows_and_deletes() {
        let words: Vec<String> = (0..400).map(|i| format!("w{i}x")).collect();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |m: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % m as u64) as usize
        };
        // Zipf-like: low word numbers are common, so lists range from a few documents to most of them.
        let mut text = |len: usize| -> String {
            (0..len)
                .map(|_| {
                    let bound = 1 + next(words.len());
                    words[next(bound)].as_str()
                })
                .collect::<Vec<_>>()
                .join(" ")
        };
        let dir = tempfile::tempdir().unwrap();
        let (index, _) = TextIndex::open(dir.path()).unwrap();
        let docs: Vec<String> = (0..12_000).map(|i| text(3 + i % 17)).collect();
        // Four commits (several segments), each past one window, then every 7th chunk removed.
        for (part, rows) in docs.chunks(3_000).enumerate() {
            let changes: Vec<TextChange> =
                rows.iter().enumerate().map(|(i, t)| TextChange::Add((part * 3_000 + i) as u32, t)).collect();
            index.apply(&changes, part as u64 + 1).unwrap();
        }
        let removed: Vec<TextChange> = (0..12_000).step_by(7).map(TextChange::Remove).collect();
        index.apply(&removed, 5).unwrap();
        assert!(index.reader.searcher().segment_readers().len() > 1, "several segments");
        let even: ChunkSet = (0..12_000u32).step_by(2).collect();
        for n in 0..40 {
            let query = text(1 + n % 15);
            for k in [1, 10, 30] {
                assert_same(&index.top(&query, k, None).unwrap(), &tantivy_top(&index, &query, k), &query);
            }
            // Filtered: tantivy's full ranking, kept to the allowed chunks.
            let mut theirs = tantivy_top(&index, &query, 12_000);
            theirs.retain(|h| even.contains(h.0));
            theirs.truncate(30);
            let ours = index.top(&query, 30, Some(&even)).unwrap();
            assert!(ours.iter().all(|h| h.0 % 2 == 0 && h.0 % 7 != 0));
            assert_same(&ours, &theirs, &query);
        }
    }
}
