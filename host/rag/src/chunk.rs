//! Splitting documents into chunks: sentences packed up to a token budget
//! with overlap, or, for code, top-level blocks packed up to the same budget.

use std::path::Path;
use std::sync::LazyLock;

/// Counts tokens the way the embedding model will see them, or words when no
/// tokenizer is available (then chunk sizes are approximate, and the service
/// says so at start).
pub enum TokenCounter {
    /// A Hugging Face `tokenizer.json`.
    Tokenizer(Box<tokenizers::Tokenizer>),
    /// Whitespace-separated words.
    Words,
}

impl TokenCounter {
    /// Loads `tokenizer.json` from `dir`.
    pub fn from_dir(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join("tokenizer.json");
        let mut tok =
            tokenizers::Tokenizer::from_file(&path).map_err(|e| anyhow::anyhow!("loading {}: {e}", path.display()))?;
        // Sentence-transformers tokenizers pad and truncate to the model's
        // length; counting needs the plain length.
        tok.with_padding(None);
        tok.with_truncation(None).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(TokenCounter::Tokenizer(Box::new(tok)))
    }

    /// Tokens in `text`, special tokens excluded.
    pub fn count(&self, text: &str) -> usize {
        match self {
            TokenCounter::Tokenizer(t) => t.encode_fast(text, false).map(|e| e.len()).unwrap_or_else(|_| words(text)),
            TokenCounter::Words => words(text),
        }
    }

    /// What counts, for logs and errors.
    pub fn describe(&self) -> &'static str {
        match self {
            TokenCounter::Tokenizer(_) => "tokenizer tokens",
            TokenCounter::Words => "words (no tokenizer: chunk sizes are approximate)",
        }
    }
}

fn words(text: &str) -> usize {
    text.split_whitespace().count()
}

/// Chunk size and overlap, in tokens.
#[derive(Debug, Clone, Copy)]
pub struct ChunkParams {
    /// Largest chunk.
    pub size: usize,
    /// Tokens repeated from the end of one chunk at the start of the next.
    pub overlap: usize,
}

/// Languages the code splitter knows the top-level block openers of.
pub const CODE_LANGUAGES: &[&str] =
    &["python", "rust", "go", "javascript", "typescript", "java", "c", "cpp", "csharp", "markdown"];

/// Splits prose into chunks of at most `params.size` tokens.
pub fn split_text(text: &str, params: ChunkParams, counter: &TokenCounter) -> Vec<String> {
    let mut pieces: Vec<(String, usize)> = Vec::new();
    for sentence in sentences(text) {
        let n = counter.count(&sentence);
        if n <= params.size {
            pieces.push((sentence, n));
        } else {
            // A sentence longer than a chunk is cut at word boundaries.
            pieces.extend(split_words(&sentence, params.size, counter));
        }
    }
    pack(pieces, params, " ")
}

/// Splits source code at top-level blocks, packing them up to `params.size`
/// tokens; `language` must be one of [`CODE_LANGUAGES`].
pub fn split_code(text: &str, language: &str, params: ChunkParams, counter: &TokenCounter) -> Vec<String> {
    let mut blocks: Vec<String> = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        if starts_block(line, language) && !current.trim().is_empty() {
            blocks.push(std::mem::take(&mut current));
        }
        current.push_str(line);
        current.push('\n');
    }
    if !current.trim().is_empty() {
        blocks.push(current);
    }
    let mut pieces = Vec::new();
    for block in blocks {
        let n = counter.count(&block);
        if n <= params.size {
            pieces.push((block, n));
        } else {
            // An oversized block is cut between lines.
            let lines: Vec<(String, usize)> =
                block.lines().map(|l| (format!("{l}\n"), counter.count(l).max(1))).collect();
            pieces.extend(pack(lines, ChunkParams { size: params.size, overlap: 0 }, "").into_iter().map(|chunk| {
                let n = counter.count(&chunk);
                (chunk, n)
            }));
        }
    }
    pack(pieces, ChunkParams { size: params.size, overlap: 0 }, "")
        .into_iter()
        .map(|c| c.trim_end().to_string())
        .filter(|c| !c.is_empty())
        .collect()
}

fn starts_block(line: &str, language: &str) -> bool {
    if line.starts_with(char::is_whitespace) || line.is_empty() {
        return false;
    }
    let openers: &[&str] = match language {
        "python" => &["def ", "class ", "async def ", "@"],
        "rust" => &["fn ", "pub ", "impl", "struct ", "enum ", "trait ", "mod ", "#[", "const ", "static ", "use "],
        "go" => &["func ", "type ", "var ", "const ", "import "],
        "javascript" | "typescript" => {
            &["function ", "class ", "export ", "const ", "let ", "var ", "async function ", "interface ", "type "]
        }
        "java" | "csharp" => {
            &["public ", "private ", "protected ", "class ", "interface ", "enum ", "static ", "@", "["]
        }
        "c" | "cpp" => {
            &["#include", "#define", "static ", "void ", "int ", "struct ", "class ", "namespace ", "template"]
        }
        "markdown" => &["#"],
        _ => &[],
    };
    openers.iter().any(|o| line.starts_with(o))
}

/// Greedy packing of pieces into chunks, carrying trailing pieces worth up to
/// `overlap` tokens into the next chunk.
fn pack(pieces: Vec<(String, usize)>, params: ChunkParams, sep: &str) -> Vec<String> {
    let mut chunks = Vec::new();
    let mut window: Vec<(String, usize)> = Vec::new();
    let mut tokens = 0;
    for (piece, n) in pieces {
        if tokens + n > params.size && !window.is_empty() {
            chunks.push(join(&window, sep));
            // Keep the tail that fits in the overlap, but never the whole
            // window (the chunk would repeat forever).
            let mut kept = 0;
            let mut start = window.len();
            while start > 1
                && kept + window[start - 1].1 <= params.overlap
                && kept + window[start - 1].1 + n <= params.size
            {
                start -= 1;
                kept += window[start].1;
            }
            window.drain(..start);
            tokens = kept;
        }
        tokens += n;
        window.push((piece, n));
    }
    if !window.is_empty() {
        chunks.push(join(&window, sep));
    }
    chunks
}

fn join(window: &[(String, usize)], sep: &str) -> String {
    window.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>().join(sep)
}

fn split_words(sentence: &str, size: usize, counter: &TokenCounter) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut tokens = 0;
    for word in sentence.split_whitespace() {
        let n = counter.count(word).max(1);
        if tokens + n > size && !current.is_empty() {
            out.push((std::mem::take(&mut current), tokens));
            tokens = 0;
        }
        if !current.is_empty() {
            current.push(' ');
        }
        current.push_str(word);
        tokens += n;
    }
    if !current.is_empty() {
        out.push((current, tokens));
    }
    out
}

static SENTENCE_END: LazyLock<regex::Regex> =
    LazyLock::new(|| regex::Regex::new(r#"[.!?。！？]["')\]]*\s+|\n\s*\n"#).expect("sentence regex"));

/// Sentences and paragraphs of `text`, whitespace-trimmed, none empty.
pub fn sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut start = 0;
    for m in SENTENCE_END.find_iter(text) {
        let s = text[start..m.end()].trim();
        if !s.is_empty() {
            out.push(s.to_string());
        }
        start = m.end();
    }
    let rest = text[start..].trim();
    if !rest.is_empty() {
        out.push(rest.to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_split_at_terminators_and_paragraphs() {
        let s = sentences("One. Two? \"Three!\" Four\n\nFive");
        assert_eq!(s, ["One.", "Two?", "\"Three!\"", "Four", "Five"]);
    }

    #[test]
    fn chunks_respect_size_and_overlap() {
        let text = (0..40).map(|i| format!("Sentence number {i} has six words.")).collect::<Vec<_>>().join(" ");
        let params = ChunkParams { size: 20, overlap: 6 };
        let chunks = split_text(&text, params, &TokenCounter::Words);
        assert!(chunks.len() > 10);
        for c in &chunks {
            assert!(words(c) <= 20, "{c}");
        }
        // Each chunk after the first starts with the last sentence of the previous one.
        for pair in chunks.windows(2) {
            let last = sentences(&pair[0]).pop().unwrap();
            assert!(pair[1].starts_with(&last), "{pair:?}");
        }
        // Nothing is lost.
        for i in 0..40 {
            assert!(chunks.iter().any(|c| c.contains(&format!("number {i} "))));
        }
    }

    #[test]
    fn long_sentences_are_cut_between_words() {
        let text = "word ".repeat(55);
        let chunks = split_text(&text, ChunkParams { size: 20, overlap: 0 }, &TokenCounter::Words);
        assert_eq!(chunks.iter().map(|c| words(c)).collect::<Vec<_>>(), [20, 20, 15]);
    }

    #[test]
    fn code_splits_at_top_level_definitions() {
        let code = "import os\n\ndef a():\n    return 1\n\ndef b():\n    return 2\n\nclass C:\n    pass\n";
        let chunks = split_code(code, "python", ChunkParams { size: 6, overlap: 0 }, &TokenCounter::Words);
        assert_eq!(chunks.len(), 3, "{chunks:?}");
        assert!(chunks[1].starts_with("def b():"));
        assert!(chunks[2].starts_with("class C:"));
        let whole = split_code(code, "python", ChunkParams { size: 100, overlap: 0 }, &TokenCounter::Words);
        assert_eq!(whole.len(), 1);
    }
}
