//! Golden tests of `kaito render`: the seed Workspace, bring-your-own nodes,
//! a multi-node vLLM plan, and the error cases with their messages.

use kaito_tests::{Run, golden, kaito, root, shared_cache};

const SEED: &str = "examples/inference/kaito_workspace_phi_3.5-instruct.yaml";

fn path(rel: &str) -> String {
    root().join(rel).display().to_string()
}

fn render(args: &[&str]) -> Run {
    let mut all = vec!["render"];
    all.extend_from_slice(args);
    kaito(&all, shared_cache())
}

/// Render `base` with `from` replaced by `to` (plus `extra` arguments), expect
/// failure, and compare stderr, with the temporary directory masked, to a golden file.
fn error_golden(name: &str, base: &str, from: &str, to: &str, extra: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let src = std::fs::read_to_string(root().join(base)).unwrap();
    assert!(src.contains(from), "{base} has no {from:?}");
    let file = dir.path().join("ws.yaml");
    std::fs::write(&file, src.replace(from, to)).unwrap();
    let file = file.display().to_string();
    let mut args = vec!["-f", file.as_str()];
    args.extend_from_slice(extra);
    let run = render(&args);
    assert_eq!(run.code, 1, "expected failure, got stdout:\n{}", run.stdout);
    assert!(run.stdout.is_empty(), "nothing on stdout when failing");
    golden(name, &run.stderr.replace(&dir.path().display().to_string(), "$TMP"));
}

#[test]
fn seed_phi_3_5_on_nc24ads_a100_v4() {
    let run = render(&["-f", &path(SEED)]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stderr, "");
    golden("phi-3.5-nc24ads-a100.yaml", &run.stdout);
}

/// KAITO's fine-tuning example, LoRA: one NodeClaim and a Job named as the Workspace whose one container runs
/// kaito-tune on one GPU, with the data URL, the ConfigMap, and the push secret as a Docker config file.
#[test]
fn tuning_example_renders_a_job() {
    let run = render(&["-f", &path("examples/fine-tuning/kaito_workspace_tuning_phi_3.yaml")]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout.matches("kind: NodeClaim").count(), 1);
    assert_eq!(run.stdout.matches("kind: Job").count(), 1);
    assert!(!run.stdout.contains("StatefulSet") && !run.stdout.contains("kind: Service"));
    golden("tuning-phi-3-nc24ads-a100.yaml", &run.stdout);
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
fn karpenter_plans_one_node_pool_on_aws() {
    let run = render(&["-f", &path("tests/fixtures/llama-3.3-70b-aws.yaml"), "--provisioner", "karpenter"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout.matches("kind: NodePool").count(), 1);
    assert!(!run.stdout.contains("kind: NodeClaim"));
    golden("llama-3.3-70b-p5-karpenter.yaml", &run.stdout);
}

#[test]
fn every_example_renders() {
    let mut seen = 0;
    for dir in ["examples/inference", "examples/custom-template"] {
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

/// KAITO's adapter example: the tch runtime pulls each adapter artifact itself and serves it under its name, the
/// strength in the JSON form of `--lora-modules`; vllm and volume adapters are refused naming the field.
#[test]
fn adapters_are_served_by_the_tch_runtime() {
    let example = "examples/inference/kaito_workspace_phi_3_with_adapters.yaml";
    let run = render(&["-f", &path(example)]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let docs: Vec<serde_json::Value> =
        run.stdout.split("\n---\n").filter_map(|d| serde_yaml::from_str(d).ok()).collect();
    let sts = docs.iter().find(|d| d["kind"] == "StatefulSet").expect("a StatefulSet");
    let args: Vec<&str> = sts["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let at = args.iter().position(|a| *a == "--lora-modules").expect("--lora-modules");
    assert_eq!(args[at - 1], "--enable-lora");
    let module: serde_json::Value = serde_json::from_str(args[at + 1]).expect("the JSON form");
    assert_eq!(
        module,
        serde_json::json!({"name": "phi-3-adapter", "path": "/mnt/adapter/phi-3-adapter", "strength": 1.0})
    );
    // An init container pulls the artifact into the adapter's directory; the server mounts the directories read-only.
    let pod = &sts["spec"]["template"]["spec"];
    let puller = &pod["initContainers"][0];
    assert_eq!(puller["name"], "pull-adapter-0");
    assert_eq!(puller["image"], "ghcr.io/kaito-rs/kaito-inference:0.1.0");
    assert_eq!(puller["command"], serde_json::json!(["kaito-pull"]));
    assert_eq!(
        puller["args"],
        serde_json::json!(["oci://myregistry.azurecr.io/adapters/phi-3-adapter:0.0.1", "/mnt/adapter/phi-3-adapter"])
    );
    let mount = pod["containers"][0]["volumeMounts"].as_array().unwrap().iter().find(|m| m["name"] == "adapters");
    assert_eq!(mount.unwrap()["readOnly"], true);
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(root().join(example)).unwrap();
    let without_strength = text.replace("      strength: \"1.0\"\n", "");
    let file = dir.path().join("ws.yaml");
    std::fs::write(&file, &without_strength).unwrap();
    let run = render(&["-f", &file.display().to_string()]);
    assert!(run.stdout.contains("phi-3-adapter=/mnt/adapter/phi-3-adapter"), "{}", run.stderr);
    // vLLM gets the same directories, with --enable-lora and --lora-modules only when there are adapters.
    let on_vllm = without_strength
        .replace("metadata:\n  name:", "metadata:\n  annotations:\n    kaito.sh/runtime: vllm\n  name:");
    std::fs::write(&file, &on_vllm).unwrap();
    let run = render(&["-f", &file.display().to_string()]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout
            .contains("- --enable-lora\n        - --lora-modules\n        - phi-3-adapter=/mnt/adapter/phi-3-adapter"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("- kaito-pull"), "{}", run.stdout);
    let plain = render(&["-f", &path(SEED), "--image-registry", "ghcr.io/kaito-rs"]);
    assert!(!plain.stdout.contains("enable-lora") && !plain.stdout.contains("initContainers"));
    for (change, field) in [
        (
            text.replace("metadata:\n  name:", "metadata:\n  annotations:\n    kaito.sh/runtime: vllm\n  name:"),
            "inference.adapters[0].strength",
        ),
        (text.replace("name: \"phi-3-adapter\"", "name: \"../etc\""), "inference.adapters[0].source.name"),
        (
            text.replace(
                "        image: \"myregistry.azurecr.io/adapters/phi-3-adapter:0.0.1\"",
                "        volumeSource:\n          persistentVolumeClaim:\n            claimName: adapters",
            ),
            "inference.adapters[0].source.volumeSource",
        ),
    ] {
        std::fs::write(&file, change).unwrap();
        let run = render(&["-f", &file.display().to_string()]);
        assert_eq!(run.code, 1, "{}", run.stdout);
        assert!(run.stderr.contains(field), "{field}: {}", run.stderr);
    }
}

#[test]
fn error_unknown_preset_lists_close_names() {
    error_golden("error-unknown-preset.stderr", SEED, "name: phi-3.5-mini-instruct", "name: phi-3.5-mini", &[]);
}

#[test]
fn error_unknown_instance_type_says_so() {
    error_golden("error-unknown-instance-type.stderr", SEED, "Standard_NC24ads_A100_v4", "Standard_NC24ads_A100", &[]);
}

#[test]
fn error_model_too_big_for_instance_type_gives_numbers() {
    error_golden(
        "error-does-not-fit.stderr",
        "tests/fixtures/phi-4-a10-vllm.yaml",
        "phi-4",
        "phi-4",
        &["--max-nodes", "1"],
    );
}

#[test]
fn error_tch_runtime_cannot_span_gpus() {
    let f = "tests/fixtures/phi-4-a10-vllm.yaml";
    error_golden("error-tch-multi-gpu.stderr", f, "kaito.sh/runtime: vllm", "kaito.sh/runtime: tch", &[]);
}

#[test]
fn error_missing_label_selector() {
    let selector = "  labelSelector:\n    matchLabels:\n      apps: phi-3-5\n";
    error_golden("error-missing-label-selector.stderr", SEED, selector, "", &[]);
}

#[test]
fn error_unknown_field_is_named() {
    error_golden(
        "error-unknown-field.stderr",
        SEED,
        "    name: phi-3.5-mini-instruct",
        "    nmae: phi-3.5-mini-instruct",
        &[],
    );
}

#[test]
fn error_byo_without_matching_ready_nodes() {
    let nodes = path("tests/fixtures/byo-nodes.yaml");
    let f = "tests/fixtures/byo-workspace.yaml";
    error_golden("error-byo-no-nodes.stderr", f, "apps: byo-phi", "apps: nowhere", &["--nodes", &nodes]);
}

/// One Workspace's bad input fails that Workspace only: an empty `kaito.sh/node-class-name` means the default class
/// (as in KAITO), an invalid one is refused naming the annotation, and the provisioner plugin is not quarantined.
#[test]
fn node_class_annotation_is_input_not_a_plugin_fault() {
    let registry = kaito_tests::shipped_registry();
    let with = seed_with_node_class;
    let opts = kaito_workload::RenderOptions { provisioner: Some("gpu-provisioner".into()), ..Default::default() };
    let rendered = kaito_workload::render(&registry, &with(""), &opts).expect("empty means the default class");
    assert_eq!(rendered.objects.nodes[0]["spec"]["nodeClassRef"]["name"], "default");
    let err = kaito_workload::render(&registry, &with("Not A Class!"), &opts).unwrap_err();
    assert_eq!(err.reason(), "InvalidWorkspace");
    assert!(err.to_string().contains("metadata.annotations[kaito.sh/node-class-name]"), "{err}");
    let provisioner = registry.provisioner("gpu-provisioner").unwrap();
    assert_eq!(provisioner.quarantined(), None, "the plugin did nothing wrong");
    kaito_workload::render(&registry, &with("gpu"), &opts).expect("the next Workspace still provisions");
}

/// KAITO's estimator decides the node count: a larger `resource.count` adds no nodes, and the output says so.
#[test]
fn resource_count_does_not_force_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let seed = std::fs::read_to_string(root().join(SEED)).unwrap();
    let file = dir.path().join("ws.yaml");
    std::fs::write(&file, seed.replace("resource:\n", "resource:\n  count: 4\n")).unwrap();
    let run = render(&["-f", &file.display().to_string()]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout.matches("kind: NodeClaim").count(), 1, "one node, as KAITO plans it");
    assert!(run.stderr.contains("resource.count 4 is not used"), "{}", run.stderr);
}

/// As KAITO's webhook with node auto-provisioning off: bring-your-own nodes take no instance type.
#[test]
fn byo_refuses_an_instance_type() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(root().join("tests/fixtures/byo-workspace.yaml")).unwrap();
    let file = dir.path().join("ws.yaml");
    std::fs::write(&file, text.replace("resource:\n", "resource:\n  instanceType: Standard_NC24ads_A100_v4\n"))
        .unwrap();
    let run = render(&["-f", &file.display().to_string(), "--nodes", &path("tests/fixtures/byo-nodes.yaml")]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(run.stderr.contains("resource.instanceType: must be empty with bring-your-own nodes"), "{}", run.stderr);
}

/// The seed Workspace annotated with `kaito.sh/node-class-name: value`.
fn seed_with_node_class(value: &str) -> kaito_crd::Workspace {
    let seed = std::fs::read_to_string(root().join(SEED)).unwrap();
    let text = seed.replace(
        "metadata:\n  name: workspace-phi-3-5-mini\n",
        &format!(
            "metadata:\n  name: workspace-phi-3-5-mini\n  annotations:\n    kaito.sh/node-class-name: {value:?}\n"
        ),
    );
    kaito_crd::Workspace::from_yaml(&text).unwrap()
}

/// Node-class allow-list of the operator's configuration, as the CLI takes it.
const NODE_CLASSES: &str = r#"[{"name":"default","default":true},{"name":"gpu"}]"#;

/// Every KAITO webhook rule that is not CEL here (`tests/fixtures/invalid-at-reconcile/`, each naming its message)
/// fails the render the operator runs, with that message; the end-to-end test sees the same as a condition.
#[test]
fn rules_checked_at_reconcile_refuse_their_fixtures() {
    let dir = root().join("tests/fixtures/invalid-at-reconcile");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let file = entry.unwrap().path();
        let text = std::fs::read_to_string(&file).unwrap();
        let expected = text.lines().find_map(|l| l.strip_prefix("# condition: ")).expect("a `# condition:` line");
        let run = render(&["-f", &file.display().to_string(), "--karpenter-node-classes", NODE_CLASSES]);
        assert_eq!(run.code, 1, "{}: rendered\n{}", file.display(), run.stdout);
        assert!(run.stderr.contains(expected), "{}: expected {expected:?} in {}", file.display(), run.stderr);
        checked += 1;
    }
    assert!(checked >= 9, "{checked} fixtures");
}

/// With an allow-list, an unset or empty node class is the list's default and a listed one passes; without one any
/// valid name passes (KAITO checks the list only where it is configured).
#[test]
fn node_class_allow_list_picks_the_default() {
    let registry = kaito_tests::shipped_registry();
    let with = seed_with_node_class;
    let classes: kaito_workload::NodeClasses = r#"[{"name":"gpu"},{"name":"ubuntu","default":true}]"#.parse().unwrap();
    let opts = kaito_workload::RenderOptions {
        provisioner: Some("gpu-provisioner".into()),
        node_classes: Some(classes),
        ..Default::default()
    };
    let class = |ws| {
        kaito_workload::render(&registry, &ws, &opts)
            .map(|r| r.objects.nodes[0]["spec"]["nodeClassRef"]["name"].clone())
    };
    assert_eq!(class(with("")).unwrap(), "ubuntu");
    assert_eq!(class(with("gpu")).unwrap(), "gpu");
    let err = class(with("default")).unwrap_err();
    assert!(err.to_string().contains("use one of: gpu, ubuntu"), "{err}");
    let open = kaito_workload::RenderOptions { provisioner: Some("gpu-provisioner".into()), ..Default::default() };
    let any = kaito_workload::render(&registry, &with("my-class"), &open).unwrap();
    assert_eq!(any.objects.nodes[0]["spec"]["nodeClassRef"]["name"], "my-class");
}

/// As KAITO on Azure: a template Workspace may name any N- or D-series size; a preset still needs the size's GPU
/// facts from the table.
#[test]
fn template_workspaces_take_any_azure_n_or_d_size() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(root().join("examples/custom-template/workspace-custom-vllm.yaml")).unwrap();
    let from = text.lines().find(|l| l.trim_start().starts_with("instanceType:")).unwrap().to_string();
    let file = dir.path().join("ws.yaml");
    std::fs::write(&file, text.replace(&from, "  instanceType: Standard_D8s_v5")).unwrap();
    let run = render(&["-f", &file.display().to_string()]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("Standard_D8s_v5"), "{}", run.stdout);
    std::fs::write(&file, text.replace(&from, "  instanceType: Standard_E8s_v5")).unwrap();
    let run = render(&["-f", &file.display().to_string()]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(run.stderr.contains("Standard_N* or Standard_D*"), "{}", run.stderr);
    let seed = std::fs::read_to_string(root().join(SEED)).unwrap();
    std::fs::write(&file, seed.replace("Standard_NC24ads_A100_v4", "Standard_D8s_v5")).unwrap();
    let run = render(&["-f", &file.display().to_string()]);
    assert_eq!(run.code, 1, "a preset needs GPU facts: {}", run.stdout);
    assert!(run.stderr.contains("resource.instanceType"), "{}", run.stderr);
}

/// KAITO's v1alpha1 rule: `count` nodes must hold the weights; the bypass annotation and v1beta1 (where the
/// estimator sizes the node count) render.
#[test]
fn v1alpha1_count_must_hold_the_weights() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = root().join("tests/fixtures/invalid-at-reconcile/v1alpha1-count-too-small.yaml");
    let text = std::fs::read_to_string(&fixture).unwrap();
    let run = render(&["-f", &fixture.display().to_string()]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("resource.count: insufficient total GPU memory: 1 x Standard_NV36ads_A10_v5"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("set resource.count to "), "{}", run.stderr);
    let file = dir.path().join("ws.yaml");
    let bypass =
        text.replace("metadata:\n", "metadata:\n  annotations:\n    kaito.sh/bypass-resource-checks: \"true\"\n");
    std::fs::write(&file, &bypass).unwrap();
    let run = render(&["-f", &file.display().to_string()]);
    assert!(!run.stderr.contains("insufficient total GPU memory"), "bypassed: {}", run.stderr);
    std::fs::write(&file, text.replace("kaito.sh/v1alpha1", "kaito.sh/v1beta1")).unwrap();
    let run = render(&["-f", &file.display().to_string()]);
    assert!(!run.stderr.contains("insufficient total GPU memory"), "v1beta1: {}", run.stderr);
}

/// `tests/golden/kaito-webhook-rules.md` places every KAITO webhook rule: each row cites evidence that exists (a
/// fixture the end-to-end tests apply, or a test function), every fixture is cited, and the summary counts add up.
#[test]
fn webhook_rule_table_is_backed_by_fixtures_and_tests() {
    let table = std::fs::read_to_string(root().join("tests/golden/kaito-webhook-rules.md")).unwrap();
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    let mut cited = std::collections::BTreeSet::new();
    let mut rows = 0;
    for line in table.lines().filter(|l| l.starts_with("| ") && !l.starts_with("| #")) {
        let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
        let [n, _rule, place, evidence] = cells[..] else { panic!("row {line:?} has not 4 cells") };
        rows += 1;
        assert_eq!(n, rows.to_string(), "rows are numbered in order");
        *counts.entry(place).or_default() += 1;
        match place {
            "apply" | "reconcile" => {
                for item in evidence.split(", ") {
                    if let Some((file, function)) = item.split_once("::") {
                        let text = std::fs::read_to_string(root().join(file)).unwrap_or_default();
                        assert!(text.contains(&format!("fn {function}(")), "row {n}: no test {item}");
                    } else {
                        let dir = if place == "apply" {
                            "tests/fixtures/invalid/"
                        } else {
                            "tests/fixtures/invalid-at-reconcile/"
                        };
                        assert!(
                            item.starts_with(dir) && root().join(item).is_file(),
                            "row {n}: {item} is not in {dir}"
                        );
                        cited.insert(item.to_string());
                    }
                }
            }
            "differs" | "not yet" | "n/a" => {
                assert!(evidence.len() > 10, "row {n}: say why");
                for item in evidence.split([' ', ',']).filter(|w| w.starts_with("tests/fixtures/")) {
                    assert!(root().join(item).is_file(), "row {n}: {item} does not exist");
                    cited.insert(item.to_string());
                }
            }
            other => panic!("row {n}: unknown place {other:?}"),
        }
    }
    for dir in ["tests/fixtures/invalid", "tests/fixtures/invalid-at-reconcile"] {
        for entry in std::fs::read_dir(root().join(dir)).unwrap() {
            let rel = format!("{dir}/{}", entry.unwrap().file_name().to_string_lossy());
            assert!(cited.contains(&rel), "{rel} is in no row");
        }
    }
    let summary = format!(
        "Apply-time: {} of {rows} rules; at reconcile: {}; differently on purpose: {}; not yet: {}; not applicable: {}.",
        counts.get("apply").copied().unwrap_or(0),
        counts.get("reconcile").copied().unwrap_or(0),
        counts.get("differs").copied().unwrap_or(0),
        counts.get("not yet").copied().unwrap_or(0),
        counts.get("n/a").copied().unwrap_or(0)
    );
    assert!(table.contains(&summary), "the summary line should read: {summary}");
}

/// As KAITO on Azure: pods tolerate the spot taint (the gpu-provisioner plugin says so through contract 0.2.0's
/// pod tolerations); on AWS they do not.
#[test]
fn azure_pods_tolerate_spot_nodes_and_aws_pods_do_not() {
    let registry = kaito_tests::shipped_registry();
    let ws = kaito_crd::Workspace::from_yaml(&std::fs::read_to_string(root().join(SEED)).unwrap()).unwrap();
    let tolerations = |provisioner: &str, ws: &kaito_crd::Workspace| {
        let opts = kaito_workload::RenderOptions { provisioner: Some(provisioner.into()), ..Default::default() };
        let rendered = kaito_workload::render(&registry, ws, &opts).unwrap();
        serde_json::to_value(&rendered.objects.statefulset).unwrap()["spec"]["template"]["spec"]["tolerations"].clone()
    };
    let spot = serde_json::json!({
        "key": "kubernetes.azure.com/scalesetpriority", "operator": "Equal", "value": "spot", "effect": "NoSchedule"
    });
    let azure = tolerations("gpu-provisioner", &ws);
    assert!(azure.as_array().unwrap().contains(&spot), "{azure}");
    let text = std::fs::read_to_string(root().join("tests/fixtures/llama-3.3-70b-aws.yaml")).unwrap();
    let aws = tolerations("karpenter", &kaito_crd::Workspace::from_yaml(&text).unwrap());
    assert!(!aws.as_array().unwrap().contains(&spot), "{aws}");
}

#[test]
fn an_inferenceset_renders_its_workspaces_within_the_node_limit() {
    let text = std::fs::read_to_string(root().join("examples/inference/kaito_inferenceset_phi_4_mini.yaml"))
        .unwrap()
        .replace("replicas: 1", "replicas: 7");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("set.yaml");
    std::fs::write(&file, text).unwrap();
    let run = render(&["-f", &file.display().to_string()]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let docs: Vec<serde_json::Value> =
        run.stdout.split("\n---\n").filter(|d| !d.trim().is_empty()).map(kaito_tests::yaml).collect();
    let workspaces: Vec<&str> =
        docs.iter().filter(|d| d["kind"] == "Workspace").map(|d| d["metadata"]["name"].as_str().unwrap()).collect();
    assert_eq!(workspaces, ["phi-4-mini-0", "phi-4-mini-1", "phi-4-mini-2", "phi-4-mini-3", "phi-4-mini-4"]);
    assert_eq!(docs.iter().filter(|d| d["kind"] == "StatefulSet").count(), 5, "each Workspace renders");
    assert!(
        run.stderr.contains(
            "phi-4-mini-5 and later replicas are not made: each needs 1 node(s) and spec.nodeCountLimit is 5"
        ),
        "{}",
        run.stderr
    );
    // With bring-your-own nodes, KAITO's rule: no instance type.
    let byo = render(&["-f", &file.display().to_string(), "--provisioner", "byo"]);
    assert_ne!(byo.code, 0);
    assert!(byo.stderr.contains("spec.template.resource.instanceType: must be empty"), "{}", byo.stderr);
}

/// A preset naming a tool-call parser passes it to the server as vLLM's flag on either runtime: Qwen 2.5 Coder
/// (hermes) served by tch, then by vLLM.
#[test]
fn the_presets_tool_call_parser_reaches_both_runtimes() {
    let dir = tempfile::tempdir().unwrap();
    let src = std::fs::read_to_string(root().join(SEED))
        .unwrap()
        .replace("phi-3.5-mini-instruct", "qwen2.5-coder-7b-instruct");
    let file = dir.path().join("ws.yaml");
    std::fs::write(&file, &src).unwrap();
    let run = render(&["-f", &file.display().to_string()]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("kaito-inference"), "served by tch: {}", run.stdout);
    assert!(run.stdout.contains("- --tool-call-parser\n        - hermes\n"), "{}", run.stdout);
    let vllm = src.replace("metadata:\n", "metadata:\n  annotations:\n    kaito.sh/runtime: vllm\n");
    std::fs::write(&file, vllm).unwrap();
    let run = render(&["-f", &file.display().to_string()]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("--tool-call-parser=hermes") && run.stdout.contains("--enable-auto-tool-choice"));
}
