//! Every Workspace under examples/ and tests/fixtures validates against the
//! generated CRD's openAPIV3Schema (structure and types; CEL is in cel.rs),
//! and the schema rejects what the API server would.

use kaito_crd::crd::workspace_schema;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn validator() -> jsonschema::Validator {
    jsonschema::validator_for(&workspace_schema()).expect("the CRD schema is valid JSON Schema")
}

fn workspaces() -> Vec<(PathBuf, Value)> {
    let mut out = Vec::new();
    for dir in ["examples/inference", "examples/byo", "examples/custom-template", "tests/fixtures"] {
        for e in std::fs::read_dir(root().join(dir)).unwrap() {
            let p = e.unwrap().path();
            // tests/fixtures/invalid/ holds Workspaces the API server must refuse.
            if p.is_dir() {
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap();
            if p.extension().is_some_and(|x| x == "yaml") && text.contains("kind: Workspace") {
                out.push((p, serde_yaml::from_str(&text).unwrap()));
            }
        }
    }
    out
}

#[test]
fn every_example_and_fixture_matches_the_schema() {
    let v = validator();
    let all = workspaces();
    assert!(all.len() > 25);
    for (path, ws) in all {
        let errors: Vec<String> = v.iter_errors(&ws).map(|e| format!("{} at {}", e, e.instance_path())).collect();
        assert!(errors.is_empty(), "{}: {errors:?}", path.display());
    }
}

#[test]
fn schema_rejects_wrong_types_bounds_and_missing_selector() {
    let v = validator();
    let seed = workspaces().into_iter().find(|(p, _)| p.ends_with("kaito_workspace_phi_3.5-instruct.yaml")).unwrap().1;
    let mut bad_count = seed.clone();
    bad_count["resource"]["count"] = json!(0);
    assert!(!v.is_valid(&bad_count), "count 0 accepted");
    let mut bad_type = seed.clone();
    bad_type["resource"]["instanceType"] = json!(42);
    assert!(!v.is_valid(&bad_type), "numeric instanceType accepted");
    let mut no_selector = seed.clone();
    no_selector["resource"].as_object_mut().unwrap().remove("labelSelector");
    assert!(!v.is_valid(&no_selector), "missing labelSelector accepted");
    let mut too_many = seed;
    too_many["inference"]["adapters"] =
        json!((0..11).map(|i| json!({"source": {"name": format!("a{i}")}})).collect::<Vec<_>>());
    assert!(!v.is_valid(&too_many), "11 adapters accepted");
}

#[test]
fn every_ragengine_example_matches_the_crd_and_passes_validation() {
    let crd = serde_json::to_value(kaito_crd::ragengine_crd()).unwrap();
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let v = jsonschema::validator_for(schema).expect("the RAGEngine schema is valid JSON Schema");
    let mut n = 0;
    for e in std::fs::read_dir(root().join("examples/RAG")).unwrap() {
        let p = e.unwrap().path();
        let doc: Value = serde_yaml::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        let errors: Vec<String> = v.iter_errors(&doc).map(|e| format!("{} at {}", e, e.instance_path())).collect();
        assert!(errors.is_empty(), "{}: {errors:?}", p.display());
        let rag: kaito_crd::RAGEngine = serde_json::from_value(doc).unwrap();
        rag.spec.validate().unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        n += 1;
    }
    assert!(n >= 3);
    let mut bad = json!({"apiVersion": "kaito.sh/v1beta1", "kind": "RAGEngine", "metadata": {"name": "x"},
        "spec": {"embedding": {"local": {"modelID": "m"}}, "inferenceService": {"url": "u", "contextWindowSize": 0}}});
    assert!(!v.is_valid(&bad), "contextWindowSize 0 accepted");
    bad["spec"]["inferenceService"]["contextWindowSize"] = json!("big");
    assert!(!v.is_valid(&bad), "a string contextWindowSize accepted");
}
