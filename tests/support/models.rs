//! Where the prepared test models, the torch venv's Python and the Python
//! reference scripts live; shared by the libtorch crates' tests through `#[path]`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// `$KAITO_MODELS_DIR/<name>` (default `~/.cache/kaito/models`), checked to be prepared.
pub fn model(name: &str) -> PathBuf {
    let base = std::env::var_os("KAITO_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/kaito/models"));
    let dir = base.join(name);
    assert!(dir.join(".complete").exists(), "{} is missing: run `cargo xtask models`", dir.display());
    dir
}

/// The Python with torch, transformers and sentence-transformers (`$KAITO_PYTHON`, else the venv `cargo xtask models` makes).
pub fn python() -> PathBuf {
    let p = std::env::var_os("KAITO_PYTHON").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/kaito/torch-venv/bin/python")
    });
    assert!(p.exists(), "{} is missing: run `cargo xtask models`", p.display());
    p
}

/// A script under tests/python.
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/python").join(name)
}
