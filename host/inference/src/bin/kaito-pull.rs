//! `kaito-pull oci://REF DIR`: pulls a ModelPack artifact (a model or a LoRA adapter, as `kaito models push` and
//! `kaito-tune --push` make them) into DIR and prints the reference pinned by digest. The operator runs it as the init
//! container that fills a serving pod's adapter directories before the server starts.

use clap::Parser;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(name = "kaito-pull", version, about = "Pull a ModelPack artifact into a directory")]
struct Args {
    /// `oci://REGISTRY/REPOSITORY:TAG` or `@sha256:DIGEST` (`oci://` optional).
    reference: String,
    /// The directory to write the files into.
    dir: PathBuf,
    /// Docker config files with registry credentials (repeatable; merged, the first naming a registry wins).
    #[arg(long)]
    registry_config: Vec<PathBuf>,
    /// Speak plain HTTP to the registry (a local registry without TLS).
    #[arg(long)]
    plain_http: bool,
    /// Layers pulled at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
}

fn main() -> anyhow::Result<()> {
    kaito_inference::init_tool_logging();
    let args = Args::parse();
    let reference = kaito_oci::parse(&args.reference)?;
    let mut options = kaito_oci::Options { plain_http: args.plain_http, ..kaito_oci::Options::new() };
    if !args.registry_config.is_empty() {
        let merged = std::env::temp_dir().join(format!("kaito-pull-{}.json", std::process::id()));
        kaito_inference::download::merge_docker_configs(&args.registry_config, &merged)?;
        options.docker_config = Some(merged);
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let oci = kaito_oci::Oci::new(options);
    let pulled = runtime.block_on(oci.pull_dir(&reference, &args.dir, args.concurrency, |done, total| {
        tracing::info!(done_mb = done >> 20, total_mb = total >> 20, "pulling");
    }))?;
    tracing::info!(pinned = %pulled.pinned, dir = %pulled.dir.display(), bytes = pulled.bytes, "pulled");
    println!("{}", pulled.pinned);
    Ok(())
}
