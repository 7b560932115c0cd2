//! Plugin hot reload in the operator (`kaito_operator::reload`): a changed plugin directory is loaded beside the
//! current set, new plugins run the conformance suite, and the set is swapped in one step; a reconcile in flight
//! keeps the set it holds; a replacement that does not load or does not conform is refused and the plugin it would
//! replace keeps serving.

use clap::Parser;
use kaito_operator::reload::Reloader;
use kaito_tests::cluster::Cluster;
use kaito_tests::{operator_context, plugin_dir};
use kaito_workload::plugin_args::PluginArgs;
use std::sync::Arc;

#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    plugins: PluginArgs,
}

#[tokio::test]
async fn a_changed_plugin_directory_is_swapped_in_and_a_bad_replacement_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let copy = |from: std::path::PathBuf, name: &str| std::fs::copy(from, dir.path().join(name)).unwrap();
    copy(plugin_dir("presets-wasm/dist").join("preset-phi.wasm"), "preset-phi.wasm");
    copy(plugin_dir("plugins/dist").join("provisioner-azure.wasm"), "provisioner-azure.wasm");
    let flags = Flags::parse_from([
        "operator",
        "--plugins",
        &dir.path().display().to_string(),
        "--plugin-cache",
        &cache.path().display().to_string(),
    ]);
    let plugins = flags.plugins;
    let host = plugins.host().unwrap();
    let registry = Arc::new(plugins.registry(&host, &mut std::io::sink()).unwrap());
    let cluster = Cluster::new();
    let ctx = operator_context(&cluster, registry, "gpu-provisioner");
    let mut reloader = Reloader::new(plugins.clone(), plugins.host().unwrap(), None);
    let model = "phi-3.5-mini-instruct";
    let serving =
        |r: &kaito_plugin_host::Registry| r.find_model(model).expect("a plugin serves phi").0.digest().to_string();
    let first = serving(&ctx.registry());
    assert_eq!(reloader.check(&ctx).unwrap(), None, "nothing changed, nothing reloaded");
    let generation = *ctx.plugin_generation.borrow();

    // A file that is no component replaces the Phi preset, and a plugin that traps is added: both refused.
    std::fs::write(dir.path().join("preset-phi.wasm"), b"not a component").unwrap();
    copy(plugin_dir("plugins/fixtures/dist").join("hostile-trap.wasm"), "hostile-trap.wasm");
    let outcome = reloader.check(&ctx).unwrap().expect("the directory changed");
    assert_eq!(outcome.refused.len(), 2, "{outcome:?}");
    assert!(outcome.refused.iter().any(|r| r.contains("preset-phi.wasm")), "{outcome:?}");
    assert!(outcome.refused.iter().any(|r| r.starts_with("hostile-trap")), "{outcome:?}");
    assert_eq!(serving(&ctx.registry()), first, "the old Phi preset keeps serving");
    assert!(ctx.registry().plugins.iter().all(|p| p.name() != "hostile-trap"));
    assert!(ctx.metrics.encode().contains("kaito_plugin_reloads_total{outcome=\"refused\"} 1"));

    // A conforming replacement (the Python port of the same preset) is swapped in; a reconcile that holds the old
    // set finishes on it.
    std::fs::remove_file(dir.path().join("hostile-trap.wasm")).unwrap();
    let in_flight = ctx.registry();
    copy(plugin_dir("plugins/polyglot/phi-py/dist").join("preset-phi-py.wasm"), "preset-phi.wasm");
    let outcome = reloader.check(&ctx).unwrap().expect("the directory changed");
    assert!(outcome.refused.is_empty(), "{outcome:?}");
    assert_eq!(outcome.added.len(), 1, "only the new plugin ran the conformance suite: {outcome:?}");
    let now = serving(&ctx.registry());
    assert_ne!(now, first, "the new Phi preset serves");
    assert_eq!(serving(&in_flight), first, "a call in flight keeps the set it started with");
    assert!(*ctx.plugin_generation.borrow() > generation, "the controllers are told to reconcile everything");
    assert!(ctx.registry().provisioner("gpu-provisioner").is_ok(), "unchanged plugins stay");
}

/// The operator's ConfigMap of plugin references (`--plugin-configmap`), against the real registry: an entry
/// overrides the built-in plugin of its name; a bad entry (a trapping plugin, not `oci://`, unpinned) is refused on
/// its own while the entry's previous plugin keeps serving; removing the entry brings the built-in back.
#[tokio::test]
async fn configmap_references_override_and_refuse_entry_by_entry() {
    let Some((registry, _)) = kaito_tests::e2e::registry("configmap_references_override_and_refuse_entry_by_entry")
    else {
        return;
    };
    let oci = kaito_oci::Oci::new(kaito_oci::Options { plain_http: true, ..kaito_oci::Options::new() });
    let push = async |file: std::path::PathBuf, repo: &str| {
        let reference = kaito_oci::parse(&format!("{registry}/reload/{repo}:1")).unwrap();
        format!("oci://{}", oci.push_wasm(&std::fs::read(&file).unwrap(), &reference, repo).await.unwrap())
    };
    let py_file = plugin_dir("plugins/polyglot/phi-py/dist").join("preset-phi-py.wasm");
    let py = push(py_file.clone(), "phi-py").await;
    let trap = push(plugin_dir("plugins/fixtures/dist").join("hostile-trap.wasm"), "trap").await;
    let cache = tempfile::tempdir().unwrap();
    let plugins = kaito_tests::shipped_plugin_args(cache.path(), &["--plain-http"]);
    let host = plugins.host().unwrap();
    let registry_set = Arc::new(plugins.registry(&host, &mut std::io::sink()).unwrap());
    let cluster = Cluster::new();
    let ctx = operator_context(&cluster, registry_set, "gpu-provisioner");
    let (tx, rx) = tokio::sync::watch::channel(None);
    let mut reloader = Reloader::new(plugins.clone(), host, Some(rx));
    let serving = |ctx: &kaito_operator::context::Context| {
        ctx.registry().find_model("phi-3.5-mini-instruct").expect("a plugin serves phi").0.digest().to_string()
    };
    let built_in = serving(&ctx);
    let entries = |pairs: &[(&str, &str)]| Some(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());

    tx.send(entries(&[("phi", &py)])).unwrap();
    let outcome = reloader.check(&ctx).unwrap().expect("the ConfigMap changed");
    assert!(outcome.refused.is_empty(), "{outcome:?}");
    let py_digest = serving(&ctx);
    assert_ne!(py_digest, built_in, "the entry overrides the built-in Phi preset");
    let sum = std::process::Command::new("sha256sum").arg(&py_file).output().expect("sha256sum runs");
    assert!(String::from_utf8(sum.stdout).unwrap().starts_with(&py_digest), "the pushed build serves");

    let unpinned = format!("oci://{registry}/reload/phi-py:1");
    tx.send(entries(&[("phi", &trap), ("bare", "registry.example/x@sha256:00"), ("moving", &unpinned)])).unwrap();
    let outcome = reloader.check(&ctx).unwrap().expect("the ConfigMap changed");
    assert_eq!(outcome.refused.len(), 3, "{outcome:?}");
    for (entry, why) in [("phi", "hostile-trap"), ("bare", "not a plugin reference"), ("moving", "digest")] {
        assert!(
            outcome.refused.iter().any(|r| r.contains(&format!("ConfigMap entry {entry}")) && r.contains(why)),
            "{entry}: {why}: {outcome:?}"
        );
    }
    assert_eq!(serving(&ctx), py_digest, "the entry's previous plugin keeps serving");
    assert!(ctx.registry().plugins.iter().all(|p| p.name() != "hostile-trap"));

    tx.send(entries(&[])).unwrap();
    reloader.check(&ctx).unwrap().expect("the ConfigMap changed");
    assert_eq!(serving(&ctx), built_in, "without the entry the built-in preset serves again");
    assert!(ctx.registry().provisioner("gpu-provisioner").is_ok());
}
