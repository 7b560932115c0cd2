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
    let host = flags.plugins.host().unwrap();
    let registry = Arc::new(flags.plugins.registry(&host, &mut std::io::sink()).unwrap());
    let cluster = Cluster::new();
    let ctx = operator_context(&cluster, registry, "gpu-provisioner");
    let mut reloader = Reloader::new(flags.plugins.clone(), flags.plugins.host().unwrap());
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
