//! Harness of the end-to-end tests on the real local control plane (`cargo xtask cluster up`): the cluster's
//! admin client, real `helm` and `kubectl`, and the real `kaito-operator` binary run as a chart's ServiceAccount.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// Environment variable naming the admin kubeconfig of the local test cluster (set by `cargo xtask test`).
pub const KUBECONFIG_ENV: &str = "KAITO_E2E_KUBECONFIG";
/// `KAITO_E2E=local-only` is the one way to run the test suite without a cluster.
pub const MODE_ENV: &str = "KAITO_E2E";
/// The namespace both charts are installed into, as in the README.
pub const SYSTEM_NAMESPACE: &str = "kaito-system";

/// The local cluster, or `None` when the run was declared local-only; panics, with the fix, when there is none.
pub fn cluster_kubeconfig(test: &str) -> Option<PathBuf> {
    match std::env::var_os(KUBECONFIG_ENV) {
        Some(path) => {
            let path = PathBuf::from(path);
            assert!(path.is_file(), "{KUBECONFIG_ENV}={} does not exist: run `cargo xtask cluster up`", path.display());
            Some(path)
        }
        None if std::env::var(MODE_ENV).as_deref() == Ok("local-only") => {
            eprintln!("SKIPPED {test}: {MODE_ENV}=local-only (no cluster)");
            None
        }
        None => panic!(
            "{test} needs the local control plane: run `cargo xtask test` (it starts one), or `cargo xtask cluster up` and set {KUBECONFIG_ENV} to the path it prints; set {MODE_ENV}=local-only to skip the end-to-end tests explicitly"
        ),
    }
}

/// Environment variable with the `host:port` of the local OCI registry (set by `cargo xtask test`).
pub const REGISTRY_ENV: &str = "KAITO_E2E_REGISTRY";
/// Environment variable with the path of the `oras` binary built beside it.
pub const ORAS_ENV: &str = "KAITO_ORAS";

/// The local OCI registry (CNCF Distribution) and `oras`, or `None` when the run was declared local-only; panics,
/// with the fix, when there is none.
pub fn registry(test: &str) -> Option<(String, PathBuf)> {
    match (std::env::var(REGISTRY_ENV), std::env::var_os(ORAS_ENV)) {
        (Ok(addr), Some(oras)) => {
            let oras = PathBuf::from(oras);
            assert!(oras.is_file(), "{ORAS_ENV}={} does not exist: run `cargo xtask registry build`", oras.display());
            Some((addr, oras))
        }
        _ if std::env::var(MODE_ENV).as_deref() == Ok("local-only") => {
            eprintln!("SKIPPED {test}: {MODE_ENV}=local-only (no registry)");
            None
        }
        _ => panic!(
            "{test} needs the local OCI registry: run `cargo xtask test` (it starts one), or `cargo xtask registry up` and set {REGISTRY_ENV} to the address it prints and {ORAS_ENV} to the oras in the directory `cargo xtask registry build` prints; set {MODE_ENV}=local-only to skip"
        ),
    }
}

/// The end-to-end scenarios share one cluster and run one at a time: each starts operators that reconcile every
/// Workspace in the cluster, with its own provisioner.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// Directory of the real `helm` and `kubectl` (`cargo xtask tools`).
pub fn tools_dir() -> PathBuf {
    let dir = std::env::var_os("KAITO_TOOLS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/kaito/bin"));
    assert!(
        dir.join("helm").is_file() && dir.join("kubectl").is_file(),
        "no helm/kubectl in {}: run `cargo xtask tools`",
        dir.display()
    );
    dir
}

/// Output of one command.
#[derive(Debug)]
pub struct Output {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `line` (a `helm …` or `kubectl …` command line, split on whitespace) against the cluster, from the repository root.
pub fn sh(kubeconfig: &Path, line: &str) -> Output {
    let mut words = line.split_whitespace();
    let program = words.next().expect("a command");
    let out = Command::new(tools_dir().join(program))
        .args(words)
        .current_dir(crate::root())
        .env("KUBECONFIG", kubeconfig)
        .env("HELM_CACHE_HOME", std::env::temp_dir().join("kaito-e2e-helm/cache"))
        .env("HELM_CONFIG_HOME", std::env::temp_dir().join("kaito-e2e-helm/config"))
        .env("HELM_DATA_HOME", std::env::temp_dir().join("kaito-e2e-helm/data"))
        .output()
        .unwrap_or_else(|e| panic!("running {line}: {e}"));
    Output {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

/// Like [`sh`], panicking with the command's output when it fails.
pub fn sh_ok(kubeconfig: &Path, line: &str) -> String {
    let out = sh(kubeconfig, line);
    assert!(out.ok, "`{line}` failed:\n{}{}", out.stdout, out.stderr);
    out.stdout
}

/// A client for `kubeconfig` (the cluster's admin one, or a ServiceAccount's).
pub async fn admin(kubeconfig: &Path) -> Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.expect("client config");
    Client::try_from(config).expect("client")
}

/// The commands of the README's "Install with Helm" block, in order (the tests run them word for word).
pub fn readme_install_commands() -> Vec<String> {
    let readme = std::fs::read_to_string(crate::root().join("README.md")).expect("README.md");
    let section = readme.split("\n## Install with Helm\n").nth(1).expect("the README has an Install with Helm section");
    let block = section.split("```sh\n").nth(1).and_then(|b| b.split("```").next()).expect("a sh block");
    block
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// The README's `kubectl apply` line for the example whose file name mentions `kind` (`workspace`, `ragengine`).
pub fn readme_apply(kind: &str) -> String {
    readme_install_commands()
        .into_iter()
        .find(|l| l.starts_with("kubectl apply") && l.contains(kind))
        .unwrap_or_else(|| panic!("the README's Install with Helm block applies no {kind} example"))
}

/// Polls `probe` every 250 ms until it returns `Some`, panicking after `secs` with `what`.
pub async fn wait_for<T>(what: &str, secs: u64, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out after {secs} s waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A kubeconfig for `namespace/service_account`, holding a token from the TokenRequest API: what a pod of the
/// chart's Deployment would be given.
pub async fn service_account_kubeconfig(
    client: &Client,
    admin_kubeconfig: &Path,
    namespace: &str,
    service_account: &str,
    out: &Path,
) {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let request: TokenRequest =
        serde_json::from_value(json!({"spec": {"audiences": [], "expirationSeconds": 3600}})).expect("TokenRequest");
    let issued: TokenRequest = api
        .create_subresource("token", service_account, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| panic!("TokenRequest for {namespace}/{service_account}: {e}"));
    let token = issued.status.expect("a token").token;
    let mut kc: Value =
        serde_yaml::from_str(&std::fs::read_to_string(admin_kubeconfig).expect("kubeconfig")).expect("yaml");
    kc["users"] = json!([{"name": service_account, "user": {"token": token}}]);
    kc["contexts"][0]["context"]["user"] = service_account.into();
    std::fs::write(out, serde_yaml::to_string(&kc).expect("yaml")).expect("write kubeconfig");
}

/// Path of the `kaito-operator` binary `cargo xtask test` built (beside this test binary's directory).
pub fn operator_binary() -> PathBuf {
    let bin = std::env::var_os("KAITO_OPERATOR_BIN").map(PathBuf::from).unwrap_or_else(|| {
        let exe = std::env::current_exe().expect("test binary path");
        exe.parent().and_then(Path::parent).expect("target/debug").join("kaito-operator")
    });
    assert!(bin.is_file(), "{} does not exist: build it with `cargo build -p kaito-operator`", bin.display());
    bin
}

/// A running `kaito-operator` process, killed when dropped.
pub struct Operator {
    child: Child,
    pub identity: String,
    pub log: PathBuf,
    pub metrics_port: u16,
    /// Port of its conversion webhook, when the chart's Deployment runs one (`https://127.0.0.1:PORT/convert`).
    pub webhook_port: u16,
}

impl Operator {
    /// Starts the real binary with the container arguments of the chart's Deployment `deployment` (plugin paths,
    /// cache, metrics and webhook addresses mapped to this machine; `overrides` replace flags of the same name), as the
    /// Deployment's ServiceAccount.
    pub async fn start(admin_kubeconfig: &Path, deployment: &str, identity: &str, overrides: &[&str]) -> Operator {
        let client = admin(admin_kubeconfig).await;
        let deploy = Api::<Deployment>::namespaced(client.clone(), SYSTEM_NAMESPACE)
            .get(deployment)
            .await
            .unwrap_or_else(|e| panic!("the chart's Deployment {deployment}: {e}"));
        let pod = deploy.spec.expect("spec").template.spec.expect("pod spec");
        let service_account = pod.service_account_name.expect("the chart names a ServiceAccount");
        let container_args = pod.containers[0].args.clone().unwrap_or_default();
        let dir = std::env::temp_dir().join(format!("kaito-e2e-{}", std::process::id())).join(identity);
        std::fs::create_dir_all(&dir).expect("operator dir");
        let kubeconfig = dir.join("kubeconfig");
        service_account_kubeconfig(&client, admin_kubeconfig, SYSTEM_NAMESPACE, &service_account, &kubeconfig).await;
        let free_port = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let (metrics_port, webhook_port) = (free_port(), free_port());
        let flag = |a: &str| a.split('=').next().unwrap_or_default().to_string();
        let mut args: Vec<String> = container_args
            .iter()
            .filter(|a| !overrides.iter().any(|o| flag(o) == flag(a)))
            .map(|a| match (flag(a).as_str(), a.split_once('=').map(|(_, v)| v)) {
                ("--plugins", Some("/opt/kaito/plugins/presets")) => {
                    format!("--plugins={}", crate::plugin_dir("presets-wasm/dist").display())
                }
                ("--plugins", Some("/opt/kaito/plugins/provisioners")) => {
                    format!("--plugins={}", crate::plugin_dir("plugins/dist").display())
                }
                ("--plugin-cache", _) => format!("--plugin-cache={}", crate::shared_cache().display()),
                ("--metrics-addr", _) => format!("--metrics-addr=127.0.0.1:{metrics_port}"),
                // The API server cannot reach a Service here (no kube-proxy): the webhook is registered by URL,
                // each process its own, so the CRD points at the operator started last.
                ("--webhook-service", _) => format!("--webhook-url=https://127.0.0.1:{webhook_port}/convert"),
                ("--webhook-addr", _) => format!("--webhook-addr=127.0.0.1:{webhook_port}"),
                _ => a.clone(),
            })
            .collect();
        args.extend(overrides.iter().map(|o| o.to_string()));
        let log = dir.join(format!(
            "operator-{}.log",
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
        ));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(operator_binary())
            .args(&args)
            .env("KUBECONFIG", &kubeconfig)
            .env("POD_NAME", identity)
            .env("POD_NAMESPACE", SYSTEM_NAMESPACE)
            .env("RUST_LOG", "info,kube=warn")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .spawn()
            .expect("starting kaito-operator");
        let op = Operator { child, identity: identity.into(), log, metrics_port, webhook_port };
        let port = op.metrics_port;
        wait_for(&format!("operator {identity} to listen on its metrics port"), 60, async || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
        })
        .await;
        op
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_none()
    }

    /// SIGKILL, as a crashed or evicted pod: no Lease release, no graceful shutdown.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait: the operator releases its Lease.
    pub fn terminate(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        for _ in 0..100 {
            if !self.running() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.kill();
    }

    /// The process's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Requests the API server denied (403) to a service account of `namespace`, from the audit log that
/// `cargo xtask cluster up` keeps beside the kubeconfig: `verb resource (name)` each.
pub fn forbidden_requests(admin_kubeconfig: &Path, namespace: &str) -> Vec<String> {
    let audit = admin_kubeconfig.parent().expect("state dir").join("audit.log");
    let text = std::fs::read_to_string(&audit).unwrap_or_else(|e| panic!("audit log {}: {e}", audit.display()));
    let prefix = format!("system:serviceaccount:{namespace}:");
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["user"]["username"].as_str().is_some_and(|u| u.starts_with(&prefix)))
        .filter(|e| e["responseStatus"]["code"] == 403)
        .map(|e| {
            format!(
                "{} {} {}/{} {}",
                e["user"]["username"].as_str().unwrap_or_default(),
                e["verb"].as_str().unwrap_or_default(),
                e["objectRef"]["apiGroup"].as_str().unwrap_or_default(),
                e["objectRef"]["resource"].as_str().unwrap_or_default(),
                e["objectRef"]["name"].as_str().unwrap_or_default()
            )
        })
        .collect()
}

/// What every end-to-end test starts from: the cluster (charts installed), its admin client, and the turn to run.
pub struct Env {
    pub kubeconfig: PathBuf,
    pub client: Client,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

impl Env {
    /// `None` when the run is local-only (see [`cluster_kubeconfig`]).
    pub async fn start(test: &str) -> Option<Env> {
        let kubeconfig = cluster_kubeconfig(test)?;
        let turn = serial().await;
        let client = admin(&kubeconfig).await;
        install_charts(&kubeconfig);
        Some(Env { kubeconfig, client, _turn: turn })
    }
}

/// Installs both charts once per test process, by the README's own commands.
pub fn install_charts(kubeconfig: &Path) {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        assert!(
            !sh(kubeconfig, &format!("helm status kaito-workspace -n {SYSTEM_NAMESPACE}")).ok,
            "the charts are installed already: the end-to-end tests install them themselves on a fresh cluster (`cargo xtask cluster down`, then `up`)"
        );
        for line in readme_install_commands().iter().filter(|l| l.starts_with("helm install")) {
            sh_ok(kubeconfig, line);
        }
    });
}
