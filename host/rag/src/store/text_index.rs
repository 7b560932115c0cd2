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
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tantivy::collector::{FilterCollector, TopDocs};
use tantivy::query::{BooleanQuery, Occur, Query, TermQuery};
use tantivy::schema::{FAST, Field, INDEXED, IndexRecordOption, Schema, TextFieldIndexing, TextOptions};
use tantivy::tokenizer::{
    Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer, StopWordFilter, TextAnalyzer,
};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};

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

    /// The `k` chunks (among `allowed`) with the best BM25 score for `query`'s words, best first.
    pub fn top(&self, query: &str, k: usize, allowed: Option<&ChunkSet>) -> Result<Vec<(u32, f32)>> {
        if k == 0 {
            return Ok(Vec::new());
        }
        // The query's words, cut as the indexed text was, each an optional clause.
        let mut analyzer = self.index.tokenizer_for_field(self.text).map_err(tantivy_err)?;
        let mut stream = analyzer.token_stream(query);
        let mut words: Vec<String> = Vec::new();
        while let Some(token) = stream.next() {
            if !words.contains(&token.text) {
                words.push(token.text.clone());
            }
        }
        if words.is_empty() {
            return Ok(Vec::new());
        }
        let clauses: Vec<(Occur, Box<dyn Query>)> = words
            .iter()
            .map(|w| {
                let q = TermQuery::new(Term::from_field_text(self.text, w), IndexRecordOption::WithFreqs);
                (Occur::Should, Box::new(q) as Box<dyn Query>)
            })
            .collect();
        let query = BooleanQuery::new(clauses);
        let searcher = self.reader.searcher();
        let hits = match allowed {
            None => searcher.search(&query, &TopDocs::with_limit(k)).map_err(tantivy_err)?,
            Some(set) => {
                let set = Arc::new(set.clone());
                let keep = move |id: u64| u32::try_from(id).is_ok_and(|id| set.contains(id));
                let collector = FilterCollector::new("chunk".to_string(), keep, TopDocs::with_limit(k));
                searcher.search(&query, &collector).map_err(tantivy_err)?
            }
        };
        let mut out = Vec::with_capacity(hits.len());
        // The chunk id is read from its fast field (nothing is stored in tantivy); each segment's column is
        // opened once per query, not once per hit.
        let mut columns = HashMap::new();
        for (score, addr) in hits {
            let ids = match columns.entry(addr.segment_ord) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => {
                    e.insert(searcher.segment_reader(addr.segment_ord).fast_fields().u64("chunk").map_err(tantivy_err)?)
                }
            };
            if let Some(id) = ids.first(addr.doc_id) {
                out.push((id as u32, score));
            }
        }
        // Equal scores in id order, so results do not depend on segment layout.
        out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        Ok(out)
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
}
