//! Structured output: a grammar (a JSON schema) turned into a per-token mask by llguidance, the constrained-decoding
//! library vLLM and SGLang use. The HTTP layer compiles a request's grammar into a [`Constraint`]; the engine masks
//! the logits with it before sampling and commits the chosen token after, so constrained and free sequences decode in
//! the same batch.

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;

/// The tokenizer as llguidance sees it: every token's bytes in a trie, and the tokenizer for text it must tokenize.
struct Tokens {
    trie: TokTrie,
    tokenizer: tokenizers::Tokenizer,
}

impl TokenizerEnv for Tokens {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        // The trie takes bytes that are not UTF-8 (a token can be part of a character); the tokenizer the rest.
        self.trie.tokenize_with_greedy_fallback(s, |text| {
            self.tokenizer.encode(text, false).map(|e| e.get_ids().to_vec()).unwrap_or_default()
        })
    }
}

/// Compiles grammars for one tokenizer (built once when the model loads).
pub struct Grammars {
    factory: ParserFactory,
}

/// How JSON is laid out under a schema: one space after `,` and `:` and no other whitespace, as Python's
/// `json.dumps` writes it. Free whitespace lets a sampled model pad forever; a fixed layout costs nothing.
fn layout() -> Value {
    json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "})
}

impl Grammars {
    /// The grammar compiler for the tokenizer in `dir/tokenizer.json`; `stop_ids` end a grammar as EOS does.
    pub fn load(dir: &Path, tokenizer: &tokenizers::Tokenizer, stop_ids: &[u32]) -> anyhow::Result<Grammars> {
        let path = dir.join("tokenizer.json");
        let mut json: Value = serde_json::from_slice(&std::fs::read(&path)?)?;
        // A decoder sequence with ByteLevel in it (SmolLM2 lists ByteFallback first) spells its vocabulary in
        // byte-level characters; llguidance would read it by the first decoder it knows, as sentencepiece text.
        let decoders = json["decoder"]["decoders"].as_array().cloned().unwrap_or_default();
        if let Some(byte_level) = decoders.into_iter().find(|d| d["type"] == "ByteLevel") {
            json["decoder"] = byte_level;
        }
        let mut words = llguidance::token_bytes_from_tokenizer_json(&json)
            .map_err(|e| anyhow::anyhow!("{}: reading token bytes: {e}", path.display()))?;
        let vocab = words.len().max(tokenizer.get_vocab_size(true));
        // Ids no token uses (gaps in a vocabulary) become special tokens no grammar produces.
        for (id, w) in words.iter_mut().enumerate() {
            if w.is_empty() {
                *w = [&[TokTrie::SPECIAL_TOKEN_MARKER][..], format!("<[{id}]>").as_bytes()].concat();
            }
        }
        words.resize_with(vocab, Vec::new);
        let eos = *stop_ids.first().ok_or_else(|| anyhow::anyhow!("no stop token"))?;
        let info = TokRxInfo::new(vocab as u32, eos);
        let trie = TokTrie::from(&info, &words).with_eos_tokens(stop_ids);
        let env: TokEnv = Arc::new(Tokens { trie, tokenizer: tokenizer.clone() });
        let mut factory = ParserFactory::new_simple(&env)?;
        factory.quiet();
        Ok(Grammars { factory })
    }

    /// A constraint for output that is JSON valid under `schema` (`{"type": "object"}` for OpenAI's
    /// `json_object`); `Err` says why the schema cannot be compiled.
    pub fn json(&self, schema: &Value) -> Result<Constraint, String> {
        let mut schema = schema.clone();
        if schema.is_boolean() {
        } else if let Some(o) = schema.as_object_mut() {
            o.entry("x-guidance").or_insert_with(layout);
        } else {
            return Err("a JSON schema is an object".into());
        }
        let parser =
            self.factory.create_parser(TopLevelGrammar::from_json_schema(schema)).map_err(|e| e.to_string())?;
        let matcher = Matcher::new(Ok(parser));
        match matcher.get_error() {
            Some(e) => Err(e),
            None => Ok(Constraint { matcher }),
        }
    }
}

/// One sequence's grammar state.
pub struct Constraint {
    matcher: Matcher,
}

impl Constraint {
    /// An independent copy in the same state (one per choice of `n`).
    pub fn fork(&self) -> Constraint {
        Constraint { matcher: self.matcher.deep_clone() }
    }

    /// Sets the logits of tokens the grammar forbids next to -inf (ids past the tokenizer, too).
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<(), String> {
        let allowed = self.matcher.compute_mask_or_eos().map_err(|e| e.to_string())?;
        for (id, l) in logits.iter_mut().enumerate() {
            if id >= allowed.len() || !allowed.is_allowed(id as TokenId) {
                *l = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    /// Advances past `token`, the one sampled from the masked logits.
    pub fn commit(&mut self, token: u32) -> Result<(), String> {
        self.matcher.consume_token(token).map_err(|e| e.to_string())
    }

    /// The grammar is complete: nothing but EOS may follow.
    pub fn done(&self) -> bool {
        self.matcher.is_stopped()
    }
}
