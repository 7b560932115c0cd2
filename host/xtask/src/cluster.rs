//! `cargo xtask cluster build|up|down|gen-mod`: a real Kubernetes control plane for the end-to-end tests.
//!
//! The binaries are the upstream ones (kube-apiserver, kube-controller-manager, kube-scheduler, etcd, KWOK), built
//! from the Go module proxy by the consumer module in `tests/kube-testenv/` and cached under
//! `~/.cache/kaito/kube-testenv/<key>/`, keyed by the module's pins. Nodes are KWOK's (no kubelet, no containers
//! run); `kwok-provisioner` (crate `kaito-tests`) stands in for the cloud behind Karpenter/gpu-provisioner and turns
//! NodeClaims and NodePools into KWOK nodes.

use crate::{cargo, home, root, run};
use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The Kubernetes release the test control plane runs (its staging modules are pinned at the matching v0.x).
pub const KUBERNETES: &str = "v1.36.3";
/// Karpenter release whose `karpenter.sh` NodeClaim and NodePool CRDs are installed (read from its module).
pub const KARPENTER: &str = "v1.14.1";
/// KWOK release whose stage definitions are used (the binary's version is pinned in go.mod).
pub const KWOK: &str = "v0.8.0";
/// The packages `build` makes binaries of (each named after its last path element, as `go build -o DIR` does).
const PACKAGES: &[&str] = &[
    "./cmd/etcd",
    "k8s.io/kubernetes/cmd/kube-apiserver",
    "k8s.io/kubernetes/cmd/kube-controller-manager",
    "k8s.io/kubernetes/cmd/kube-scheduler",
    "sigs.k8s.io/kwok/cmd/kwok",
];
const BEGIN: &str = "// BEGIN generated staging replaces";
const END: &str = "// END generated staging replaces";

fn module_dir() -> PathBuf {
    root().join("tests/kube-testenv")
}

/// Go in the control plane's module (see [`go_in`]).
fn go() -> Result<Command> {
    go_in(&module_dir())
}

/// Go in `module`, with its module and build caches outside the clone, the committed go.sum enforced, and no
/// toolchain download.
pub(crate) fn go_in(module: &Path) -> Result<Command> {
    let cache = home()?.join(".cache/kaito");
    let mut cmd = Command::new("go");
    cmd.current_dir(module)
        .env("GOPATH", cache.join("go"))
        .env("GOCACHE", cache.join("go-build"))
        .env("GOTOOLCHAIN", "local")
        .env("CGO_ENABLED", "0")
        .env_remove("GOFLAGS");
    Ok(cmd)
}

fn go_output(args: &[&str]) -> Result<String> {
    go_output_in(&module_dir(), args)
}

fn go_output_in(dir: &Path, args: &[&str]) -> Result<String> {
    let out = go()?
        .current_dir(dir)
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .context("running go (Go 1.26 is needed)")?;
    if !out.status.success() {
        bail!("go {} failed with {}", args.join(" "), out.status);
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// `go mod download -json` of one module version (downloaded and checksum-verified if needed): the path of its
/// `field` (`Dir`, `GoMod`). Run outside the test module: inside it, Go refuses modules its go.mod does not list
/// (Karpenter's CRDs are data, not a dependency).
fn module_download(module: &str, version: &str, field: &str) -> Result<PathBuf> {
    let json = go_output_in(&std::env::temp_dir(), &["mod", "download", "-json", &format!("{module}@{version}")])?;
    let v: serde_json::Value = serde_json::from_str(&json)?;
    if let Some(e) = v["Error"].as_str() {
        bail!("go mod download {module}@{version}: {e}");
    }
    Ok(PathBuf::from(v[field].as_str().with_context(|| format!("no {field} in go mod download output"))?))
}

/// A module's source directory in the module cache.
fn module_source(module: &str, version: &str) -> Result<PathBuf> {
    module_download(module, version, "Dir")
}

/// The replace block for k8s.io/kubernetes `version`, generated from that version's own go.mod: every staging
/// module (`k8s.io/x => ./staging/src/k8s.io/x`) pinned to its published `v0.<minor>.<patch>`.
fn staging_replaces(version: &str) -> Result<String> {
    let gomod = std::fs::read_to_string(module_download("k8s.io/kubernetes", version, "GoMod")?)?;
    let staging_version = format!("v0.{}", version.trim_start_matches("v1."));
    let mut out = format!("{BEGIN} (k8s.io/kubernetes {version})\nreplace (\n");
    let mut n = 0;
    for line in gomod.lines() {
        let mut parts = line.split_whitespace();
        if let (Some(module), Some("=>"), Some(path)) = (parts.next(), parts.next(), parts.next())
            && path.starts_with("./staging/")
        {
            out.push_str(&format!("\t{module} => {module} {staging_version}\n"));
            n += 1;
        }
    }
    if n == 0 {
        bail!("k8s.io/kubernetes@{version}'s go.mod has no staging replace lines");
    }
    out.push_str(")\n");
    out.push_str(END);
    Ok(out)
}

/// The committed go.mod with its replace block regenerated.
fn go_mod_with_replaces() -> Result<(String, String)> {
    let path = module_dir().join("go.mod");
    let current = std::fs::read_to_string(&path)?;
    let (start, end) = match (current.find(BEGIN), current.find(END)) {
        (Some(s), Some(e)) => (s, e + END.len()),
        _ => bail!("{} has no `{BEGIN}` … `{END}` block", path.display()),
    };
    let wanted = format!("{}{}{}", &current[..start], staging_replaces(KUBERNETES)?, &current[end..]);
    Ok((current, wanted))
}

/// The block's lines without blank lines and indentation (`go mod tidy` reformats it).
fn replace_block(gomod: &str) -> Vec<String> {
    let block = gomod.split(BEGIN).nth(1).and_then(|b| b.split(END).next()).unwrap_or_default();
    block.lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).filter(|l| !l.is_empty()).collect()
}

/// `cluster gen-mod`: rewrite the replace block of tests/kube-testenv/go.mod.
pub fn gen_mod() -> Result<()> {
    let (_, wanted) = go_mod_with_replaces()?;
    std::fs::write(module_dir().join("go.mod"), wanted)?;
    run(go()?.args(["mod", "tidy"]))
}

fn cache_key() -> Result<String> {
    let mut h = Sha256::new();
    for f in ["go.mod", "go.sum", "cmd/etcd/main.go"] {
        h.update(std::fs::read(module_dir().join(f)).with_context(|| format!("reading tests/kube-testenv/{f}"))?);
    }
    h.update(go_output(&["version"])?);
    Ok(hex::encode(&h.finalize()[..8]))
}

/// `cluster build`: the control-plane binaries, built once per pin set; returns their directory.
pub fn build() -> Result<PathBuf> {
    let (current, wanted) = go_mod_with_replaces()?;
    if replace_block(&current) != replace_block(&wanted) {
        bail!(
            "tests/kube-testenv/go.mod's replace block is not the one k8s.io/kubernetes {KUBERNETES}'s go.mod implies: run `cargo xtask cluster gen-mod`"
        );
    }
    let dir = home()?.join(".cache/kaito/kube-testenv").join(format!("{KUBERNETES}-{}", cache_key()?));
    if PACKAGES.iter().all(|p| dir.join(p.rsplit('/').next().unwrap_or(p)).is_file()) {
        return Ok(dir);
    }
    let tmp = dir.with_file_name(format!("{KUBERNETES}.partial"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let minor = KUBERNETES.trim_start_matches("v1.").split('.').next().unwrap_or_default();
    let version = "k8s.io/component-base/version";
    // Upstream stamps these at release; without them /version reports v0.0.0.
    let ldflags = format!(
        "-s -w -X {version}.gitVersion={KUBERNETES} -X {version}.gitMajor=1 -X {version}.gitMinor={minor} -X {version}.gitTreeState=clean"
    );
    let started = Instant::now();
    let mut cmd = go()?;
    cmd.args(["build", "-trimpath", "-ldflags", &ldflags, "-o"]).arg(&tmp).args(PACKAGES);
    run(&mut cmd)?;
    eprintln!("xtask: control plane built in {:.0} s", started.elapsed().as_secs_f64());
    std::fs::rename(&tmp, &dir)?;
    Ok(dir)
}

/// Where a running cluster keeps its state (PKI, etcd data, logs, kubeconfig).
pub fn state_dir() -> Result<PathBuf> {
    Ok(std::env::var_os("KAITO_CLUSTER_DIR").map(PathBuf::from).unwrap_or(home()?.join(".cache/kaito/cluster")))
}

pub(crate) fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl").current_dir(dir).args(args).output().context("running openssl")?;
    if !out.status.success() {
        bail!("openssl {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// A CA, the API server's serving certificate for 127.0.0.1, and the service-account signing key pair.
fn make_pki(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "30",
            "-subj",
            "/CN=kaito-test-ca",
        ],
    )?;
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "apiserver.key",
            "-out",
            "apiserver.csr",
            "-subj",
            "/CN=kube-apiserver",
        ],
    )?;
    std::fs::write(
        dir.join("apiserver.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost,IP:10.0.0.1,DNS:kubernetes,DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment\n",
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "apiserver.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "apiserver.crt",
            "-days",
            "30",
            "-extfile",
            "apiserver.ext",
        ],
    )?;
    openssl(dir, &["genrsa", "-out", "sa.key", "2048"])?;
    openssl(dir, &["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"])
}

fn random_token() -> Result<String> {
    let mut bytes = [0u8; 16];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
    Ok(hex::encode(bytes))
}

/// Starts `bin` in its own process group with its output in `logs/<name>.log`, recording its pid.
pub(crate) fn spawn(state: &Path, name: &str, bin: &Path, args: &[String]) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let log = std::fs::File::create(state.join("logs").join(format!("{name}.log")))?;
    let child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let mut pids = std::fs::read_to_string(state.join("pids")).unwrap_or_default();
    pids.push_str(&format!("{} {name}\n", child.id()));
    std::fs::write(state.join("pids"), pids)?;
    Ok(())
}

pub(crate) fn wait_until(
    what: &str,
    state: &Path,
    log: &str,
    secs: u64,
    mut ready: impl FnMut() -> bool,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if ready() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let tail = std::fs::read_to_string(state.join("logs").join(log)).unwrap_or_default();
    let tail: Vec<&str> = tail.lines().rev().take(30).collect();
    bail!(
        "{what} did not come up within {secs} s; last lines of logs/{log}:\n{}",
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    )
}

fn kubectl(bin: &Path, kubeconfig: &Path) -> Command {
    let mut cmd = Command::new(bin.join("kubectl"));
    cmd.env("KUBECONFIG", kubeconfig);
    cmd
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// KWOK's own stage definitions from its module: nodes become Ready and renew their Leases, pods bound to them run.
fn kwok_stages() -> Result<String> {
    let dir = module_source("sigs.k8s.io/kwok", KWOK)?.join("kustomize/stage");
    let mut out = String::new();
    for f in [
        "node/fast/node-initialize.yaml",
        "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
        "pod/fast/pod-ready.yaml",
        "pod/fast/pod-complete.yaml",
        "pod/fast/pod-delete.yaml",
    ] {
        out.push_str("---\n");
        out.push_str(&std::fs::read_to_string(dir.join(f)).with_context(|| format!("KWOK stage {f}"))?);
    }
    Ok(out)
}

/// Every request is recorded (metadata only): the RBAC test reads the operator's denied requests from here.
const AUDIT_POLICY: &str =
    "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n- level: Metadata\n";

const STORAGE_CLASS: &str = "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata:\n  name: kaito-local-nvme-disk\nprovisioner: kaito.test/kwok-provisioner\nvolumeBindingMode: WaitForFirstConsumer\nreclaimPolicy: Delete\n";

/// `cluster up`: start the control plane (if it is not running) and return the admin kubeconfig's path.
pub fn up() -> Result<PathBuf> {
    start(false)
}

/// Like [`up`], for `cargo xtask test`, which has built the plugins and `kwok-provisioner` (with the feature set of
/// `cargo test --workspace`, so building it again here would recompile its dependencies).
pub fn up_prebuilt() -> Result<PathBuf> {
    start(true)
}

fn start(prebuilt: bool) -> Result<PathBuf> {
    let state = state_dir()?;
    let kubeconfig = state.join("admin.kubeconfig");
    let tools = crate::tools()?;
    // `up` writes the marker last: a cluster whose start failed half-way is started again.
    if state.join("up").is_file() && succeeds(kubectl(&tools, &kubeconfig).args(["get", "--raw", "/readyz"])) {
        return Ok(kubeconfig);
    }
    down()?;
    let bin = build()?;
    if !prebuilt {
        crate::plugins()?;
        // The NodeClaim stand-in is a Rust program: it reads instance types from our own provisioner plugins.
        let mut provisioner = cargo();
        provisioner.current_dir(root()).args([
            "build",
            "--quiet",
            "--package",
            "kaito-tests",
            "--bin",
            "kwok-provisioner",
        ]);
        run(&mut provisioner)?;
    }
    let started = Instant::now();
    std::fs::create_dir_all(state.join("logs"))?;
    let pki = state.join("pki");
    make_pki(&pki)?;
    let token = random_token()?;
    std::fs::write(state.join("tokens.csv"), format!("{token},kaito-admin,kaito-admin,system:masters\n"))?;
    std::fs::write(state.join("audit-policy.yaml"), AUDIT_POLICY)?;
    std::fs::write(state.join("kwok-stages.yaml"), kwok_stages()?)?;
    let (etcd_port, peer_port, api_port) = (free_port()?, free_port()?, free_port()?);
    let s = |p: &Path| p.display().to_string();

    spawn(
        &state,
        "etcd",
        &bin.join("etcd"),
        &[
            format!("--data-dir={}", s(&state.join("etcd"))),
            format!("--listen-client-url=http://127.0.0.1:{etcd_port}"),
            format!("--listen-peer-url=http://127.0.0.1:{peer_port}"),
        ],
    )?;
    wait_until("etcd", &state, "etcd.log", 30, || std::net::TcpStream::connect(("127.0.0.1", etcd_port)).is_ok())?;

    spawn(
        &state,
        "kube-apiserver",
        &bin.join("kube-apiserver"),
        &[
            format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
            format!("--secure-port={api_port}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            // The endpoints of the `kubernetes` Service would have to be this loopback address, which validation refuses.
            "--endpoint-reconciler-type=none".into(),
            format!("--tls-cert-file={}", s(&pki.join("apiserver.crt"))),
            format!("--tls-private-key-file={}", s(&pki.join("apiserver.key"))),
            format!("--client-ca-file={}", s(&pki.join("ca.crt"))),
            format!("--token-auth-file={}", s(&state.join("tokens.csv"))),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={}", s(&pki.join("sa.pub"))),
            format!("--service-account-signing-key-file={}", s(&pki.join("sa.key"))),
            "--authorization-mode=Node,RBAC".into(),
            "--allow-privileged=true".into(),
            format!("--audit-policy-file={}", s(&state.join("audit-policy.yaml"))),
            format!("--audit-log-path={}", s(&state.join("audit.log"))),
        ],
    )?;
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: kaito-test\n  cluster:\n    server: https://127.0.0.1:{api_port}\n    certificate-authority: {}\nusers:\n- name: kaito-admin\n  user:\n    token: {token}\ncontexts:\n- name: kaito-test\n  context:\n    cluster: kaito-test\n    user: kaito-admin\n    namespace: default\ncurrent-context: kaito-test\n",
            s(&pki.join("ca.crt"))
        ),
    )?;
    wait_until("kube-apiserver", &state, "kube-apiserver.log", 90, || {
        succeeds(kubectl(&tools, &kubeconfig).args(["get", "--raw", "/readyz"]))
    })?;

    let kc = format!("--kubeconfig={}", s(&kubeconfig));
    spawn(
        &state,
        "kube-controller-manager",
        &bin.join("kube-controller-manager"),
        &[
            kc.clone(),
            "--leader-elect=false".into(),
            "--secure-port=0".into(),
            format!("--service-account-private-key-file={}", s(&pki.join("sa.key"))),
            format!("--root-ca-file={}", s(&pki.join("ca.crt"))),
            "--use-service-account-credentials=true".into(),
        ],
    )?;
    spawn(
        &state,
        "kube-scheduler",
        &bin.join("kube-scheduler"),
        &[kc.clone(), "--leader-elect=false".into(), "--secure-port=0".into()],
    )?;
    spawn(
        &state,
        "kwok",
        &bin.join("kwok"),
        &[
            kc.clone(),
            format!("--config={}", s(&state.join("kwok-stages.yaml"))),
            "--manage-all-nodes=false".into(),
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake".into(),
            "--node-ip=127.0.0.1".into(),
            "--server-address=127.0.0.1:0".into(),
        ],
    )?;

    let crds = module_source("sigs.k8s.io/karpenter", KARPENTER)?.join("pkg/apis/crds");
    for crd in ["karpenter.sh_nodeclaims.yaml", "karpenter.sh_nodepools.yaml"] {
        run(kubectl(&tools, &kubeconfig).args(["apply", "--server-side", "-f"]).arg(crds.join(crd)))?;
    }
    run(kubectl(&tools, &kubeconfig).args([
        "wait",
        "--for=condition=Established",
        "crd/nodeclaims.karpenter.sh",
        "crd/nodepools.karpenter.sh",
        "--timeout=60s",
    ]))?;
    // The local NVMe class KAITO's presets ask for; kwok-provisioner is its provisioner.
    std::fs::write(state.join("storageclass.yaml"), STORAGE_CLASS)?;
    run(kubectl(&tools, &kubeconfig).args(["apply", "--server-side", "-f"]).arg(state.join("storageclass.yaml")))?;
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or(root().join("target"));
    let plugin_dirs = std::env::join_paths([root().join("presets-wasm/dist"), root().join("plugins/dist")])?;
    spawn(
        &state,
        "kwok-provisioner",
        &target.join("debug/kwok-provisioner"),
        &[kc, format!("--plugins={}", plugin_dirs.to_string_lossy())],
    )?;
    // Service accounts come from the controller-manager: the default one's presence says it is working.
    wait_until("kube-controller-manager", &state, "kube-controller-manager.log", 60, || {
        succeeds(kubectl(&tools, &kubeconfig).args(["get", "serviceaccount", "default", "-n", "default"]))
    })?;
    std::fs::write(state.join("up"), "")?;
    eprintln!("xtask: control plane up in {:.1} s (state in {})", started.elapsed().as_secs_f64(), state.display());
    Ok(kubeconfig)
}

/// The last lines of every control-plane log, for a failed test run.
pub fn print_logs() -> Result<()> {
    let logs = state_dir()?.join("logs");
    for entry in std::fs::read_dir(&logs).into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        eprintln!("xtask: last lines of {}:", entry.path().display());
        for line in &lines[lines.len().saturating_sub(20)..] {
            eprintln!("  {line}");
        }
    }
    Ok(())
}

/// Whether `pid` runs (a zombie, left when `up` and `down` share a process, has exited).
fn alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
}

/// `cluster down`: stop every process `up` started and remove the state.
pub fn down() -> Result<()> {
    stop(&state_dir()?)
}

/// Stops every process [`spawn`] recorded in `state` (its process group) and removes the state directory.
pub(crate) fn stop(state: &Path) -> Result<()> {
    let state = state.to_path_buf();
    let pids = std::fs::read_to_string(state.join("pids")).unwrap_or_default();
    let pids: Vec<&str> = pids.lines().filter_map(|l| l.split_whitespace().next()).collect();
    for signal in ["-TERM", "-KILL"] {
        let running: Vec<&&str> = pids.iter().filter(|p| alive(p)).collect();
        if running.is_empty() {
            break;
        }
        for pid in &running {
            // The negative pid signals the whole process group.
            let _ = Command::new("kill").args([signal, "--", &format!("-{pid}")]).stderr(Stdio::null()).status();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && running.iter().any(|p| alive(p)) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    if state.exists() {
        std::fs::remove_dir_all(&state).with_context(|| format!("removing {}", state.display()))?;
    }
    Ok(())
}
