//! Helpers shared by the cross-crate tests in `tests/tests/`.

pub mod cluster;
pub mod e2e;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// One artifact cache for every test in this process: artifacts are keyed by
/// digest and written atomically, so sharing is safe and saves recompiling
/// each plugin in every test.
pub fn shared_cache() -> &'static Path {
    static CACHE: OnceLock<tempfile::TempDir> = OnceLock::new();
    CACHE.get_or_init(|| tempfile::tempdir().expect("temporary directory")).path()
}

/// Repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repository root").to_path_buf()
}

/// A built plugin directory; panics with the fix when it is missing.
pub fn plugin_dir(rel: &str) -> PathBuf {
    let d = root().join(rel);
    let has_wasm = std::fs::read_dir(&d)
        .map(|rd| rd.flatten().any(|e| e.path().extension().is_some_and(|x| x == "wasm")))
        .unwrap_or(false);
    assert!(has_wasm, "{} has no plugins: run `cargo xtask plugins` first", d.display());
    d
}

/// Output of one in-process `kaito` run.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Run `kaito` in-process with the shipped plugins and a private artifact cache.
pub fn kaito(args: &[&str], cache: &Path) -> Run {
    kaito_with(args, &[plugin_dir("presets-wasm/dist"), plugin_dir("plugins/dist")], cache)
}

/// Run `kaito` in-process with `dirs` as plugin directories (for render and list).
pub fn kaito_with(args: &[&str], dirs: &[PathBuf], cache: &Path) -> Run {
    let mut argv: Vec<String> =
        std::iter::once("kaito".to_string()).chain(args.iter().map(|s| s.to_string())).collect();
    if matches!(args.first(), Some(&"render")) || matches!(args.get(1), Some(&"list")) {
        for d in dirs {
            argv.extend(["--plugins".into(), d.display().to_string()]);
        }
    }
    argv.extend(["--plugin-cache".into(), cache.display().to_string()]);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = kaito_cli::run(argv, &mut out, &mut err);
    Run { code, stdout: String::from_utf8(out).expect("utf-8"), stderr: String::from_utf8(err).expect("utf-8") }
}

/// Compare `actual` with the golden file `tests/golden/<name>`; `KAITO_BLESS=1` rewrites it.
pub fn golden(name: &str, actual: &str) {
    let path = root().join("tests/golden").join(name);
    if std::env::var_os("KAITO_BLESS").is_some() {
        std::fs::write(&path, actual).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} is missing: run with KAITO_BLESS=1 to create it", path.display()));
    assert!(
        expected == actual,
        "{} differs from the render (KAITO_BLESS=1 rewrites it)\n--- expected\n{expected}\n--- actual\n{actual}",
        path.display()
    );
}

/// Every shipped preset and provisioner, loaded once per test process.
pub fn shipped_registry() -> std::sync::Arc<kaito_plugin_host::Registry> {
    static REGISTRY: OnceLock<std::sync::Arc<kaito_plugin_host::Registry>> = OnceLock::new();
    REGISTRY
        .get_or_init(|| {
            let host = kaito_plugin_host::PluginHost::new(kaito_plugin_host::HostConfig {
                cache_dir: Some(shared_cache().to_path_buf()),
                ..Default::default()
            })
            .expect("plugin host");
            let registry = host.load_dirs(&[plugin_dir("presets-wasm/dist"), plugin_dir("plugins/dist")]);
            assert!(registry.failures.is_empty(), "{:?}", registry.failures);
            std::sync::Arc::new(registry)
        })
        .clone()
}

/// An operator context over `cluster`, with the named provisioner plugin.
/// Plugin options as the operator's flags give them: the repository's built presets and provisioners, a plugin
/// cache in `cache`, and `extra` flags (e.g. `--plain-http`).
pub fn shipped_plugin_args(cache: &std::path::Path, extra: &[&str]) -> kaito_workload::plugin_args::PluginArgs {
    #[derive(clap::Parser)]
    struct Flags {
        #[command(flatten)]
        plugins: kaito_workload::plugin_args::PluginArgs,
    }
    let (presets, provisioners) = (plugin_dir("presets-wasm/dist"), plugin_dir("plugins/dist"));
    let mut argv = vec!["operator".to_string(), "--plugins".into(), presets.display().to_string()];
    argv.extend(["--plugins".into(), provisioners.display().to_string()]);
    argv.extend(["--plugin-cache".into(), cache.display().to_string()]);
    argv.extend(extra.iter().map(|s| s.to_string()));
    <Flags as clap::Parser>::parse_from(argv).plugins
}

/// An operator context on the in-memory `cluster` with the plugins `registry` holds.
pub fn operator_context(
    cluster: &cluster::Cluster,
    registry: std::sync::Arc<kaito_plugin_host::Registry>,
    provisioner: &str,
) -> std::sync::Arc<kaito_operator::Context> {
    let config = kaito_operator::Config { provisioner: provisioner.into(), ..Default::default() };
    std::sync::Arc::new(kaito_operator::Context::new(cluster.client(), registry, config, Default::default()))
}

/// Reconciles the object at `collection`/`namespace`/`name` of `cluster` as kube-runtime's Controller would: a
/// reconcile that only added the finalizer is followed by the one its watch event brings, and a cleanup that waits
/// yields `error_policy`'s requeue. Any other error fails the test.
pub async fn reconcile_as_controller<K: kaito_operator::Owner>(
    cluster: &cluster::Cluster,
    ctx: &std::sync::Arc<kaito_operator::Context>,
    collection: &str,
    namespace: &str,
    name: &str,
) -> kube::runtime::controller::Action {
    loop {
        let live = cluster.get(collection, namespace, name).unwrap_or_else(|| panic!("{name} exists"));
        let had_finalizer =
            live["metadata"]["finalizers"].as_array().is_some_and(|f| f.iter().any(|f| f == K::FINALIZER));
        let object: std::sync::Arc<K> = std::sync::Arc::new(serde_json::from_value(live).expect("object deserialises"));
        match kaito_operator::reconcile(object.clone(), ctx.clone()).await {
            Ok(action) if !had_finalizer && action == kube::runtime::controller::Action::await_change() => continue,
            Ok(action) => return action,
            Err(e) if e.is_waiting() => return kaito_operator::error_policy(object, &e, ctx.clone()),
            Err(e) => panic!("reconcile of {name} failed: {e}"),
        }
    }
}

/// A YAML document as JSON.
pub fn yaml(text: &str) -> serde_json::Value {
    serde_yaml::from_str(text).expect("valid YAML")
}

/// KAITO v0.12's node estimator, written again here from its documented arithmetic as an independent reference
/// (not through our plugins): loaded size = weights x 1.02; per GPU, 0.84 of its memory less a 2.3 GiB reserve and
/// the KV cache of 2048 tokens spread over the node's GPUs, over 1.05; GPUs = floor(size / that) + 1; nodes =
/// GPUs / GPUs per node, rounded up. Parallelism: data-parallel over the node's GPUs when one node suffices and the
/// model is under half a GPU, else tensor over the node's GPUs and pipeline over the nodes. `None`: does not fit.
pub fn kaito_estimate(
    weights_bytes: u64,
    bytes_per_token: u64,
    shape: &kaito_plugin_host::GpuShape,
) -> Option<(u32, u32, u32, u32)> {
    const GIB: f64 = (1u64 << 30) as f64;
    let size = weights_bytes as f64 * 1.02;
    let per_gpu = shape.gpu_memory_bytes as f64;
    let reserve = 2.3 * GIB + 2048.0 * bytes_per_token as f64 / shape.gpus_per_node as f64;
    let available = per_gpu * 0.84;
    if available <= reserve {
        return None;
    }
    let gpus = (size / ((available - reserve) / 1.05)).floor() as u32 + 1;
    let nodes = gpus.div_ceil(shape.gpus_per_node);
    if nodes > shape.max_nodes {
        return None;
    }
    let gpn = shape.gpus_per_node;
    Some(if nodes == 1 && size < per_gpu / 2.0 && gpn > 1 { (nodes, 1, 1, gpn) } else { (nodes, gpn, nodes, 1) })
}
