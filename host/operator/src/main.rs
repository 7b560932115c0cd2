//! `kaito-operator`: reconciles Workspaces and InferenceSets (and RAGEngines, with `--controllers`) in the cluster the kubeconfig (or the pod's service account) points at.

use anyhow::Context as _;
use clap::Parser;
use k8s_openapi::api::core::v1::ObjectReference;
use kaito_crd::{InferenceSet, RAGEngine, Workspace};
use kaito_operator::conversion::{Endpoint, WebhookConfig};
use kaito_operator::leader::LeaderElector;
use kaito_operator::metrics::Metrics;
use kaito_operator::server::{Health, router};
use kaito_operator::{Config, Context, controller};
use kaito_workload::plugin_args::PluginArgs;
use kaito_workload::{DEFAULT_IMAGE_REGISTRY, DEFAULT_MAX_NODES, DEFAULT_PROVISIONER};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::watch;

#[derive(Debug, Parser)]
#[command(
    name = "kaito-operator",
    version,
    about = "The KAITO Workspace operator, with Wasm preset and provisioner plugins"
)]
struct Args {
    /// Provisioner plugin: gpu-provisioner (Azure NodeClaims), karpenter (AWS NodePools), byo, or any loaded provisioner.
    #[arg(long, env = "KAITO_PROVISIONER", default_value = DEFAULT_PROVISIONER)]
    provisioner: String,
    /// Registry prefix for runtime images.
    #[arg(long, env = "KAITO_IMAGE_REGISTRY", default_value = DEFAULT_IMAGE_REGISTRY)]
    image_registry: String,
    /// Most nodes one Workspace may be given.
    #[arg(long, default_value_t = DEFAULT_MAX_NODES)]
    max_nodes: u32,
    /// Node classes `kaito.sh/node-class-name` may name: KAITO's JSON array (`[{"name":..,"default":true}]`, the
    /// `spec` of each is the provider's and is not read) or `a,b` with the first as default. Unset: any valid name.
    #[arg(long, env = "KAITO_NODE_CLASSES")]
    karpenter_node_classes: Option<kaito_workload::NodeClasses>,
    /// Never read model configs from the Hugging Face hub (also `HF_HUB_OFFLINE=1`): Workspaces naming a model no
    /// preset catalogs are refused. The hub is `HF_ENDPOINT` (default huggingface.co), with `HF_TOKEN` if set.
    #[arg(long)]
    offline: bool,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "KAITO_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Elect a leader through a Lease before reconciling (turn off only for a single replica).
    #[arg(long, env = "KAITO_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// Namespace of the leader Lease (default: the pod's namespace, else kaito-system).
    #[arg(long, env = "POD_NAMESPACE", default_value = "kaito-system")]
    lease_namespace: String,
    /// Name of the leader Lease.
    #[arg(long, default_value = "kaito-operator-leader")]
    lease_name: String,
    /// Controllers to run: workspace, inferenceset, ragengine, or several (the Workspace chart runs the first two,
    /// the RAGEngine chart the last).
    #[arg(long, env = "KAITO_CONTROLLERS", value_delimiter = ',', default_value = "workspace,inferenceset", value_parser = ["workspace", "inferenceset", "ragengine"])]
    controllers: Vec<String>,
    /// How often to look at the plugin sources for a changed set, in seconds (0: never; the set is fixed at start).
    #[arg(long, env = "KAITO_PLUGIN_RELOAD_SECONDS", default_value_t = 10)]
    plugin_reload_seconds: u64,
    /// ConfigMap in the operator's namespace whose entries are plugin references (`NAME: oci://REF@sha256:...`),
    /// watched while the operator runs; an entry overrides a built-in plugin of the same name and kind.
    #[arg(long, value_name = "NAME")]
    plugin_configmap: Option<String>,
    /// Serve the RAGEngine v1alpha1 conversion webhook through this Service (in the pod's namespace) and port; the
    /// chart names its own. Needs `--controllers` with ragengine.
    #[arg(long, value_name = "NAME:PORT")]
    webhook_service: Option<String>,
    /// Serve it at this HTTPS URL instead (an operator outside the cluster); its host is the certificate's name.
    #[arg(long, conflicts_with = "webhook_service")]
    webhook_url: Option<String>,
    /// Address the conversion webhook's HTTPS server binds.
    #[arg(long, default_value = "0.0.0.0:9443")]
    webhook_addr: SocketAddr,
    /// Secret (in the pod's namespace) holding the webhook's CA and serving certificate; made at first start.
    #[arg(long, default_value = "kaito-ragengine-webhook-cert")]
    webhook_secret: String,
    #[command(flatten)]
    plugins: PluginArgs,
}

impl Args {
    /// The conversion webhook's settings, if one was asked for.
    fn webhook(&self) -> anyhow::Result<Option<WebhookConfig>> {
        let endpoint = match (&self.webhook_service, &self.webhook_url) {
            (None, None) => return Ok(None),
            (Some(service), _) => {
                let (name, port) = service
                    .rsplit_once(':')
                    .and_then(|(n, p)| Some((n.to_string(), p.parse().ok()?)))
                    .ok_or_else(|| anyhow::anyhow!("--webhook-service {service}: expected NAME:PORT"))?;
                Endpoint::Service { name, port }
            }
            (None, Some(url)) if url.starts_with("https://") => Endpoint::Url(url.clone()),
            (None, Some(url)) => anyhow::bail!("--webhook-url {url}: the API server calls webhooks over https://"),
        };
        anyhow::ensure!(
            self.controllers.iter().any(|c| c == "ragengine"),
            "--webhook-service/--webhook-url serve the RAGEngine conversion webhook: add ragengine to --controllers"
        );
        Ok(Some(WebhookConfig {
            addr: self.webhook_addr,
            endpoint,
            namespace: self.lease_namespace.clone(),
            secret: self.webhook_secret.clone(),
        }))
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .init();
    let args = Args::parse();
    let webhook = args.webhook()?;
    let host = args.plugins.host()?;
    let registry = Arc::new(args.plugins.registry(&host, &mut std::io::stderr())?);
    let no_such_provisioner = || format!("--provisioner {}: no such provisioner plugin is loaded", args.provisioner);
    // Refused before anything else, unless the plugin-reference ConfigMap (read below) may still bring it.
    if args.plugin_configmap.is_none() {
        registry.provisioner(&args.provisioner).with_context(no_such_provisioner)?;
    }
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes client: set KUBECONFIG or run in a pod with a service account")?;
    let config = Config {
        provisioner: args.provisioner.clone(),
        image_registry: args.image_registry.clone(),
        max_nodes: args.max_nodes,
        node_classes: args.karpenter_node_classes.clone(),
        hub: if args.offline { None } else { kaito_hub::Hub::from_env().map(Arc::new) },
        ..Config::default()
    };
    let metrics = Arc::new(Metrics::default());
    let ctx = Arc::new(Context::new(client.clone(), registry, config, metrics.clone()));
    let runs = |name: &str| args.controllers.iter().any(|c| c == name);
    let (workspaces, sets, ragengines) = (runs("workspace"), runs("inferenceset"), runs("ragengine"));
    if workspaces {
        controller::check_crd::<Workspace>(&ctx).await?;
    }
    if sets {
        controller::check_crd::<InferenceSet>(&ctx).await?;
    }
    if ragengines {
        controller::check_crd::<RAGEngine>(&ctx).await?;
    }
    // Every replica serves conversions (the Service spreads them), leader or not.
    let _webhook = match webhook {
        Some(config) => Some(kaito_operator::conversion::start(&client, config).await.context("conversion webhook")?),
        None => None,
    };

    let references = args
        .plugin_configmap
        .as_deref()
        .map(|name| kaito_operator::reload::watch_references(client.clone(), &args.lease_namespace, name));
    let reloader = kaito_operator::reload::Reloader::new(args.plugins.clone(), host.clone(), references);
    let reloader = kaito_operator::reload::first_load(reloader, &ctx)
        .await
        .with_context(|| format!("--plugin-configmap {}", args.plugin_configmap.as_deref().unwrap_or_default()))?;
    ctx.registry().provisioner(&args.provisioner).with_context(no_such_provisioner)?;
    if args.plugin_reload_seconds > 0 {
        // Refusals are Events on the operator's own pod.
        let pod = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: std::env::var("POD_NAME").ok(),
            namespace: Some(args.lease_namespace.clone()),
            ..Default::default()
        };
        let every = Duration::from_secs(args.plugin_reload_seconds);
        tokio::spawn(kaito_operator::reload::run(reloader, ctx.clone(), every, pod));
    }

    let ready = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = watch::channel(false);
    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.metrics_addr))?;
    let mut server_stop = stop_rx.clone();
    let server = tokio::spawn(
        axum::serve(listener, router(Health { metrics, ready: ready.clone() }))
            .with_graceful_shutdown(async move {
                let _ = server_stop.wait_for(|s| *s).await;
            })
            .into_future(),
    );
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    ready.store(true, Ordering::Relaxed);
    tracing::info!(provisioner = %args.provisioner, mode = ?ctx.mode, "operator started");

    let identity = std::env::var("POD_NAME").unwrap_or_else(|_| format!("kaito-operator-{}", std::process::id()));
    let elector = LeaderElector::new(client, &args.lease_namespace, &args.lease_name, &identity);
    let mut stopped = stop_rx.clone();
    if args.leader_elect {
        tokio::select! {
            _ = elector.acquire() => tracing::info!(%identity, "leading"),
            _ = stopped.wait_for(|s| *s) => { let _ = server.await; return Ok(()); }
        }
    }
    let stop = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let (ws_ctx, set_ctx, rag_ctx) = (ctx.clone(), ctx.clone(), ctx);
    let (ws_stop, set_stop, rag_stop) = (stop(stop_rx.clone()), stop(stop_rx.clone()), stop(stop_rx.clone()));
    let run = async move {
        tokio::join!(
            async move {
                if workspaces {
                    controller::run::<Workspace>(ws_ctx, ws_stop).await
                }
            },
            async move {
                if sets {
                    controller::run::<InferenceSet>(set_ctx, set_stop).await
                }
            },
            async move {
                if ragengines {
                    controller::run::<RAGEngine>(rag_ctx, rag_stop).await
                }
            }
        );
    };
    if args.leader_elect {
        tokio::select! {
            _ = run => {}
            _ = elector.hold() => {
                // Another replica may already be reconciling: stop at once and let the pod restart as a candidate.
                anyhow::bail!("lost the leader Lease");
            }
        }
        if let Err(e) = tokio::time::timeout(Duration::from_secs(5), elector.release()).await.unwrap_or(Ok(())) {
            tracing::warn!(error = %e, "could not release the leader Lease");
        }
    } else {
        run.await;
    }
    let _ = server.await;
    tracing::info!("operator stopped");
    Ok(())
}
