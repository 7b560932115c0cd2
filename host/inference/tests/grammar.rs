//! Structured output's token mask on SmolLM2's real tokenizer: a schema's documents pass token by token, anything
//! else is masked, and a finished document leaves only the stop token.

mod common;

use kaito_inference::grammar::{Constraint, Grammars};
use serde_json::json;

fn grammars() -> (Grammars, tokenizers::Tokenizer) {
    let dir = common::model("smollm2-135m-instruct");
    let tok = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    (Grammars::load(&dir, &tok, &[2]).unwrap(), tok)
}

/// Whether every token of `text` is allowed in turn (each committed).
fn allowed_all(c: &mut Constraint, tok: &tokenizers::Tokenizer, text: &str) -> bool {
    let vocab = tok.get_vocab_size(true);
    for id in tok.encode(text, false).unwrap().get_ids() {
        let mut logits = vec![0.0f32; vocab];
        c.mask(&mut logits).unwrap();
        if logits[*id as usize] == f32::NEG_INFINITY {
            return false;
        }
        c.commit(*id).unwrap();
    }
    true
}

#[test]
fn a_schema_admits_its_documents_and_refuses_others() {
    let (g, tok) = grammars();
    let schema = json!({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
                        "additionalProperties": false});
    let mut c = g.json(&schema).unwrap();
    assert!(allowed_all(&mut c, &tok, r#"{"n": 42}"#));
    let mut logits = vec![0.0f32; tok.get_vocab_size(true)];
    c.mask(&mut logits).unwrap();
    assert!(logits[2].is_finite(), "the stop token ends a complete document");
    assert_eq!(logits.iter().filter(|l| l.is_finite()).count(), 1, "and nothing else may follow");
    let mut c = g.json(&schema).unwrap();
    assert!(!allowed_all(&mut c, &tok, r#"{"m": 1}"#), "an unknown key is refused");
    let mut c = g.json(&schema).unwrap();
    assert!(!allowed_all(&mut c, &tok, r#"{"n":42}"#), "the layout is fixed: one space after the colon");
    let list = json!({"type": "array", "items": {"type": "string", "maxLength": 3}});
    let mut c = g.json(&list).unwrap();
    assert!(allowed_all(&mut c, &tok, r#"["a b", "ü€"]"#), "spaces and multi-byte characters are bytes like others");
    let mut c = g.json(&list).unwrap();
    assert!(!allowed_all(&mut c, &tok, r#"["abcd"]"#), "maxLength holds");
    let mut forked = g.json(&schema).unwrap();
    assert!(allowed_all(&mut forked, &tok, r#"{"n"#));
    let mut other = forked.fork();
    assert!(allowed_all(&mut forked, &tok, r#"": 1}"#));
    assert!(allowed_all(&mut other, &tok, r#"": 2}"#), "a fork goes on from the same state, on its own");
}

#[test]
fn a_bad_schema_is_an_error_not_a_panic() {
    let (g, _) = grammars();
    assert!(g.json(&json!("object")).is_err());
    assert!(g.json(&json!({"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}})).is_err());
}
