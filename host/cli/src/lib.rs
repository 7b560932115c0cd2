//! `kaito`: render Workspaces into the objects the operator creates, and
//! list or test plugins. Kept as a library so tests drive it in-process.

use clap::{Args, Parser, Subcommand};
use kaito_crd::Workspace;
use kaito_plugin_host::{CacheOutcome, PluginKind, conformance};
pub use kaito_workload::plugin_args::{PluginArgs, default_plugin_dirs};
use kaito_workload::{DEFAULT_IMAGE_REGISTRY, DEFAULT_MAX_NODES, RenderOptions, parse_nodes, render, to_yaml};
use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;

/// Command line of `kaito`.
#[derive(Debug, Parser)]
#[command(name = "kaito", version, about = "KAITO with Wasm plugins: render Workspaces, manage plugins")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print, as multi-document YAML, every object the operator would create for a Workspace or a RAGEngine.
    Render(RenderArgs),
    /// Inspect and check plugins.
    #[command(subcommand)]
    Plugins(PluginsCommand),
    /// Move model weights (or LoRA adapters) to and from OCI registries.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Print a CustomResourceDefinition generated from the types.
    Crd {
        /// workspace, inferenceset or ragengine.
        #[arg(default_value = "workspace", value_parser = ["workspace", "inferenceset", "ragengine"])]
        kind: String,
    },
}

/// `kaito plugins ...`
#[derive(Debug, Subcommand)]
pub enum PluginsCommand {
    /// List loaded plugins with digest, contract version and what they provide.
    List(PluginArgs),
    /// Run the conformance suite on plugin files.
    Test {
        /// Component files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        plugins: PluginArgs,
    },
    /// Run the conformance suite on a component, then push it to an OCI registry as a Wasm artifact; prints the
    /// reference pinned by digest as the last line. A failing component is refused.
    Push {
        /// The component file.
        file: PathBuf,
        /// Where to push: REGISTRY/REPOSITORY:TAG (`oci://` optional).
        reference: String,
        #[command(flatten)]
        plugins: PluginArgs,
    },
    /// Pull a Wasm artifact from an OCI registry into a file; prints the pinned reference.
    Pull {
        /// REGISTRY/REPOSITORY:TAG or @sha256:DIGEST (`oci://` optional).
        reference: String,
        /// Where to write the component.
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: PathBuf,
        #[command(flatten)]
        registry: kaito_workload::plugin_args::RegistryArgs,
    },
}

/// `kaito models ...`
#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Push a Hugging Face model (or PEFT adapter) directory as a ModelPack artifact, one layer per file; prints
    /// the reference pinned by digest as the last line.
    Push {
        /// The directory.
        dir: PathBuf,
        /// REGISTRY/REPOSITORY:TAG (`oci://` optional).
        reference: String,
        /// Layers as zstd-compressed tars (`zstd`, smaller downloads) or the files themselves (`none`, which
        /// `oras pull` writes back as is).
        #[arg(long, value_name = "zstd|none", default_value = "zstd")]
        compression: kaito_oci::Compression,
        #[command(flatten)]
        registry: kaito_workload::plugin_args::RegistryArgs,
    },
    /// Pull a model artifact into a directory; prints the pinned reference.
    Pull {
        /// REGISTRY/REPOSITORY:TAG or @sha256:DIGEST (`oci://` optional).
        reference: String,
        /// The directory to write the files into.
        #[arg(short = 'o', long = "output", value_name = "DIR")]
        output: PathBuf,
        /// Layers pulled at once.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        #[command(flatten)]
        registry: kaito_workload::plugin_args::RegistryArgs,
    },
}

/// `kaito render` options.
#[derive(Debug, Args)]
pub struct RenderArgs {
    /// Workspace YAML (kaito.sh/v1beta1 or v1alpha1).
    #[arg(short = 'f', long = "filename", value_name = "WORKSPACE.yaml")]
    pub file: PathBuf,
    /// Existing nodes (Node, List or NodeList YAML); implies the byo provisioner.
    #[arg(long, value_name = "NODES.yaml")]
    pub nodes: Option<PathBuf>,
    /// Provisioner plugin: gpu-provisioner, byo, or any loaded provisioner.
    #[arg(long)]
    pub provisioner: Option<String>,
    /// Registry prefix for runtime images.
    #[arg(long, env = "KAITO_IMAGE_REGISTRY", default_value = DEFAULT_IMAGE_REGISTRY)]
    pub image_registry: String,
    /// Most nodes a Workspace may be given when provisioning.
    #[arg(long, default_value_t = DEFAULT_MAX_NODES)]
    pub max_nodes: u32,
    /// Node classes `kaito.sh/node-class-name` may name, as the operator's flag of the same name.
    #[arg(long)]
    pub karpenter_node_classes: Option<kaito_workload::NodeClasses>,
    /// Never read model configs from the Hugging Face hub (also `HF_HUB_OFFLINE=1`); the hub is `HF_ENDPOINT`.
    #[arg(long)]
    pub offline: bool,
    #[command(flatten)]
    pub plugins: PluginArgs,
}

/// The one KAITO object of a manifest: the text itself when it holds one document, else the single Workspace,
/// InferenceSet or RAGEngine among its documents (KAITO's examples ship PersistentVolumeClaims and ConfigMaps beside
/// the Workspace, for `kubectl apply`).
fn kaito_document(text: &str) -> anyhow::Result<String> {
    use serde::Deserialize;
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(text)
        .map(serde_yaml::Value::deserialize)
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("not valid YAML: {e}"))?;
    let docs: Vec<serde_yaml::Value> = docs.into_iter().filter(|d| !d.is_null()).collect();
    if docs.len() <= 1 {
        return Ok(text.to_string());
    }
    let kind = |d: &serde_yaml::Value| d.get("kind").and_then(|k| k.as_str()).unwrap_or_default().to_string();
    let ours: Vec<&serde_yaml::Value> =
        docs.iter().filter(|d| matches!(kind(d).as_str(), "Workspace" | "InferenceSet" | "RAGEngine")).collect();
    match ours.as_slice() {
        [one] => Ok(serde_yaml::to_string(one)?),
        [] => anyhow::bail!("none of its {} documents is a Workspace, InferenceSet or RAGEngine", docs.len()),
        many => anyhow::bail!("{} of its documents are KAITO objects; render one at a time", many.len()),
    }
}

fn render_cmd(args: &RenderArgs, out: &mut dyn Write, err: &mut dyn Write) -> anyhow::Result<i32> {
    let text =
        std::fs::read_to_string(&args.file).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", args.file.display()))?;
    let text = kaito_document(&text).map_err(|e| anyhow::anyhow!("{}: {e}", args.file.display()))?;
    if serde_yaml::from_str::<serde_yaml::Value>(&text).ok().and_then(|v| v.get("kind").cloned())
        == Some(serde_yaml::Value::from("RAGEngine"))
    {
        let mut rag: kaito_crd::RAGEngine =
            serde_yaml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", args.file.display()))?;
        // As kubectl would: a manifest without a namespace lands in `default`.
        rag.metadata.namespace.get_or_insert_with(|| "default".into());
        let host = args.plugins.host()?;
        let registry = args.plugins.registry(&host, err)?;
        let provisioner = args.provisioner.clone().unwrap_or_else(|| kaito_workload::DEFAULT_PROVISIONER.into());
        let objects = kaito_workload::render_ragengine(&registry, &rag, &provisioner, &args.image_registry)?;
        out.write_all(to_yaml(&objects.documents()).as_bytes())?;
        return Ok(0);
    }
    let kind = serde_yaml::from_str::<serde_yaml::Value>(&text).ok().and_then(|v| v.get("kind").cloned());
    let (workspaces, set) = if kind == Some(serde_yaml::Value::from("InferenceSet")) {
        let set = kaito_crd::InferenceSet::from_yaml(&text)?;
        let byo = args.provisioner.as_deref() == Some(kaito_workload::BYO_PROVISIONER);
        set.validate(byo)?;
        ((0..set.replicas()).map(|i| set.workspace(i)).collect(), Some(set))
    } else {
        (vec![Workspace::from_yaml(&text)?], None)
    };
    let nodes = match &args.nodes {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
            Some(parse_nodes(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?)
        }
        None => None,
    };
    let host = args.plugins.host()?;
    let registry = args.plugins.registry(&host, err)?;
    let opts = RenderOptions {
        provisioner: args.provisioner.clone(),
        nodes,
        image_registry: args.image_registry.clone(),
        max_nodes: args.max_nodes,
        node_classes: args.karpenter_node_classes.clone(),
        hub: if args.offline { None } else { kaito_hub::Hub::from_env().map(std::sync::Arc::new) },
    };
    if let [ws] = workspaces.as_slice()
        && ws.tuning.is_some()
    {
        let rendered = kaito_workload::render_tuning(&registry, ws, &opts)?;
        for note in &rendered.notes {
            writeln!(err, "kaito: note: {note}")?;
        }
        out.write_all(to_yaml(&rendered.documents()).as_bytes())?;
        return Ok(0);
    }
    let mut documents = Vec::new();
    let mut nodes_used = 0;
    for ws in &workspaces {
        let rendered = render(&registry, ws, &opts)?;
        // The set's node limit, as the operator applies it: a replica that would pass it is not made.
        if let Some((set, limit)) = set.as_ref().and_then(|s| Some((s, s.node_count_limit()?))) {
            let need = rendered.plan.as_ref().map_or(1, |p| p.resources.node_count.max(1));
            if nodes_used + need > limit {
                writeln!(
                    err,
                    "kaito: note: {} and later replicas are not made: each needs {need} node(s) and spec.nodeCountLimit is {limit} ({} of {} replicas fit)",
                    ws.name(),
                    nodes_used / need,
                    set.replicas()
                )?;
                break;
            }
            nodes_used += need;
        }
        for note in &rendered.notes {
            // A set renders several Workspaces: say which one a note is about.
            match &set {
                Some(_) => writeln!(err, "kaito: note: {}: {note}", ws.name())?,
                None => writeln!(err, "kaito: note: {note}")?,
            }
        }
        if set.is_some() {
            documents.push(serde_json::to_value(ws)?);
        }
        documents.extend(rendered.objects.documents());
    }
    out.write_all(to_yaml(&documents).as_bytes())?;
    Ok(0)
}

fn list_cmd(args: &PluginArgs, out: &mut dyn Write, err: &mut dyn Write) -> anyhow::Result<i32> {
    let host = args.host()?;
    let registry = args.registry(&host, err)?;
    for p in &registry.plugins {
        let version = p.info().map_or("?", |i| i.version.as_str());
        writeln!(out, "{} {version} ({} plugin, kaito:plugin@{})", p.name(), p.kind().as_str(), p.contract())?;
        writeln!(out, "  file:     {}", p.file().display())?;
        writeln!(out, "  sha256:   {}", p.digest())?;
        writeln!(out, "  compiled: {}", if p.cache_outcome() == CacheOutcome::Hit { "from cache" } else { "now" })?;
        writeln!(
            out,
            "  status:   {}",
            p.quarantined().map(|r| format!("quarantined: {r}")).unwrap_or_else(|| "ok".into())
        )?;
        match p.kind() {
            PluginKind::Preset => {
                writeln!(out, "  models:   {}", p.models().len())?;
                for m in p.models() {
                    writeln!(
                        out,
                        "    {:<32} {:<44} {:>8.2} GiB  ctx {:<7} {}",
                        m.name,
                        m.hf_id,
                        m.weights_bytes as f64 / (1u64 << 30) as f64,
                        m.context_length,
                        m.runtimes.join(",")
                    )?;
                }
            }
            PluginKind::Provisioner => {
                if let Some(info) = p.provisioner_info() {
                    writeln!(out, "  mode:     {:?}, cloud {}", info.mode, info.cloud)?;
                }
                writeln!(out, "  instance types: {}", p.instance_types().len())?;
                for t in p.instance_types() {
                    writeln!(
                        out,
                        "    {:<28} {}x {:<6} {:>5} GiB{}",
                        t.name,
                        t.gpu_count,
                        t.gpu_model,
                        t.node_gpu_memory_bytes >> 30,
                        if t.nvme { "  nvme" } else { "" }
                    )?;
                }
            }
        }
    }
    Ok(0)
}

fn test_cmd(files: &[PathBuf], args: &PluginArgs, out: &mut dyn Write) -> anyhow::Result<i32> {
    let host = args.host()?;
    let (mut passed, mut failed) = (0, 0);
    for file in files {
        let report = conformance::run(&host, file);
        writeln!(out, "{} ({})", report.plugin, file.display())?;
        for c in &report.checks {
            writeln!(out, "  {} {}: {}", if c.passed { "PASS" } else { "FAIL" }, c.name, c.detail)?;
            if c.passed {
                passed += 1;
            } else {
                failed += 1;
            }
        }
        if report.checks.is_empty() {
            failed += 1;
        }
    }
    writeln!(out, "{passed} passed, {failed} failed")?;
    Ok(if failed == 0 { 0 } else { 1 })
}

fn push_cmd(file: &std::path::Path, reference: &str, args: &PluginArgs, out: &mut dyn Write) -> anyhow::Result<i32> {
    let target = kaito_oci::parse(reference)?;
    if test_cmd(&[file.to_path_buf()], args, out)? != 0 {
        anyhow::bail!("{} fails the conformance suite: not pushed", file.display());
    }
    let bytes = std::fs::read(file).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
    let title = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "plugin.wasm".into());
    let oci = kaito_oci::Oci::new(args.registry.options());
    let pinned = kaito_workload::plugin_args::block_on(oci.push_wasm(&bytes, &target, &title))??;
    writeln!(out, "{pinned}")?;
    Ok(0)
}

fn pull_cmd(
    reference: &str,
    output: &std::path::Path,
    registry: &kaito_workload::plugin_args::RegistryArgs,
    out: &mut dyn Write,
) -> anyhow::Result<i32> {
    let source = kaito_oci::parse(reference)?;
    let oci = kaito_oci::Oci::new(registry.options());
    let pulled = kaito_workload::plugin_args::block_on(oci.pull_wasm(&source))??;
    // Through a temporary file: a crash mid-copy leaves no truncated component at `output`.
    let tmp = output.with_extension("partial");
    std::fs::copy(&pulled.path, &tmp).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, output).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", output.display()))?;
    writeln!(out, "{}", pulled.pinned)?;
    Ok(0)
}

fn models_cmd(cmd: &ModelsCommand, out: &mut dyn Write) -> anyhow::Result<i32> {
    match cmd {
        ModelsCommand::Push { dir, reference, compression, registry } => {
            let target = kaito_oci::parse(reference)?;
            let name = dir.canonicalize().ok().and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()));
            let oci = kaito_oci::Oci::new(registry.options());
            let pinned = kaito_workload::plugin_args::block_on(oci.push_dir(
                dir,
                &target,
                &name.unwrap_or_default(),
                *compression,
            ))??;
            writeln!(out, "{pinned}")?;
        }
        ModelsCommand::Pull { reference, output, concurrency, registry } => {
            let source = kaito_oci::parse(reference)?;
            let oci = kaito_oci::Oci::new(registry.options());
            let pulled =
                kaito_workload::plugin_args::block_on(oci.pull_dir(&source, output, *concurrency, |_, _| {}))??;
            writeln!(out, "{}", pulled.pinned)?;
        }
    }
    Ok(0)
}

/// Run `kaito` with `args`; returns the exit code.
pub fn run<I, T>(args: I, out: &mut dyn Write, err: &mut dyn Write) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = write!(err, "{}", e.render().ansi());
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    let _ = tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("KAITO_LOG").unwrap_or_else(|_| "error".into()))
        .with_writer(std::io::stderr)
        .try_init();
    let result = match &cli.command {
        Command::Render(args) => render_cmd(args, out, err),
        Command::Plugins(PluginsCommand::List(args)) => list_cmd(args, out, err),
        Command::Plugins(PluginsCommand::Test { files, plugins }) => test_cmd(files, plugins, out),
        Command::Plugins(PluginsCommand::Push { file, reference, plugins }) => push_cmd(file, reference, plugins, out),
        Command::Models(cmd) => models_cmd(cmd, out),
        Command::Plugins(PluginsCommand::Pull { reference, output, registry }) => {
            pull_cmd(reference, output, registry, out)
        }
        Command::Crd { kind } => {
            let yaml = match kind.as_str() {
                "ragengine" => kaito_crd::ragengine_crd_yaml(),
                "inferenceset" => kaito_crd::inferenceset_crd_yaml(),
                _ => kaito_crd::workspace_crd_yaml(),
            };
            out.write_all(yaml.as_bytes()).map(|_| 0).map_err(Into::into)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(err, "kaito: error: {e:#}");
            1
        }
    }
}
