//! The `kaito-workspace` Helm chart with the real `helm` binary: lint, render every values variant, validate the
//! rendered objects offline (`kubernetes-validate --strict`), and check that the RBAC grants exactly the verbs
//! the operator's code uses (`kaito_operator::rbac::PERMISSIONS`).

use kaito_tests::root;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

fn tool(env: &str, rel: &str) -> PathBuf {
    let p = std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/kaito").join(rel));
    assert!(p.exists(), "{} is missing: run `cargo xtask tools` (or `cargo xtask test`)", p.display());
    p
}

fn helm(args: &[&str]) -> (bool, String, String) {
    let chart = root().join("charts/kaito-workspace");
    let out = Command::new(tool("KAITO_HELM", "bin/helm")).args(args).arg(&chart).output().expect("helm runs");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn render(sets: &[&str]) -> Vec<Value> {
    let mut args = vec!["template", "kaito", "-n", "kaito-system"];
    for s in sets {
        args.extend(["--set", s]);
    }
    let (ok, stdout, stderr) = helm(&args);
    assert!(ok, "helm template {sets:?} failed: {stderr}");
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&stdout)
        .map(|d| serde::Deserialize::deserialize(d).expect("rendered YAML parses"))
        .filter(|v: &Value| !v.is_null())
        .collect();
    validate(&stdout, sets);
    docs
}

fn validate(yaml: &str, sets: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rendered.yaml");
    std::fs::write(&file, yaml).unwrap();
    let out = Command::new(tool("KAITO_KUBERNETES_VALIDATE", "torch-venv/bin/kubernetes-validate"))
        .args(["--strict", "-k", "1.35", "--quiet"])
        .arg(&file)
        .output()
        .expect("kubernetes-validate runs");
    assert!(
        out.status.success(),
        "kubernetes-validate rejected the render with {sets:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("no {kind} rendered"))
}

fn args(docs: &[Value]) -> Vec<String> {
    find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn lint_is_strictly_clean() {
    let (ok, stdout, stderr) = helm(&["lint", "--strict"]);
    assert!(ok, "{stdout}{stderr}");
}

#[test]
fn default_install_is_locked_down_and_leader_elected() {
    let docs = render(&[]);
    let deploy = find(&docs, "Deployment");
    let pod = &deploy["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(deploy["spec"]["replicas"], 2);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");
    assert_eq!(
        (c["livenessProbe"]["httpGet"]["path"].as_str(), c["readinessProbe"]["httpGet"]["path"].as_str()),
        (Some("/healthz"), Some("/readyz"))
    );
    assert!(c["resources"]["limits"]["memory"].is_string());
    let a = args(&docs);
    for want in [
        "--provisioner=gpu-provisioner",
        "--leader-elect=true",
        "--plugins=/opt/kaito/plugins/presets",
        "--plugin-deadline-ms=1000",
        "--plugin-memory-mib=64",
    ] {
        assert!(a.contains(&want.to_string()), "{want} missing from {a:?}");
    }
    assert!(!a.iter().any(|x| x.contains("extra") || x == "--require-pins" || x.starts_with("--allow-host-path")));
    assert_eq!(find(&docs, "Service")["spec"]["ports"][0]["port"], 8080);
    assert!(docs.iter().any(|d| d["kind"] == "Role"), "the leader Lease Role");
}

#[test]
fn provisioner_and_plugin_variants() {
    let a = args(&render(&["provisioner=karpenter"]));
    assert!(a.contains(&"--provisioner=karpenter".to_string()));

    let docs =
        render(&["provisioner=byo", "replicaCount=1", "leaderElection.enabled=false", "metrics.service.enabled=false"]);
    assert!(args(&docs).contains(&"--leader-elect=false".to_string()));
    assert!(!docs.iter().any(|d| d["kind"] == "Role" || d["kind"] == "Service"));

    let sha = "a".repeat(64);
    let docs = render(&[
        "plugins.requirePins=true",
        "plugins.allowHostPaths[0]=/mnt/models",
        "plugins.deadlineMs=500",
        "plugins.extra[0].name=my-preset",
        "plugins.extra[0].configMap=my-preset-wasm",
        "plugins.extra[0].key=preset.wasm",
        &format!("plugins.extra[0].sha256={sha}"),
    ]);
    let a = args(&docs);
    for want in [
        "--require-pins",
        "--allow-host-path=/mnt/models",
        "--plugins=/opt/kaito/plugins/extra",
        "--plugin-deadline-ms=500",
    ] {
        assert!(a.contains(&want.to_string()), "{want} missing from {a:?}");
    }
    let manifest = find(&docs, "ConfigMap")["data"]["plugins.yaml"].as_str().unwrap();
    let parsed: Value = serde_yaml::from_str(manifest).unwrap();
    assert_eq!(parsed["plugins"][0]["file"], "my-preset.wasm");
    assert_eq!(parsed["plugins"][0]["sha256"], sha.as_str());
    let volumes = &find(&docs, "Deployment")["spec"]["template"]["spec"]["volumes"];
    let sources =
        volumes.as_array().unwrap().iter().find(|v| v["name"] == "extra-plugins").unwrap()["projected"]["sources"]
            .clone();
    assert_eq!(sources[1]["configMap"]["items"][0]["path"], "my-preset.wasm");
}

#[test]
fn bad_values_are_refused_with_the_reason() {
    let (ok, _, stderr) = helm(&["template", "kaito", "--set", "provisioner=Not_A_Name"]);
    assert!(!ok && stderr.contains("provisioner"), "{stderr}");
    let (ok, _, stderr) = helm(&["template", "kaito", "--set", "plugins.memoryMiB=0"]);
    assert!(!ok && stderr.contains("memoryMiB"), "{stderr}");
    let (ok, _, stderr) = helm(&["template", "kaito", "--set", "leaderElection.enabled=false"]);
    assert!(!ok && stderr.contains("leaderElection.enabled"), "two replicas without election: {stderr}");
    let (ok, _, stderr) = helm(&["template", "kaito", "--set", "plugins.extra[0].name=x"]);
    assert!(!ok && stderr.contains("configMap"), "{stderr}");
}

#[test]
fn rbac_grants_exactly_what_the_operator_uses() {
    let docs = render(&[]);
    let mut granted = BTreeSet::new();
    for role in docs.iter().filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role") {
        for rule in role["rules"].as_array().unwrap() {
            for g in rule["apiGroups"].as_array().unwrap() {
                for r in rule["resources"].as_array().unwrap() {
                    for v in rule["verbs"].as_array().unwrap() {
                        granted.insert((
                            g.as_str().unwrap().to_string(),
                            r.as_str().unwrap().to_string(),
                            v.as_str().unwrap().to_string(),
                        ));
                    }
                }
            }
        }
    }
    let used: BTreeSet<(String, String, String)> = kaito_operator::rbac::PERMISSIONS
        .iter()
        .flat_map(|p| p.verbs.iter().map(move |v| (p.group.to_string(), p.resource.to_string(), v.to_string())))
        .collect();
    assert_eq!(granted, used, "the chart's RBAC and host/operator/src/rbac.rs disagree");
}

#[test]
fn the_chart_ships_the_generated_crd() {
    let (ok, stdout, stderr) = helm(&["template", "kaito", "--include-crds"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains(&kaito_crd::workspace_crd_yaml()), "charts/kaito-workspace/crds/ differs from `kaito crd`");
}
