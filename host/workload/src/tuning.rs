//! From a tuning Workspace to its Job, through the plugins: the preset plans the trainer's container, the provisioner
//! the node; the host wires in what only it knows (the user's data and output volumes, registry credentials) and
//! tells the preset where they are.

use crate::objects::{self, HostMount};
use crate::{RenderError, RenderOptions, checks, gpu_shape, kvs, provisioner_for};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{EmptyDirVolumeSource, Volume};
use kaito_crd::{FieldError, TuningSpec, Workspace};
use kaito_plugin_host::{
    ModelInfo, NodePlan, NodeRequest, ProvisionerMode, Registry, ResolveError, TuneInput, TuneOutput, TunePlan,
    TuneRequest,
};
use serde_json::Value;

/// Where the host mounts the user's training data.
pub const DATA_DIR: &str = "/mnt/data";
/// Where the adapter is written: the user's output volume, or scratch space when it is pushed as an image (KAITO's
/// default output path).
pub const OUTPUT_DIR: &str = "/mnt/output";
pub use crate::objects::REGISTRY_DIR;

/// Everything a tuning render decided.
#[derive(Debug, Clone)]
pub struct TuningRendered {
    /// NodeClaims or NodePools (cluster-scoped, Karpenter API).
    pub nodes: Vec<Value>,
    pub job: Job,
    pub plan: TunePlan,
    pub node_plan: NodePlan,
    /// Decisions the user should hear about.
    pub notes: Vec<String>,
}

impl TuningRendered {
    /// Every object as JSON, in apply order.
    pub fn documents(&self) -> Vec<Value> {
        let mut docs = self.nodes.clone();
        docs.push(serde_json::to_value(&self.job).expect("Job serialises"));
        docs
    }
}

/// KAITO's data-URL rule: http(s) with a host, and not one that reaches the node or the cloud from inside the cluster
/// (localhost, metadata endpoints, loopback, private and link-local addresses).
pub fn check_data_url(url: &str) -> Result<(), &'static str> {
    let lower = url.to_ascii_lowercase();
    let rest =
        lower.strip_prefix("https://").or_else(|| lower.strip_prefix("http://")).ok_or("must use http or https")?;
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("is not a valid URL");
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host_port.split(':').next().unwrap_or_default(),
    };
    if host.is_empty() {
        return Err("has no host");
    }
    let metadata = ["metadata.google.internal", "metadata.google", "instance-data.ec2.internal"];
    if host == "localhost" || host.ends_with(".localhost") || metadata.contains(&host) {
        return Err("must not target a local or metadata endpoint");
    }
    let blocked = match host.split('%').next().unwrap_or_default().parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(a)) => {
            a.is_loopback() || a.is_private() || a.is_link_local() || (a.octets()[..3] == [224, 0, 0])
        }
        Ok(std::net::IpAddr::V6(a)) => {
            let s = a.segments();
            a.is_loopback()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] & 0xff0f) == 0xff02
                || a.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback() || v4.is_private() || v4.is_link_local())
        }
        Err(_) => false,
    };
    if blocked {
        return Err("must not target a loopback, private or link-local address");
    }
    Ok(())
}

/// The user's `volumeSource` as a pod volume named `name`.
fn user_volume(name: &str, source: &Value, field: &str) -> Result<Volume, FieldError> {
    let mut v = source.as_object().cloned().ok_or_else(|| FieldError::new(field, "must be an object"))?;
    v.insert("name".into(), Value::String(name.into()));
    serde_json::from_value(Value::Object(v))
        .map_err(|e| FieldError::new(field, format!("is not a Kubernetes volume source: {e}")))
}

/// The preset's request and the mounts the host adds for `tuning`.
fn request_and_mounts(
    ws: &Workspace,
    tuning: &TuningSpec,
    model: &str,
    image_registry: &str,
) -> Result<(TuneRequest, Vec<HostMount>), FieldError> {
    let input = tuning.input.clone().unwrap_or_default();
    let output = tuning.output.clone().unwrap_or_default();
    let mut mounts = Vec::new();
    let mut secrets: Vec<String> = Vec::new();
    let tune_input = match (&input.urls, &input.image, &input.volume_source) {
        (Some(urls), None, None) if !urls.is_empty() => {
            for (i, url) in urls.iter().enumerate() {
                check_data_url(url).map_err(|why| {
                    FieldError::new(format!("tuning.input.urls[{i}]"), why)
                        .hint("name a public http(s) URL: the trainer downloads it from inside the cluster")
                })?;
            }
            TuneInput::Urls(urls.clone())
        }
        (None, Some(image), None) => {
            kaito_oci::parse(image).map_err(|e| FieldError::new("tuning.input.image", e.to_string()))?;
            secrets.extend(input.image_pull_secrets.iter().flatten().cloned());
            TuneInput::Image(image.clone())
        }
        (None, None, Some(source)) => {
            let volume = user_volume("data", source, "tuning.input.volumeSource")?;
            mounts.push(HostMount { volume, mount_path: DATA_DIR.into(), read_only: true });
            TuneInput::Directory(DATA_DIR.into())
        }
        _ => {
            return Err(FieldError::new("tuning.input", "needs exactly one of urls, image or volumeSource"));
        }
    };
    let tune_output = match (&output.image, &output.volume_source) {
        (Some(image), None) => {
            kaito_oci::parse(image).map_err(|e| FieldError::new("tuning.output.image", e.to_string()))?;
            let secret = output.image_push_secret.clone().filter(|s| !s.is_empty()).ok_or_else(|| {
                FieldError::new("tuning.output.imagePushSecret", "is required to push the adapter")
                    .hint("name a kubernetes.io/dockerconfigjson Secret with push rights")
            })?;
            secrets.push(secret);
            let scratch = Volume {
                name: "results".into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Default::default()
            };
            mounts.push(HostMount { volume: scratch, mount_path: OUTPUT_DIR.into(), read_only: false });
            TuneOutput::Image(image.clone())
        }
        (None, Some(source)) => {
            let volume = user_volume("results", source, "tuning.output.volumeSource")?;
            mounts.push(HostMount { volume, mount_path: OUTPUT_DIR.into(), read_only: false });
            TuneOutput::Directory(OUTPUT_DIR.into())
        }
        _ => return Err(FieldError::new("tuning.output", "needs exactly one of image or volumeSource")),
    };
    // A secret named twice (as a pull and as the push secret) is mounted once: a projected volume with one path twice
    // is refused by the API server. The first mention keeps its place (the trainer's merge lets the first win).
    let mut seen = std::collections::BTreeSet::new();
    secrets.retain(|s| seen.insert(s.clone()));
    let registry_configs: Vec<String> = secrets.iter().map(|s| objects::registry_config_path(s)).collect();
    mounts.extend(objects::registry_credentials(&secrets));
    let preset = tuning.preset.clone().unwrap_or_default();
    let request = TuneRequest {
        workspace: ws.name().into(),
        namespace: ws.namespace().into(),
        model: model.into(),
        method: tuning.method.as_deref().unwrap_or("lora").trim().to_ascii_lowercase(),
        config_map: tuning.config.clone().filter(|c| !c.is_empty()),
        model_access_secret: preset.preset_options.and_then(|o| o.model_access_secret).filter(|s| !s.is_empty()),
        image_registry: image_registry.into(),
        input: tune_input,
        output: tune_output,
        registry_configs,
        scratch_dir: OUTPUT_DIR.into(),
        annotations: kvs(ws.metadata.annotations.iter().flatten()),
    };
    Ok((request, mounts))
}

/// Render the Job and node objects the operator would create for a tuning Workspace.
pub fn render_tuning(registry: &Registry, ws: &Workspace, opts: &RenderOptions) -> Result<TuningRendered, RenderError> {
    ws.validate()?;
    let tuning = ws.tuning.as_ref().ok_or_else(|| FieldError::new("tuning", "is not set"))?;
    let name = tuning.preset.as_ref().map(|p| p.name.clone()).unwrap_or_default();
    let (plugin, model): (_, ModelInfo) = registry.find_model(&name).map_err(|e| match e {
        ResolveError::UnknownModel { query, nearest } => RenderError::Invalid(
            FieldError::new("tuning.preset.name", format!("no preset plugin provides a model named {query:?}"))
                .hint(format!("closest: {}", nearest.join(", "))),
        ),
        e => e.into(),
    })?;
    let provisioner = provisioner_for(registry, opts)?;
    let mode = provisioner.provisioner_info().map(|i| i.mode).unwrap_or(ProvisionerMode::BringYourOwn);
    let shape = gpu_shape(&provisioner, mode, ws, opts)?;
    let (request, mounts) = request_and_mounts(ws, tuning, &model.name, &opts.image_registry)?;
    let plan = plugin.tune(&request, &shape)?;
    let annotations = checks::node_annotations(ws, opts.node_classes.as_ref())?;
    let node_plan = provisioner.plan_nodes(&NodeRequest {
        owner: kaito_plugin_host::wit::workspace_owner(ws.name(), ws.namespace()),
        instance_type: ws.resource.instance_type.clone().unwrap_or_default(),
        node_count: 1,
        match_labels: kvs(&ws.match_labels()),
        disk_bytes: plan.resources.disk_bytes,
        annotations,
    })?;
    let job = objects::tuning_job(ws, &model, &plugin, &plan, &node_plan, mounts);
    Ok(TuningRendered { nodes: objects::node_objects(&node_plan), job, notes: plan.notes.clone(), plan, node_plan })
}

#[cfg(test)]
mod tests {
    use super::{check_data_url, request_and_mounts};

    /// One secret used to pull the data and to push the adapter is mounted once, where the trainer is told it is.
    #[test]
    fn a_secret_named_twice_is_mounted_once() {
        let ws = kaito_crd::Workspace::from_yaml(
            "apiVersion: kaito.sh/v1beta1
kind: Workspace
metadata:
  name: ws
resource:
  instanceType: Standard_NC24ads_A100_v4
  labelSelector:
    matchLabels:
      app: ws
tuning:
  preset:
    name: phi-3-mini-4k-instruct
  method: lora
  input:
    image: registry.example.com/data:1
    imagePullSecrets: [shared, other]
  output:
    image: registry.example.com/adapter:1
    imagePushSecret: shared
",
        )
        .unwrap();
        let (request, mounts) =
            request_and_mounts(&ws, ws.tuning.as_ref().unwrap(), "phi-3-mini-4k-instruct", "ghcr.io/kaito-rs").unwrap();
        assert_eq!(request.registry_configs, ["/mnt/registry/shared.json", "/mnt/registry/other.json"]);
        let credentials = mounts.iter().find(|m| m.volume.name == "registry-credentials").unwrap();
        let sources = credentials.volume.projected.as_ref().unwrap().sources.as_ref().unwrap();
        let names: Vec<&str> = sources.iter().map(|s| s.secret.as_ref().unwrap().name.as_str()).collect();
        assert_eq!(names, ["shared", "other"]);
    }

    /// KAITO's data-URL cases: public http(s) passes; other schemes, local names, metadata hosts and private,
    /// loopback or link-local addresses do not.
    #[test]
    fn data_urls_follow_kaitos_rule() {
        for ok in [
            "https://huggingface.co/datasets/x/resolve/main/a.jsonl?download=true",
            "http://datasets.example.com:8080/a.jsonl",
            "https://8.8.8.8/a.jsonl",
            "https://[2001:db8::1]/a.jsonl",
        ] {
            assert_eq!(check_data_url(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("ftp://example.com/a", "http"),
            ("file:///etc/passwd", "http"),
            ("https:///a.jsonl", "no host"),
            ("http://localhost:8000/a", "local or metadata"),
            ("http://api.localhost/a", "local or metadata"),
            ("http://metadata.google.internal/computeMetadata", "local or metadata"),
            ("http://169.254.169.254/latest/meta-data", "link-local"),
            ("http://127.0.0.1/a", "loopback"),
            ("http://10.1.2.3/a", "private"),
            ("http://user@192.168.1.1:80/a", "private"),
            ("http://[::1]/a", "loopback"),
            ("http://[fd00::1]/a", "private"),
            ("http://[fe80::1%25eth0]/a", "link-local"),
            ("http://[::ffff:10.0.0.1]/a", "private"),
        ] {
            let err = check_data_url(bad).expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
