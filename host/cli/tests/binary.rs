//! The real `kaito` binary: conformance suite on every shipped plugin and on
//! every hostile fixture, and the plugin listing. Needs `cargo xtask plugins`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().nth(2).unwrap().to_path_buf()
}

fn wasm_in(rel: &str) -> Vec<PathBuf> {
    let dir = root().join(rel);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|_| {
            panic!("{} missing: run `cargo xtask plugins` (and plugin-js, plugin-py) first", dir.display())
        })
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} has no plugins: run `cargo xtask plugins` first", dir.display());
    files
}

fn kaito(args: &[&str], cache: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kaito"))
        .args(args)
        .arg("--plugin-cache")
        .arg(cache)
        .env_remove("KAITO_PLUGIN_DIRS")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn conformance_passes_on_every_shipped_plugin() {
    let cache = tempfile::tempdir().unwrap();
    let mut files = wasm_in("presets-wasm/dist");
    files.extend(wasm_in("plugins/dist"));
    files.extend(wasm_in("plugins/polyglot/phi-py/dist"));
    files.extend(wasm_in("plugins/polyglot/phi-js/dist"));
    let mut args = vec!["plugins", "test"];
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    args.extend(names.iter().map(String::as_str));
    let out = kaito(&args, cache.path());
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("PASS plan phi-3.5-mini-instruct"), "{t}");
    assert!(t.contains("PASS rejects unknown instance type"), "{t}");
    assert!(t.contains(" 0 failed"), "{t}");
}

#[test]
fn conformance_fails_on_every_hostile_fixture() {
    let cache = tempfile::tempdir().unwrap();
    let expected = [
        ("endless-loop", "ran past its 1s deadline"),
        ("host-path", "hostPath \"/\" is not allowed"),
        ("huge-output", "workload.args has 200000 entries"),
        ("memory-hog", "tried to grow memory past its 67108864 byte cap"),
        ("models-loop", "ran past its 1s deadline"),
        ("privileged", "privileged containers are never allowed"),
        ("trap", "trapped"),
    ];
    let files = wasm_in("plugins/fixtures/dist");
    assert_eq!(files.len(), expected.len(), "{files:?}");
    for (variant, why) in expected {
        let file = root().join(format!("plugins/fixtures/dist/hostile-{variant}.wasm"));
        let out = kaito(&["plugins", "test", &file.display().to_string()], cache.path());
        let t = text(&out);
        assert_eq!(out.status.code(), Some(1), "{variant}: {t}");
        assert!(t.contains("FAIL") && t.contains(why), "{variant}: expected {why:?} in\n{t}");
    }
}

#[test]
fn list_shows_digest_contract_and_catalogs() {
    let cache = tempfile::tempdir().unwrap();
    let presets = root().join("presets-wasm/dist").display().to_string();
    let plugins = root().join("plugins/dist").display().to_string();
    let out = kaito(&["plugins", "list", "--plugins", &presets, "--plugins", &plugins], cache.path());
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    for want in [
        "preset-phi 0.1.0 (preset plugin, kaito:plugin@0.2.0)",
        "microsoft/Phi-3.5-mini-instruct",
        "gpu-provisioner",
        "Standard_ND96isr_H100_v5",
        "byo",
        "status:   ok",
    ] {
        assert!(t.contains(want), "missing {want:?} in\n{t}");
    }
    let digest = t.lines().find_map(|l| l.trim().strip_prefix("sha256:")).unwrap().trim();
    assert_eq!(digest.len(), 64, "{digest}");
}

#[test]
fn missing_plugin_dir_is_a_clear_error() {
    let cache = tempfile::tempdir().unwrap();
    let out = kaito(&["plugins", "list", "--plugins", "/nonexistent/plugins"], cache.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("cargo xtask plugins"), "{}", text(&out));
}
