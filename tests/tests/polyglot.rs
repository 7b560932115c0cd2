//! The Phi preset written in Rust, Python (componentize-py) and JavaScript
//! (jco, QuickJS) renders the same bytes for the same Workspaces, errors
//! included. Needs `cargo xtask plugins plugin-js plugin-py` (`cargo xtask test` runs them).

use kaito_tests::{kaito_with, plugin_dir, root};

/// Workspaces rendered by all three presets: every Phi example, a multi-node
/// vLLM fixture, a BYO fixture, and an unknown model name.
fn cases() -> Vec<Vec<String>> {
    let mut cases: Vec<Vec<String>> = std::fs::read_dir(root().join("examples/inference"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("kaito_workspace_phi"))
        .map(|p| vec![p.display().to_string()])
        .collect();
    cases.sort();
    assert_eq!(cases.len(), 7, "one example per Phi alias");
    let fixture = |f: &str| root().join("tests/fixtures").join(f).display().to_string();
    cases.push(vec![fixture("phi-4-a10-vllm.yaml")]);
    cases.push(vec![fixture("byo-workspace.yaml"), "--nodes".into(), fixture("byo-nodes.yaml")]);
    cases.push(vec![fixture("phi-4-a10-vllm.yaml"), "--max-nodes".into(), "1".into()]);
    cases
}

#[test]
fn rust_python_and_javascript_presets_render_identically() {
    let cache = tempfile::tempdir().unwrap();
    let provisioners = plugin_dir("plugins/dist");
    let presets = [
        ("rust", plugin_dir("presets-wasm/dist")),
        ("python", plugin_dir("plugins/polyglot/phi-py/dist")),
        ("javascript", plugin_dir("plugins/polyglot/phi-js/dist")),
    ];
    for case in cases() {
        let mut args = vec!["render", "-f"];
        args.extend(case.iter().map(String::as_str));
        let runs: Vec<_> = presets
            .iter()
            .map(|(lang, dir)| (lang, kaito_with(&args, &[dir.clone(), provisioners.clone()], cache.path())))
            .collect();
        let (_, rust) = &runs[0];
        assert!(rust.stderr.contains("error") || rust.code == 0, "{case:?}: {}", rust.stderr);
        for (lang, run) in &runs[1..] {
            assert_eq!(run.code, rust.code, "{lang} {case:?}: exit code; stderr {}", run.stderr);
            assert_eq!(run.stderr, rust.stderr, "{lang} {case:?}: stderr differs");
            assert!(
                run.stdout == rust.stdout,
                "{lang} {case:?}: stdout differs\n--- rust\n{}\n--- {lang}\n{}",
                rust.stdout,
                run.stdout
            );
        }
    }
}
