//! Golden tests of `kaito render`: the seed Workspace, bring-your-own nodes,
//! a multi-node vLLM plan, and the error cases with their messages.

use kaito_tests::{Run, golden, kaito, root};
use std::path::{Path, PathBuf};

const SEED: &str = "examples/inference/kaito_workspace_phi_3.5-instruct.yaml";

fn path(rel: &str) -> String {
    root().join(rel).display().to_string()
}

fn render(args: &[&str]) -> Run {
    let cache = tempfile::tempdir().unwrap();
    let mut all = vec!["render"];
    all.extend_from_slice(args);
    kaito(&all, cache.path())
}

/// The seed with `from` replaced by `to`, written to a temporary file.
fn variant(dir: &Path, name: &str, from: &str, to: &str) -> PathBuf {
    let seed = std::fs::read_to_string(root().join(SEED)).unwrap();
    assert!(seed.contains(from), "seed has no {from:?}");
    let p = dir.join(name);
    std::fs::write(&p, seed.replace(from, to)).unwrap();
    p
}

/// Error output with the temporary directory masked, for a stable golden file.
fn error_text(run: &Run, dir: &Path) -> String {
    assert_eq!(run.code, 1, "expected failure, got stdout:\n{}", run.stdout);
    assert!(run.stdout.is_empty(), "nothing on stdout when failing");
    run.stderr.replace(&dir.display().to_string(), "$TMP")
}

#[test]
fn seed_phi_3_5_on_nc24ads_a100_v4() {
    let run = render(&["-f", &path(SEED)]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stderr, "");
    golden("phi-3.5-nc24ads-a100.yaml", &run.stdout);
}

#[test]
fn byo_nodes_from_file() {
    let run =
        render(&["-f", &path("tests/fixtures/byo-workspace.yaml"), "--nodes", &path("tests/fixtures/byo-nodes.yaml")]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!run.stdout.contains("NodeClaim"), "BYO creates no NodeClaims");
    golden("byo-phi-3-mini.yaml", &run.stdout);
    golden("byo-phi-3-mini.stderr", &run.stderr);
}

#[test]
fn phi_4_on_a10_needs_two_nodes_with_vllm_pipeline_parallelism() {
    let run = render(&["-f", &path("tests/fixtures/phi-4-a10-vllm.yaml")]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout.matches("kind: NodeClaim").count(), 2);
    assert!(run.stdout.contains("--pipeline-parallel-size=2"));
    golden("phi-4-nv36ads-a10-vllm.yaml", &run.stdout);
}

#[test]
fn every_example_renders() {
    let mut seen = 0;
    for dir in ["examples/inference"] {
        for entry in std::fs::read_dir(root().join(dir)).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().is_some_and(|x| x == "yaml") {
                let run = render(&["-f", &p.display().to_string()]);
                assert_eq!(run.code, 0, "{}: {}", p.display(), run.stderr);
                assert!(run.stdout.contains("kind: StatefulSet"), "{}", p.display());
                seen += 1;
            }
        }
    }
    assert!(seen > 0);
}

#[test]
fn error_unknown_preset_lists_close_names() {
    let dir = tempfile::tempdir().unwrap();
    let f = variant(dir.path(), "ws.yaml", "name: phi-3.5-mini-instruct", "name: phi-3.5-mini");
    let run = render(&["-f", &f.display().to_string()]);
    golden("error-unknown-preset.stderr", &error_text(&run, dir.path()));
}

#[test]
fn error_unknown_instance_type_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let f = variant(dir.path(), "ws.yaml", "Standard_NC24ads_A100_v4", "Standard_NC24ads_A100");
    let run = render(&["-f", &f.display().to_string()]);
    golden("error-unknown-instance-type.stderr", &error_text(&run, dir.path()));
}

#[test]
fn error_model_too_big_for_instance_type_gives_numbers() {
    let run = render(&["-f", &path("tests/fixtures/phi-4-a10-vllm.yaml"), "--max-nodes", "1"]);
    let dir = tempfile::tempdir().unwrap();
    golden("error-does-not-fit.stderr", &error_text(&run, dir.path()));
}

#[test]
fn error_tch_runtime_cannot_span_gpus() {
    let dir = tempfile::tempdir().unwrap();
    let src = std::fs::read_to_string(root().join("tests/fixtures/phi-4-a10-vllm.yaml")).unwrap();
    let f = dir.path().join("ws.yaml");
    std::fs::write(&f, src.replace("kaito.sh/runtime: vllm", "kaito.sh/runtime: tch")).unwrap();
    let run = render(&["-f", &f.display().to_string()]);
    golden("error-tch-multi-gpu.stderr", &error_text(&run, dir.path()));
}

#[test]
fn error_missing_label_selector() {
    let dir = tempfile::tempdir().unwrap();
    let f = variant(dir.path(), "ws.yaml", "  labelSelector:\n    matchLabels:\n      apps: phi-3-5\n", "");
    let run = render(&["-f", &f.display().to_string()]);
    golden("error-missing-label-selector.stderr", &error_text(&run, dir.path()));
}

#[test]
fn error_spec_wrapper_and_unknown_field() {
    let dir = tempfile::tempdir().unwrap();
    let f = variant(dir.path(), "ws.yaml", "    name: phi-3.5-mini-instruct", "    nmae: phi-3.5-mini-instruct");
    let run = render(&["-f", &f.display().to_string()]);
    golden("error-unknown-field.stderr", &error_text(&run, dir.path()));
}

#[test]
fn error_byo_without_matching_ready_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let src = std::fs::read_to_string(root().join("tests/fixtures/byo-workspace.yaml")).unwrap();
    let f = dir.path().join("ws.yaml");
    std::fs::write(&f, src.replace("apps: byo-phi", "apps: nowhere")).unwrap();
    let run = render(&["-f", &f.display().to_string(), "--nodes", &path("tests/fixtures/byo-nodes.yaml")]);
    golden("error-byo-no-nodes.stderr", &error_text(&run, dir.path()));
}
