//! Project automation: `cargo xtask <command>`.
//!
//! - `plugins`: build every guest crate under `plugins/` and `presets-wasm/`
//!   for wasm32-unknown-unknown and wrap it into a component.
//! - `quickstart`: build plugins and the `kaito` CLI, then render the seed's
//!   phi-3.5 Workspace.
//! - `plugin-js` / `plugin-py`: build the JavaScript / Python ports of the
//!   Phi preset (jco from npm with its lockfile; componentize-py from PyPI).
//! - `test`: everything CI checks (format, lints, guest and host tests).

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

const GUEST_TARGET: &str = "wasm32-unknown-unknown";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().nth(2).expect("repository root").to_path_buf()
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: {}", format!("{cmd:?}").replace('"', ""));
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn ensure_target() -> Result<()> {
    let out = Command::new("rustup").args(["target", "list", "--installed"]).output().context("running rustup")?;
    if !String::from_utf8_lossy(&out.stdout).lines().any(|l| l.trim() == GUEST_TARGET) {
        run(Command::new("rustup").args(["target", "add", GUEST_TARGET]))?;
    }
    Ok(())
}

fn guest_target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => PathBuf::from(d).join("guests"),
        None => root.join("plugins").join("target"),
    }
}

/// One component to build: a guest package, optionally with one feature.
struct Build {
    package: String,
    feature: Option<String>,
    output: PathBuf,
}

fn plan_builds(root: &Path) -> Result<Vec<Build>> {
    let out = cargo()
        .args(["metadata", "--format-version", "1", "--no-deps", "--manifest-path"])
        .arg(root.join("plugins/Cargo.toml"))
        .output()
        .context("cargo metadata")?;
    if !out.status.success() {
        bail!("cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let mut builds = Vec::new();
    for pkg in meta["packages"].as_array().context("packages")? {
        let is_cdylib = pkg["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|t| t["crate_types"].as_array().into_iter().flatten().any(|c| c == "cdylib"));
        if !is_cdylib {
            continue;
        }
        let name = pkg["name"].as_str().context("name")?.to_string();
        let manifest = PathBuf::from(pkg["manifest_path"].as_str().context("manifest_path")?);
        let dist = if manifest.starts_with(root.join("presets-wasm")) {
            root.join("presets-wasm/dist")
        } else if manifest.starts_with(root.join("plugins/fixtures")) {
            root.join("plugins/fixtures/dist")
        } else {
            root.join("plugins/dist")
        };
        let kaito = &pkg["metadata"]["kaito"];
        let stem = kaito["output"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| name.trim_start_matches("kaito-").to_string());
        match kaito["variants"].as_array() {
            Some(variants) => {
                for v in variants {
                    let v = v.as_str().context("variant")?;
                    builds.push(Build {
                        package: name.clone(),
                        feature: Some(v.into()),
                        output: dist.join(format!("{stem}-{v}.wasm")),
                    });
                }
            }
            None => builds.push(Build { package: name, feature: None, output: dist.join(format!("{stem}.wasm")) }),
        }
    }
    builds.sort_by(|a, b| a.output.cmp(&b.output));
    Ok(builds)
}

/// Build every guest and write components into the dist folders.
fn plugins() -> Result<()> {
    let root = root();
    ensure_target()?;
    let target_dir = guest_target_dir(&root);
    for b in plan_builds(&root)? {
        let mut cmd = cargo();
        // Run inside plugins/ so its .cargo/config.toml (guest link flags) applies.
        cmd.current_dir(root.join("plugins"))
            .args(["build", "--quiet", "--release", "--target", GUEST_TARGET, "--manifest-path"])
            .arg(root.join("plugins/Cargo.toml"))
            .args(["--package", &b.package])
            .env("CARGO_TARGET_DIR", &target_dir);
        if let Some(f) = &b.feature {
            cmd.args(["--features", f]);
        }
        run(&mut cmd)?;
        let module_path =
            target_dir.join(GUEST_TARGET).join("release").join(format!("{}.wasm", b.package.replace('-', "_")));
        let module = std::fs::read(&module_path).with_context(|| format!("reading {}", module_path.display()))?;
        let component = wit_component::ComponentEncoder::default()
            .module(&module)
            .and_then(|e| e.validate(true).encode())
            .with_context(|| format!("turning {} into a component", module_path.display()))?;
        std::fs::create_dir_all(b.output.parent().expect("dist dir"))?;
        std::fs::write(&b.output, &component)?;
        eprintln!(
            "xtask: wrote {} ({} bytes)",
            b.output.strip_prefix(&root).unwrap_or(&b.output).display(),
            component.len()
        );
    }
    Ok(())
}

/// componentize-py release the Python preset is built with.
const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";

/// Build the JavaScript Phi preset: `npm ci` (lockfile pins jco) then `npm run build`.
fn plugin_js() -> Result<()> {
    let dir = root().join("plugins/polyglot/phi-js");
    std::fs::create_dir_all(dir.join("dist"))?;
    if !dir.join("node_modules/.package-lock.json").is_file() {
        run(Command::new("npm").current_dir(&dir).args(["ci", "--no-audit", "--no-fund"]))?;
    }
    run(Command::new("npm").current_dir(&dir).args(["run", "--silent", "build"]))
}

/// Build the Python Phi preset with componentize-py from a venv kept outside the repository.
fn plugin_py() -> Result<()> {
    let dir = root().join("plugins/polyglot/phi-py");
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    let venv = PathBuf::from(home).join(".cache/kaito/componentize-py");
    let tool = venv.join("bin/componentize-py");
    if !tool.is_file() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
        run(Command::new(venv.join("bin/pip")).args(["install", "--quiet", COMPONENTIZE_PY]))?;
    }
    std::fs::create_dir_all(dir.join("dist"))?;
    run(Command::new(tool).current_dir(&dir).args([
        "-d",
        "../../../wit/v0.1.0",
        "-w",
        "preset",
        "componentize",
        "--stub-wasi",
        "app",
        "-o",
        "dist/preset-phi-py.wasm",
    ]))
}

fn quickstart() -> Result<()> {
    plugins()?;
    let root = root();
    run(cargo()
        .current_dir(&root)
        .args(["run", "--quiet", "--package", "kaito-cli", "--bin", "kaito", "--", "render", "-f"])
        .arg(root.join("examples/inference/kaito_workspace_phi_3.5-instruct.yaml")))
}

fn test() -> Result<()> {
    plugins()?;
    plugin_js()?;
    plugin_py()?;
    let root = root();
    run(cargo().current_dir(&root).args(["fmt", "--all", "--check"]))?;
    run(cargo().current_dir(root.join("plugins")).args(["fmt", "--all", "--check"]))?;
    run(cargo().current_dir(&root).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--quiet",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(cargo()
        .current_dir(root.join("plugins"))
        .args(["clippy", "--workspace", "--all-targets", "--quiet", "--", "-D", "warnings"])
        .env("CARGO_TARGET_DIR", guest_target_dir(&root)))?;
    run(cargo()
        .current_dir(root.join("plugins"))
        .args(["test", "--workspace", "--quiet"])
        .env("CARGO_TARGET_DIR", guest_target_dir(&root)))?;
    run(cargo().current_dir(&root).args(["test", "--workspace"]))
}

fn main() -> Result<()> {
    let cmd = std::env::args().nth(1).unwrap_or_default();
    match cmd.as_str() {
        "plugins" => plugins(),
        "plugin-js" => plugin_js(),
        "plugin-py" => plugin_py(),
        "quickstart" => quickstart(),
        "test" => test(),
        _ => {
            eprintln!("usage: cargo xtask <plugins|plugin-js|plugin-py|quickstart|test>");
            std::process::exit(2)
        }
    }
}
