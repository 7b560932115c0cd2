//! The CRD's CEL rules, evaluated client-side with kube's CEL validator: every
//! example passes, and each webhook rule rejects what KAITO's webhook rejects.

use kaito_crd::crd::{workspace_schema, workspace_v1alpha1_schema};
use kube::core::cel::Validator;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn yaml(path: &Path) -> Value {
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn check(object: &Value, old: Option<&Value>) -> Result<(), String> {
    // Each served version has its own schema: v1alpha1 adds KAITO's v1alpha1-only rules.
    let schema =
        if object["apiVersion"] == "kaito.sh/v1alpha1" { workspace_v1alpha1_schema() } else { workspace_schema() };
    Validator::new().validate(&schema, object, old).map_err(|e| format!("{e:?}"))
}

fn seed() -> Value {
    yaml(&root().join("examples/inference/kaito_workspace_phi_3.5-instruct.yaml"))
}

fn rejected(object: &Value, old: Option<&Value>, message: &str) {
    let err = check(object, old).expect_err("rule should reject");
    assert!(err.contains(message), "expected {message:?} in {err}");
}

#[test]
fn every_example_and_fixture_passes_the_rules() {
    let mut files: Vec<PathBuf> = Vec::new();
    for dir in ["examples/inference", "examples/byo", "examples/custom-template", "tests/fixtures"] {
        for e in std::fs::read_dir(root().join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "yaml")
                && std::fs::read_to_string(&p).unwrap().contains("kind: Workspace")
            {
                files.push(p);
            }
        }
    }
    assert!(files.len() > 25);
    for f in files {
        let ws = yaml(&f);
        check(&ws, None).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        check(&ws, Some(&ws)).unwrap_or_else(|e| panic!("{} (update to itself): {e}", f.display()));
    }
}

#[test]
fn exactly_one_of_inference_and_tuning() {
    let mut both = seed();
    both["tuning"] = json!({"method": "lora"});
    rejected(&both, None, "set exactly one of inference or tuning");
    let mut neither = seed();
    neither.as_object_mut().unwrap().remove("inference");
    rejected(&neither, None, "set exactly one of inference or tuning");
}

#[test]
fn only_reserved_labels_are_rejected() {
    let mut ws = seed();
    ws["resource"]["labelSelector"]["matchLabels"] = json!({"kaito.sh/workspace": "x", "karpenter.kaito.sh/pool": "y"});
    rejected(&ws, None, "needs a label that is not reserved");
}

#[test]
fn preset_and_template_are_exclusive() {
    let mut ws = seed();
    ws["inference"]["template"] = json!({"spec": {"containers": []}});
    rejected(&ws, None, "set inference.preset or inference.template, not both");
}

#[test]
fn adapter_names_are_unique() {
    let mut ws = seed();
    let adapter = json!({"source": {"name": "a", "image": "example.com/a:1"}});
    ws["inference"]["adapters"] = json!([adapter.clone(), adapter]);
    rejected(&ws, None, "inference.adapters names must be unique");
}

#[test]
fn immutable_fields_cannot_change() {
    let old = seed();
    let mut new = old.clone();
    new["resource"]["instanceType"] = json!("Standard_NC48ads_A100_v4");
    rejected(&new, Some(&old), "resource.instanceType is immutable");
    let mut new = old.clone();
    new["inference"]["preset"]["name"] = json!("phi-4");
    rejected(&new, Some(&old), "inference.preset.name is immutable");
    let mut new = old.clone();
    new["resource"]["labelSelector"]["matchLabels"]["apps"] = json!("other");
    rejected(&new, Some(&old), "resource.labelSelector is immutable");
    let mut new = old.clone();
    new["metadata"]["annotations"] = json!({"kaito.sh/runtime": "vllm"});
    check(&new, Some(&old)).unwrap();
}

#[test]
fn ragengine_examples_pass_and_one_embedding_source_is_enforced() {
    let crd = serde_json::to_value(kaito_crd::ragengine_crd()).unwrap();
    let schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone();
    let check = |o: &Value| Validator::new().validate(&schema, o, None).map_err(|e| format!("{e:?}"));
    let mut n = 0;
    for e in std::fs::read_dir(root().join("examples/RAG")).unwrap() {
        let rag = yaml(&e.unwrap().path());
        check(&rag).unwrap_or_else(|e| panic!("{e}"));
        n += 1;
    }
    assert!(n >= 3);
    let mut both = yaml(&root().join("examples/RAG/kaito_ragengine_phi_3.yaml"));
    both["spec"]["embedding"]["remote"] = json!({"url": "http://e"});
    let err = check(&both).expect_err("both embedding sources accepted");
    assert!(err.contains("set exactly one of embedding.local and embedding.remote"), "{err}");
    let mut neither = both.clone();
    neither["spec"]["embedding"] = json!({});
    assert!(check(&neither).is_err(), "no embedding source accepted");
}

/// The invalid fixtures the end-to-end test applies to the real API server are refused here too, with the same
/// message: the client-side evaluation agrees with the server.
#[test]
fn invalid_fixtures_are_rejected_client_side_too() {
    let dir = root().join("tests/fixtures/invalid");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let header = |key: &str| text.lines().find_map(|l| l.strip_prefix(&format!("# {key}: ")).map(str::to_string));
        let expected = header("rejected").expect("a `# rejected:` line");
        if header("schema-only").is_some() {
            // The OpenAPI part of the schema (maxItems, ...), which only the API server evaluates.
            continue;
        }
        let object: Value = serde_yaml::from_str(&text).unwrap();
        let old = header("update-of").map(|base| yaml(&root().join(base)));
        let err = check(&object, old.as_ref()).expect_err(&format!("{} should be rejected", path.display()));
        assert!(err.contains(&expected), "{}: expected {expected:?} in {err}", path.display());
        n += 1;
    }
    assert!(n >= 9);
}

fn inferenceset_check(object: &Value, old: Option<&Value>) -> Result<(), String> {
    Validator::new()
        .validate(&kaito_crd::inferenceset::inferenceset_schema(), object, old)
        .map_err(|e| format!("{e:?}"))
}

#[test]
fn inferenceset_examples_pass_and_kaito_rules_refuse() {
    let mut files = 0;
    for e in std::fs::read_dir(root().join("examples/inference")).unwrap() {
        let p = e.unwrap().path();
        if p.file_name().unwrap().to_string_lossy().starts_with("kaito_inferenceset_") {
            let set = yaml(&p);
            inferenceset_check(&set, None).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            // A template may change: the set has no immutability rules (its Workspaces are replaced instead).
            let mut changed = set.clone();
            changed["spec"]["template"]["inference"]["preset"]["name"] = json!("phi-4");
            changed["spec"]["template"]["resource"]["instanceType"] = json!("Standard_NC96ads_A100_v4");
            inferenceset_check(&changed, Some(&set)).unwrap_or_else(|e| panic!("{} changed: {e}", p.display()));
            files += 1;
        }
    }
    assert_eq!(files, 3, "KAITO's three InferenceSet examples");
    let seed = yaml(&root().join("examples/inference/kaito_inferenceset_phi_4_mini.yaml"));
    let refused = |edit: &dyn Fn(&mut Value), message: &str| {
        let mut set = seed.clone();
        edit(&mut set);
        let err = inferenceset_check(&set, None).expect_err(message);
        assert!(err.contains(message), "expected {message:?} in {err}");
    };
    refused(&|s| s["metadata"]["name"] = json!("a".repeat(59)), "at most 58 characters");
    refused(&|s| s["metadata"]["name"] = json!("Phi"), "DNS-1123 label");
    refused(&|s| s["spec"]["autoUpgrade"] = json!({"enabled": true}), "spec.autoUpgrade.enabled is not supported");
    refused(
        &|s| s["spec"]["template"]["inference"]["template"] = json!({"spec": {"containers": []}}),
        "set inference.preset or inference.template, not both",
    );
    refused(
        &|s| s["spec"]["labelSelector"]["matchLabels"] = json!({"kaito.sh/workspace": "x"}),
        "needs a label that is not reserved",
    );
    refused(
        &|s| s["spec"]["updateStrategy"] = json!({"type": "OnDelete", "rollingUpdate": {"maxUnavailable": 2}}),
        "only read with type RollingUpdate",
    );
    let mut off = seed.clone();
    off["spec"]["autoUpgrade"] = json!({"enabled": false, "strategy": "InPlace"});
    inferenceset_check(&off, None).unwrap();
}
