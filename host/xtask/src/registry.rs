//! `cargo xtask registry build|up|down`: a real OCI registry (CNCF Distribution) and `oras`, an independent OCI
//! client, for the tests of the OCI module.
//!
//! Both are upstream's, built from the Go module proxy by the consumer module in `tests/oci-testenv/` (its `tool`
//! lines and committed go.sum pin them) and cached under `~/.cache/kaito/oci-testenv/<key>/`, keyed by the pins.
//! `up` serves plain HTTP on 127.0.0.1 with filesystem storage in its state directory and prints `host:port` as the
//! last line of stdout.

use crate::cluster::{free_port, go_in, spawn, stop, wait_until};
use crate::{home, root, run};
use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::time::Instant;

/// The packages `build` makes binaries of (named after their last path element).
const PACKAGES: &[&str] = &["github.com/distribution/distribution/v3/cmd/registry", "oras.land/oras/cmd/oras"];

fn module_dir() -> PathBuf {
    root().join("tests/oci-testenv")
}

/// Where a running registry keeps its state (config, blobs, log, pid).
pub fn state_dir() -> Result<PathBuf> {
    Ok(std::env::var_os("KAITO_REGISTRY_DIR").map(PathBuf::from).unwrap_or(home()?.join(".cache/kaito/registry")))
}

fn cache_key() -> Result<String> {
    let mut h = Sha256::new();
    for f in ["go.mod", "go.sum"] {
        h.update(std::fs::read(module_dir().join(f)).with_context(|| format!("reading tests/oci-testenv/{f}"))?);
    }
    let version = go_in(&module_dir())?.arg("version").output().context("running go (Go 1.26 is needed)")?;
    h.update(version.stdout);
    Ok(hex::encode(&h.finalize()[..8]))
}

/// `registry build`: the registry and oras binaries, built once per pin set; returns their directory.
pub fn build() -> Result<PathBuf> {
    let dir = home()?.join(".cache/kaito/oci-testenv").join(cache_key()?);
    if PACKAGES.iter().all(|p| dir.join(p.rsplit('/').next().unwrap_or(p)).is_file()) {
        return Ok(dir);
    }
    let tmp = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let started = Instant::now();
    run(go_in(&module_dir())?.args(["build", "-trimpath", "-ldflags", "-s -w", "-o"]).arg(&tmp).args(PACKAGES))?;
    eprintln!("xtask: registry and oras built in {:.0} s", started.elapsed().as_secs_f64());
    std::fs::rename(&tmp, &dir)?;
    Ok(dir)
}

/// `registry up`: a fresh registry on a free localhost port; returns its `host:port`.
pub fn up() -> Result<String> {
    let bin = build()?;
    down()?;
    let state = state_dir()?;
    std::fs::create_dir_all(state.join("logs"))?;
    let port = free_port()?;
    let addr = format!("127.0.0.1:{port}");
    let config = state.join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            state.join("data").display()
        ),
    )?;
    spawn(&state, "registry", &bin.join("registry"), &["serve".into(), config.display().to_string()])?;
    wait_until("the registry", &state, "registry.log", 30, || answers_v2(&addr))?;
    std::fs::write(state.join("address"), &addr)?;
    Ok(addr)
}

/// Whether `GET /v2/` at `addr` answers 200, the distribution spec's "this is a registry" check.
fn answers_v2(addr: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut conn) = std::net::TcpStream::connect(addr) else { return false };
    let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(2)));
    if conn.write_all(format!("GET /v2/ HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    conn.read_exact(&mut head).is_ok() && head.ends_with(b" 200")
}

/// `registry down`: stop it and remove its state.
pub fn down() -> Result<()> {
    stop(&state_dir()?)
}
