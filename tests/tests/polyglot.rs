//! The Phi preset written in Rust, Python (componentize-py) and JavaScript
//! (jco, QuickJS) renders the same bytes for the same Workspaces, errors
//! included; the Python port built on contract 0.1.0 does too, through the host's conversions. Needs `cargo xtask plugins plugin-js plugin-py` (`cargo xtask test` runs them).

use kaito_tests::{kaito_with, plugin_dir, root};

/// Workspaces rendered by all three presets: every Phi example (adapters included), a multi-node
/// vLLM fixture, a BYO fixture, adapters refused on vLLM, and an unknown model name.
fn cases() -> Vec<Vec<String>> {
    let mut cases: Vec<Vec<String>> = std::fs::read_dir(root().join("examples/inference"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("kaito_workspace_phi"))
        .map(|p| vec![p.display().to_string()])
        .collect();
    cases.sort();
    assert_eq!(cases.len(), 8, "one example per Phi alias, and KAITO's adapter example");
    let fixture = |f: &str| root().join("tests/fixtures").join(f).display().to_string();
    cases.push(vec![fixture("invalid-at-reconcile/adapters-on-vllm.yaml")]);
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
        // The same Python source built on contract 0.1.0: the host converts it, and it renders the same bytes.
        ("python on contract 0.1.0", plugin_dir("plugins/polyglot/phi-py/dist-v0.1.0")),
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

/// Tuning Workspaces, planned by the `tune` export of contract 0.2.0: the fine-tuning examples and the refusals
/// (QLoRA, a model too large for the GPU) give the same bytes from all three ports; the 0.1.0 build
/// has no tuning plan and says so, naming the field.
#[test]
fn rust_python_and_javascript_presets_plan_tuning_identically() {
    let cache = tempfile::tempdir().unwrap();
    let provisioners = plugin_dir("plugins/dist");
    let mut cases: Vec<String> =
        ["kaito_workspace_tuning_phi_3.yaml", "kaito_workspace_tuning_phi_3_with_pvc_volume.yaml"]
            .iter()
            .map(|f| root().join("examples/fine-tuning").join(f).display().to_string())
            .collect();
    cases.push(root().join("tests/fixtures/tuning-phi-3.yaml").display().to_string());
    for f in ["lora-parquet-and-jsonl.yaml", "lora-medium-on-a10.yaml", "lora-image-in-image-out.yaml"] {
        cases.push(root().join("tests/fixtures/tuning").join(f).display().to_string());
    }
    let ports = [
        ("rust", plugin_dir("presets-wasm/dist")),
        ("python", plugin_dir("plugins/polyglot/phi-py/dist")),
        ("javascript", plugin_dir("plugins/polyglot/phi-js/dist")),
    ];
    let mut planned = 0;
    for case in &cases {
        let args = ["render", "-f", case.as_str()];
        let runs: Vec<_> = ports
            .iter()
            .map(|(lang, dir)| (lang, kaito_with(&args, &[dir.clone(), provisioners.clone()], cache.path())))
            .collect();
        let (_, rust) = &runs[0];
        if rust.code == 0 {
            assert!(rust.stdout.contains("kind: Job"), "{case}: {}", rust.stdout);
            planned += 1;
        }
        for (lang, run) in &runs[1..] {
            assert_eq!((run.code, &run.stderr), (rust.code, &rust.stderr), "{lang} {case}");
            assert!(
                run.stdout == rust.stdout,
                "{lang} {case}: stdout differs\n--- rust\n{}\n--- {lang}\n{}",
                rust.stdout,
                run.stdout
            );
        }
        let old =
            kaito_with(&args, &[plugin_dir("plugins/polyglot/phi-py/dist-v0.1.0"), provisioners.clone()], cache.path());
        assert_eq!(old.code, 1, "{case}: {}", old.stdout);
        assert!(
            old.stderr.contains("tuning.preset.name")
                && old.stderr.contains("contract 0.1.0, which has no tuning plan"),
            "{}",
            old.stderr
        );
    }
    assert_eq!(planned, 4, "the two examples, the two-dataset and the image-to-image fixtures plan a Job");
}

/// The old-contract fixture really is a 0.1.0 component, and the shipped plugins are on 0.2.0.
#[test]
fn the_fixture_is_on_contract_0_1_0_and_shipped_plugins_on_0_2_0() {
    let cache = tempfile::tempdir().unwrap();
    let list = |dir: &str| kaito_with(&["plugins", "list"], &[plugin_dir(dir)], cache.path());
    let old = list("plugins/polyglot/phi-py/dist-v0.1.0");
    assert!(old.stdout.contains("preset-phi 0.1.0 (preset plugin, kaito:plugin@0.1.0)"), "{}", old.stdout);
    for dir in ["presets-wasm/dist", "plugins/dist", "plugins/polyglot/phi-py/dist", "plugins/polyglot/phi-js/dist"] {
        let run = list(dir);
        assert!(run.code == 0 && !run.stdout.is_empty(), "{dir}: {}", run.stderr);
        let heads: Vec<&str> = run.stdout.lines().filter(|l| l.contains(" plugin, kaito:plugin@")).collect();
        assert!(
            !heads.is_empty() && heads.iter().all(|l| l.ends_with("kaito:plugin@0.2.0)")),
            "{dir}:\n{}",
            run.stdout
        );
    }
}
