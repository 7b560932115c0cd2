//! The `kaito-operator` binary fails before touching any cluster, naming the flag, when its configuration cannot
//! work. (Being an integration test, this also makes `cargo test` build the binary the end-to-end tests run.)

use std::path::Path;
use std::process::Command;

#[test]
fn an_unknown_provisioner_is_refused_at_start_naming_the_flag() {
    let plugins = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../plugins/dist");
    assert!(plugins.is_dir(), "{} is missing: run `cargo xtask plugins` first", plugins.display());
    let cache = std::env::temp_dir().join(format!("kaito-operator-binary-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_kaito-operator"))
        .args(["--provisioner", "no-such-cloud", "--plugins"])
        .arg(&plugins)
        .arg("--plugin-cache")
        .arg(&cache)
        // A kubeconfig that would fail if it were read: the check must come first.
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .output()
        .expect("kaito-operator runs");
    let _ = std::fs::remove_dir_all(&cache);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("--provisioner no-such-cloud: no such provisioner plugin is loaded"), "{stderr}");
}
