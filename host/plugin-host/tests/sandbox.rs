//! Hostile plugins are stopped or rejected, and good plugins loaded beside
//! them keep answering. Needs `cargo xtask plugins` first.

use kaito_plugin_host::conformance::{reference_request, reference_shapes};
use kaito_plugin_host::{CallError, Fault, HostConfig, PluginHost, PluginKind, Registry};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().nth(2).unwrap().to_path_buf()
}

fn dir(rel: &str) -> PathBuf {
    let d = root().join(rel);
    assert!(
        d.join(".").is_dir() && std::fs::read_dir(&d).unwrap().next().is_some(),
        "{} is empty: run `cargo xtask plugins` first",
        d.display()
    );
    d
}

fn host() -> PluginHost {
    // Under the target dir, one per checkout: a per-process directory in /tmp was never removed.
    let cache = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("kaito-sandbox-test-cache");
    PluginHost::new(HostConfig { cache_dir: Some(cache), ..Default::default() }).unwrap()
}

fn everything(host: &PluginHost) -> Registry {
    host.load_dirs(&[dir("presets-wasm/dist"), dir("plugins/dist"), dir("plugins/fixtures/dist")])
}

fn hostile_plan(registry: &Registry, variant: &str) -> Result<(), CallError> {
    let (plugin, model) = registry.find_model(&format!("hostile-{variant}")).expect("fixture model");
    plugin.plan(&reference_request(&model.name), &reference_shapes()[1]).map(|_| ())
}

fn good_plugin_answers(registry: &Registry) {
    let (plugin, _) = registry.find_model("phi-3.5-mini-instruct").unwrap();
    let plan = plugin.plan(&reference_request("phi-3.5-mini-instruct"), &reference_shapes()[1]).unwrap();
    assert_eq!(plan.resources.node_count, 1);
}

#[test]
fn endless_loop_is_stopped_at_the_deadline_and_quarantined() {
    let host = host();
    let registry = everything(&host);
    let started = Instant::now();
    let err = hostile_plan(&registry, "endless-loop").unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, CallError::Fault { fault: Fault::Timeout(_), .. }), "{err:?}");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(5), "stopped after {took:?}");
    let plugin = registry.plugins.iter().find(|p| p.name() == "hostile-endless-loop").unwrap();
    let again = plugin.plan(&reference_request("hostile-endless-loop"), &reference_shapes()[1]).unwrap_err();
    assert!(matches!(again, CallError::Quarantined { .. }), "{again:?}");
    let resolve = registry.find_model("hostile-endless-loop").unwrap_err();
    assert!(resolve.to_string().contains("quarantined: ran past its 1s deadline"), "{resolve}");
    good_plugin_answers(&registry);
}

#[test]
fn memory_hog_hits_the_cap() {
    let registry = everything(&host());
    let err = hostile_plan(&registry, "memory-hog").unwrap_err();
    assert!(matches!(err, CallError::Fault { fault: Fault::OutOfMemory(cap), .. } if cap == 64 << 20), "{err:?}");
    good_plugin_answers(&registry);
}

#[test]
fn trap_is_reported_with_the_plugin_name() {
    let registry = everything(&host());
    let err = hostile_plan(&registry, "trap").unwrap_err();
    assert!(matches!(err, CallError::Fault { fault: Fault::Trap(_), .. }), "{err:?}");
    assert!(err.to_string().contains("hostile-trap"), "{err}");
    good_plugin_answers(&registry);
}

#[test]
fn huge_output_is_rejected() {
    let registry = everything(&host());
    let err = hostile_plan(&registry, "huge-output").unwrap_err();
    let CallError::Fault { fault: Fault::InvalidOutput(msg), .. } = &err else { panic!("{err:?}") };
    assert!(msg.contains("workload.args has 200000 entries"), "{msg}");
    good_plugin_answers(&registry);
}

#[test]
fn privileged_container_is_rejected() {
    let registry = everything(&host());
    let err = hostile_plan(&registry, "privileged").unwrap_err();
    let CallError::Fault { fault: Fault::InvalidOutput(msg), .. } = &err else { panic!("{err:?}") };
    assert!(msg.contains("privileged containers are never allowed"), "{msg}");
    good_plugin_answers(&registry);
}

/// A tuning request for `model`: data from a URL, the adapter to a mounted directory.
fn tune_request(model: &str) -> kaito_plugin_host::TuneRequest {
    kaito_plugin_host::TuneRequest {
        workspace: "ws".into(),
        namespace: "default".into(),
        model: model.into(),
        method: "lora".into(),
        config_map: None,
        model_access_secret: None,
        image_registry: "ghcr.io/kaito-rs".into(),
        input: kaito_plugin_host::TuneInput::Urls(vec!["https://datasets.example.com/a.jsonl".into()]),
        output: kaito_plugin_host::TuneOutput::Directory("/mnt/output".into()),
        registry_configs: Vec::new(),
        scratch_dir: "/mnt/output".into(),
        annotations: Vec::new(),
    }
}

/// The tuning plan is held to the serving plan's rules: a privileged trainer is refused like a privileged server, and
/// a trap while planning a Job is the plugin's fault; a good preset plans one node and one GPU.
#[test]
fn tuning_plans_are_held_to_the_same_rules() {
    let registry = everything(&host());
    let (plugin, model) = registry.find_model("hostile-privileged").unwrap();
    let err = plugin.tune(&tune_request(&model.name), &reference_shapes()[1]).unwrap_err();
    let CallError::Fault { fault: Fault::InvalidOutput(msg), .. } = &err else { panic!("{err:?}") };
    assert!(msg.contains("privileged containers are never allowed"), "{msg}");
    let (plugin, model) = registry.find_model("hostile-trap").unwrap();
    let err = plugin.tune(&tune_request(&model.name), &reference_shapes()[1]).unwrap_err();
    assert!(matches!(err, CallError::Fault { fault: Fault::Trap(_), .. }), "{err:?}");
    let (plugin, _) = registry.find_model("phi-3.5-mini-instruct").unwrap();
    let plan = plugin.tune(&tune_request("phi-3.5-mini-instruct"), &reference_shapes()[1]).unwrap();
    assert_eq!((plan.resources.node_count, plan.workload.gpus_per_pod), (1, 1));
    assert_eq!(plan.workload.command, ["kaito-tune"]);
    // A provisioner has no tuning plan to give.
    let provisioner = registry.provisioner("gpu-provisioner").unwrap();
    let err = provisioner.tune(&tune_request("phi-3.5-mini-instruct"), &reference_shapes()[1]).unwrap_err();
    assert!(matches!(err, CallError::WrongKind { .. }), "{err:?}");
}

#[test]
fn host_path_is_rejected_unless_allowed() {
    let registry = everything(&host());
    let err = hostile_plan(&registry, "host-path").unwrap_err();
    let CallError::Fault { fault: Fault::InvalidOutput(msg), .. } = &err else { panic!("{err:?}") };
    assert!(msg.contains("hostPath \"/\" is not allowed"), "{msg}");
    good_plugin_answers(&registry);
}

#[test]
fn looping_metadata_quarantines_at_load_and_the_rest_loads() {
    let registry = everything(&host());
    let plugin = registry.plugins.iter().find(|p| p.file().ends_with("hostile-models-loop.wasm")).unwrap();
    assert!(plugin.metadata().is_none());
    assert!(plugin.quarantined().unwrap().contains("deadline"), "{:?}", plugin.quarantined());
    assert!(registry.of_kind(PluginKind::Provisioner).count() >= 2);
    good_plugin_answers(&registry);
}

#[test]
fn digest_pin_mismatch_refuses_the_plugin() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(dir("presets-wasm/dist").join("preset-phi.wasm"), tmp.path().join("preset-phi.wasm")).unwrap();
    std::fs::write(tmp.path().join("plugins.yaml"), "plugins:\n  - file: preset-phi.wasm\n    sha256: 0000\n").unwrap();
    let registry = host().load_dirs(&[tmp.path().to_path_buf()]);
    assert!(registry.plugins.is_empty());
    assert!(registry.failures[0].error.contains("manifest pins 0000"), "{:?}", registry.failures);
}

#[test]
fn non_component_and_foreign_components_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("junk.wasm"), b"not wasm at all").unwrap();
    let registry = host().load_dirs(&[tmp.path().to_path_buf()]);
    assert!(registry.failures[0].error.contains("not a valid Wasm component"), "{:?}", registry.failures);
}

#[test]
fn precompiled_cache_is_reused() {
    let cache = tempfile::tempdir().unwrap();
    let cfg = || HostConfig { cache_dir: Some(cache.path().to_path_buf()), ..Default::default() };
    let file = dir("presets-wasm/dist").join("preset-phi.wasm");
    let first = PluginHost::new(cfg()).unwrap().load_file(&file, None).unwrap();
    let second = PluginHost::new(cfg()).unwrap().load_file(&file, None).unwrap();
    assert_eq!(first.cache_outcome(), kaito_plugin_host::CacheOutcome::Compiled);
    assert_eq!(second.cache_outcome(), kaito_plugin_host::CacheOutcome::Hit);
    assert_eq!(first.models(), second.models());
}
