//! The `kaito-workspace` and `kaito-ragengine` Helm charts with the real `helm` binary: lint, render every values
//! variant, validate the rendered objects offline (`kubernetes-validate --strict`), and check that the RBAC grants
//! exactly the verbs the controllers' code uses (`kaito_operator::rbac::PERMISSIONS` and `RAGENGINE_PERMISSIONS`).

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

const WORKSPACE: &str = "kaito-workspace";
const RAGENGINE: &str = "kaito-ragengine";

fn helm(args: &[&str]) -> (bool, String, String) {
    helm_chart(WORKSPACE, args)
}

fn helm_chart(chart: &str, args: &[&str]) -> (bool, String, String) {
    let chart = root().join("charts").join(chart);
    let out = Command::new(tool("KAITO_HELM", "bin/helm")).args(args).arg(&chart).output().expect("helm runs");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn render(sets: &[&str]) -> Vec<Value> {
    render_chart(WORKSPACE, sets)
}

fn render_chart(chart: &str, sets: &[&str]) -> Vec<Value> {
    let mut args = vec!["template", "kaito", "-n", "kaito-system"];
    for s in sets {
        args.extend(["--set", s]);
    }
    let (ok, stdout, stderr) = helm_chart(chart, &args);
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
    assert!(!a.iter().any(|a| a.starts_with("--karpenter-node-classes")), "no allow-list unless asked");
    assert!(!a.contains(&"--offline".to_string()), "the hub is read unless the user says offline");
    let docs = render(&["hub.offline=true", "hub.endpoint=https://hub.example"]);
    assert!(args(&docs).contains(&"--offline".to_string()));
    let env = &find(&docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"];
    assert!(env.as_array().unwrap().iter().any(|e| e["name"] == "HF_ENDPOINT" && e["value"] == "https://hub.example"));
    let a = args(&render(&["nodeClasses[0].name=ubuntu", "nodeClasses[0].default=true", "nodeClasses[1].name=gpu"]));
    let flag = a.iter().find_map(|a| a.strip_prefix("--karpenter-node-classes=")).expect("the allow-list flag");
    let classes: kaito_workload::NodeClasses = flag.parse().expect("the operator parses what the chart passes");
    assert_eq!((classes.names, classes.default.as_str()), (vec!["ubuntu".to_string(), "gpu".to_string()], "ubuntu"));

    let docs =
        render(&["provisioner=byo", "replicaCount=1", "leaderElection.enabled=false", "metrics.service.enabled=false"]);
    assert!(args(&docs).contains(&"--leader-elect=false".to_string()));
    assert!(!docs.iter().any(|d| d["kind"] == "Service"));
    assert!(!docs.iter().any(|d| d["kind"] == "Role" && d["metadata"]["name"] == "kaito-kaito-operator-leader"));

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
        "--plugin-reload-seconds=10",
    ] {
        assert!(a.contains(&want.to_string()), "{want} missing from {a:?}");
    }
    let manifest = docs.iter().find_map(|d| d["data"]["plugins.yaml"].as_str()).expect("the extra plugins.yaml");
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

fn granted(docs: &[Value]) -> BTreeSet<(String, String, String)> {
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
    granted
}

fn used(table: &[kaito_operator::rbac::Permission]) -> BTreeSet<(String, String, String)> {
    table
        .iter()
        .flat_map(|p| p.verbs.iter().map(move |v| (p.group.to_string(), p.resource.to_string(), v.to_string())))
        .collect()
}

#[test]
fn rbac_grants_exactly_what_the_operator_uses() {
    assert_eq!(
        granted(&render(&[])),
        used(kaito_operator::rbac::PERMISSIONS),
        "the chart's RBAC and host/operator/src/rbac.rs disagree"
    );
    assert_eq!(
        granted(&render_chart(RAGENGINE, &[])),
        used(kaito_operator::rbac::RAGENGINE_PERMISSIONS),
        "kaito-ragengine's RBAC and RAGENGINE_PERMISSIONS disagree"
    );
}

#[test]
fn the_chart_ships_the_generated_crd() {
    let (ok, stdout, stderr) = helm(&["template", "kaito", "--include-crds"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains(&kaito_crd::workspace_crd_yaml()), "charts/kaito-workspace/crds/ differs from `kaito crd`");
    assert!(
        stdout.contains(&kaito_crd::inferenceset_crd_yaml()),
        "charts/kaito-workspace/crds/ differs from `kaito crd inferenceset`"
    );
}

#[test]
fn ragengine_chart_lints_renders_and_ships_its_crd() {
    let (ok, stdout, stderr) = helm_chart(RAGENGINE, &["lint", "--strict"]);
    assert!(ok, "{stdout}{stderr}");
    let docs = render_chart(RAGENGINE, &[]);
    let deploy = find(&docs, "Deployment");
    let c = &deploy["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(deploy["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"], true);
    let a = args(&docs);
    for want in [
        "--controllers=ragengine",
        "--provisioner=gpu-provisioner",
        "--image-registry=ghcr.io/kaito-rs",
        "--leader-elect=true",
    ] {
        assert!(a.contains(&want.to_string()), "{want} missing from {a:?}");
    }
    assert!(a.iter().any(|x| x == "--lease-name=kaito-kaito-ragengine-leader"), "its own Lease: {a:?}");

    let docs = render_chart(
        RAGENGINE,
        &[
            "provisioner=byo",
            "replicaCount=1",
            "leaderElection.enabled=false",
            "ragImageRegistry=registry.example/kaito",
        ],
    );
    let a = args(&docs);
    assert!(
        a.contains(&"--provisioner=byo".to_string())
            && a.contains(&"--image-registry=registry.example/kaito".to_string())
    );
    assert!(!docs.iter().any(|d| d["kind"] == "Role" && d["metadata"]["name"] == "kaito-kaito-ragengine-leader"));

    // The conversion webhook: on by default (its Service, port and Role), off leaves no trace of it.
    let docs = render_chart(RAGENGINE, &[]);
    let a = args(&docs);
    assert!(a.contains(&"--webhook-service=kaito-kaito-ragengine-webhook:443".to_string()), "{a:?}");
    assert!(a.contains(&"--webhook-secret=kaito-kaito-ragengine-webhook-cert".to_string()), "{a:?}");
    let svc = docs.iter().find(|d| d["kind"] == "Service" && d["metadata"]["name"] == "kaito-kaito-ragengine-webhook");
    assert_eq!(svc.expect("the webhook Service")["spec"]["ports"][0]["port"], 443);
    let docs = render_chart(RAGENGINE, &["webhook.enabled=false"]);
    assert!(!args(&docs).iter().any(|x| x.starts_with("--webhook")));
    assert!(!serde_json::to_string(&docs).unwrap().contains("webhook"), "nothing of the webhook when it is off");

    let (ok, _, stderr) = helm_chart(RAGENGINE, &["template", "kaito", "--set", "ragImageRegistry="]);
    assert!(!ok && stderr.contains("ragImageRegistry"), "{stderr}");
    let (ok, _, stderr) = helm_chart(RAGENGINE, &["template", "kaito", "--set", "leaderElection.enabled=false"]);
    assert!(!ok && stderr.contains("leaderElection.enabled"), "{stderr}");

    let (ok, stdout, stderr) = helm_chart(RAGENGINE, &["template", "kaito", "--include-crds"]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains(&kaito_crd::ragengine_crd_yaml()),
        "charts/kaito-ragengine/crds/ differs from `kaito crd ragengine`"
    );
}

#[test]
fn oci_plugin_references_are_pinned_or_refused() {
    let pinned = format!("registry.example.com/kaito/my-preset@sha256:{}", "b".repeat(64));
    let docs =
        render(&[&format!("plugins.oci[0]={pinned}"), "plugins.registrySecret=regcred", "plugins.plainHttp=true"]);
    let a = args(&docs);
    for want in [
        "--plugin-configmap=kaito-kaito-operator-plugin-refs",
        "--plain-http",
        "--registry-config=/etc/kaito/registry/.dockerconfigjson",
    ] {
        assert!(a.contains(&want.to_string()), "{want} missing from {a:?}");
    }
    // The references go into the ConfigMap the operator watches, one entry per repository name, in the form its
    // flag parser takes; the Role reads that ConfigMap only.
    let refs = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "kaito-kaito-operator-plugin-refs")
        .expect("the plugin-reference ConfigMap");
    let entry = refs["data"]["my-preset"].as_str().expect("an entry named by the repository");
    assert_eq!(entry, format!("oci://{pinned}"));
    let source: kaito_workload::plugin_args::PluginSource = entry.parse().unwrap();
    assert_eq!(source, kaito_workload::plugin_args::PluginSource::Oci(pinned.clone()));
    let role = docs
        .iter()
        .find(|d| d["kind"] == "Role" && d["metadata"]["name"] == "kaito-kaito-operator-plugin-refs")
        .expect("the plugin-reference Role");
    assert_eq!(role["rules"][0]["resourceNames"], serde_json::json!(["kaito-kaito-operator-plugin-refs"]));
    // A new reference is swapped in live: it does not roll the operator's pod.
    let checksum = |docs: &[Value]| {
        find(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/plugins"].clone()
    };
    assert_eq!(checksum(&docs), checksum(&render(&["plugins.registrySecret=regcred", "plugins.plainHttp=true"])));
    let empty = render(&[]);
    let refs = empty.iter().find(|d| d["kind"] == "ConfigMap").expect("the ConfigMap exists with no references");
    assert!(refs["data"].as_object().is_none_or(|d| d.is_empty()), "{refs}");
    let volumes = &find(&docs, "Deployment")["spec"]["template"]["spec"]["volumes"];
    assert!(volumes.as_array().unwrap().iter().any(|v| v["secret"]["secretName"] == "regcred"));

    let tag = "registry.example.com/kaito/my-preset:latest";
    let (ok, _, stderr) = helm(&["template", "kaito", "--set", &format!("plugins.oci[0]={tag}")]);
    assert!(!ok && stderr.contains("names no digest"), "an unpinned tag is refused: {stderr}");
    let docs = render(&[&format!("plugins.oci[0]={tag}"), "plugins.allowUnpinned=true"]);
    assert!(args(&docs).contains(&"--allow-unpinned-plugins".to_string()));
    let refs = docs.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
    assert_eq!(refs["data"]["my-preset"], format!("oci://{tag}"));
    let (ok, _, stderr) = helm(&[
        "template",
        "kaito",
        "--set",
        &format!("plugins.oci[0]={pinned}"),
        "--set",
        &format!("plugins.oci[1]=other.example/my-preset@sha256:{}", "c".repeat(64)),
    ]);
    assert!(!ok && stderr.contains("my-preset"), "two entries of one name are refused: {stderr}");
}
