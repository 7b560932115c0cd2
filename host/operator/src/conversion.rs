//! The RAGEngine conversion webhook: an HTTPS endpoint the API server calls to convert between `kaito.sh/v1alpha1`
//! and the stored `kaito.sh/v1beta1` (the conversion itself is `kaito_crd::ragengine_conversion`), the serving
//! certificate it needs, and its registration in the CRD.
//!
//! As KAITO's webhooks, the operator makes its own certificate authority at first start and keeps it in a Secret,
//! so that every replica behind the Service serves the same certificate and a restart does not change the CRD's
//! `caBundle`. Registration sets the CRD's conversion to this webhook and serves v1alpha1 in one patch: v1alpha1
//! is never served without a conversion that keeps its fields.

use axum::{Json, Router, routing::post};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceConversion, CustomResourceDefinition, ServiceReference, WebhookClientConfig, WebhookConversion,
};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::core::conversion::{ConversionRequest, ConversionResponse, ConversionReview};
use kube::core::response::Status;
use serde_json::json;
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// The CRD whose conversion this webhook serves.
pub const CRD_NAME: &str = "ragengines.kaito.sh";
/// Path the API server posts ConversionReviews to.
pub const PATH: &str = "/convert";
/// Secret annotation: the certificate's subject alternative names, comma-separated.
const SANS: &str = "kaito.sh/webhook-cert-sans";
/// Secret annotation: the year the certificates stop being valid (they are renewed a year before).
const EXPIRES: &str = "kaito.sh/webhook-cert-expires-year";
/// Years a new certificate is valid.
const VALID_YEARS: i32 = 10;

/// Where the webhook listens and how the API server reaches it.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// Address the HTTPS server binds.
    pub addr: SocketAddr,
    /// How the API server reaches it.
    pub endpoint: Endpoint,
    /// Namespace of the Secret (and of the Service).
    pub namespace: String,
    /// Name of the Secret holding the CA and serving certificate.
    pub secret: String,
}

/// The API server's way to the webhook.
#[derive(Clone, Debug, PartialEq)]
pub enum Endpoint {
    /// A Service in [`WebhookConfig::namespace`] and its port (the chart's).
    Service { name: String, port: i32 },
    /// A URL (an operator running outside the cluster, as the end-to-end tests run it).
    Url(String),
}

impl WebhookConfig {
    /// Names the certificate must hold for the API server to accept it.
    pub fn subject_alt_names(&self) -> Vec<String> {
        match &self.endpoint {
            Endpoint::Service { name, .. } => {
                let ns = &self.namespace;
                vec![format!("{name}.{ns}.svc"), format!("{name}.{ns}.svc.cluster.local")]
            }
            Endpoint::Url(url) => {
                let host = url.split("://").nth(1).unwrap_or(url).split(['/', '?']).next().unwrap_or_default();
                // `[::1]:9443`, `127.0.0.1:9443`, `host:9443`, `host`.
                let host = match host.strip_prefix('[') {
                    Some(v6) => v6.split(']').next().unwrap_or_default(),
                    None => host.rsplit_once(':').map_or(host, |(h, _)| h),
                };
                vec![host.to_string()]
            }
        }
    }

    /// The CRD's `spec.conversion` for this webhook, trusting `ca_pem`.
    pub fn conversion(&self, ca_pem: &str) -> CustomResourceConversion {
        let mut client =
            WebhookClientConfig { ca_bundle: Some(ByteString(ca_pem.as_bytes().to_vec())), ..Default::default() };
        match &self.endpoint {
            Endpoint::Service { name, port } => {
                client.service = Some(ServiceReference {
                    name: name.clone(),
                    namespace: self.namespace.clone(),
                    path: Some(PATH.into()),
                    port: Some(*port),
                })
            }
            Endpoint::Url(url) => client.url = Some(url.clone()),
        }
        CustomResourceConversion {
            strategy: "Webhook".into(),
            webhook: Some(WebhookConversion {
                client_config: Some(client),
                conversion_review_versions: vec!["v1".into()],
            }),
        }
    }
}

/// Answers one ConversionReview: every object converted, or the first failure with its reason.
pub fn review(review: ConversionReview) -> ConversionReview {
    let request = match ConversionRequest::from_review(review) {
        Ok(r) => r,
        Err(_) => {
            return ConversionResponse::invalid(Status::failure("a ConversionReview without a request", "BadRequest"))
                .into_review();
        }
    };
    let desired = request.desired_api_version.clone();
    let converted: Result<Vec<_>, _> =
        request.objects.iter().map(|o| kaito_crd::ragengine_conversion::convert(o.clone(), &desired)).collect();
    let response = ConversionResponse::for_request(request);
    match converted {
        Ok(objects) => response.success(objects),
        Err(e) => {
            tracing::warn!(error = %e, %desired, "conversion refused");
            response.failure(Status::failure(&e, "Invalid"))
        }
    }
    .into_review()
}

/// The webhook's routes.
pub fn router() -> Router {
    Router::new().route(PATH, post(|Json(r): Json<ConversionReview>| async move { Json(review(r)) }))
}

/// PEM of the CA, the serving certificate and its key.
#[derive(Clone, Debug, PartialEq)]
pub struct Certificates {
    /// The CA certificate (the CRD's caBundle).
    pub ca: String,
    /// The serving certificate.
    pub cert: String,
    /// The serving certificate's private key.
    pub key: String,
}

fn this_year() -> i32 {
    let days = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() / 86_400);
    1970 + (days as f64 / 365.2425) as i32
}

/// A new CA and a serving certificate for `sans`, valid from this year's first day for [`VALID_YEARS`].
pub fn generate(sans: &[String]) -> Result<(Certificates, i32), rcgen::Error> {
    let year = this_year();
    let until = year + VALID_YEARS;
    let dated = |mut p: rcgen::CertificateParams| {
        p.not_before = rcgen::date_time_ymd(year, 1, 1);
        p.not_after = rcgen::date_time_ymd(until, 1, 1);
        p
    };
    let mut ca = dated(rcgen::CertificateParams::new(Vec::<String>::new())?);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "kaito-ragengine-webhook-ca");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    let ca_key = rcgen::KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;
    let mut leaf = dated(rcgen::CertificateParams::new(sans.to_vec())?);
    leaf.distinguished_name.push(rcgen::DnType::CommonName, sans.first().cloned().unwrap_or_default());
    leaf.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature, rcgen::KeyUsagePurpose::KeyEncipherment];
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_key = rcgen::KeyPair::generate()?;
    let leaf_cert = leaf.signed_by(&leaf_key, &rcgen::Issuer::new(ca, ca_key))?;
    Ok((Certificates { ca: ca_cert.pem(), cert: leaf_cert.pem(), key: leaf_key.serialize_pem() }, until))
}

fn secret_data(secret: &Secret) -> Option<Certificates> {
    let data = secret.data.as_ref()?;
    let text = |k: &str| data.get(k).and_then(|b| String::from_utf8(b.0.clone()).ok());
    Some(Certificates { ca: text("ca.crt")?, cert: text("tls.crt")?, key: text("tls.key")? })
}

/// Whether a stored Secret can be served as is: its names match and it is not in its last year.
fn usable(secret: &Secret, sans: &str) -> Option<Certificates> {
    let notes = secret.metadata.annotations.as_ref()?;
    let expires: i32 = notes.get(EXPIRES)?.parse().ok()?;
    (notes.get(SANS)? == sans && expires > this_year() + 1).then(|| secret_data(secret)).flatten()
}

fn secret(config: &WebhookConfig, certs: &Certificates, sans: &str, expires: i32, version: Option<String>) -> Secret {
    let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(config.secret.clone()),
            namespace: Some(config.namespace.clone()),
            resource_version: version,
            annotations: Some(BTreeMap::from([(SANS.into(), sans.into()), (EXPIRES.into(), expires.to_string())])),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            ("ca.crt".into(), bytes(&certs.ca)),
            ("tls.crt".into(), bytes(&certs.cert)),
            ("tls.key".into(), bytes(&certs.key)),
        ])),
        ..Default::default()
    }
}

/// The certificates every replica serves: the Secret's when usable, else new ones written to it. Two replicas
/// starting together race on create (or update): the loser reads the winner's.
pub async fn certificates(client: &kube::Client, config: &WebhookConfig) -> anyhow::Result<Certificates> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &config.namespace);
    let sans = config.subject_alt_names().join(",");
    for _ in 0..3 {
        let existing = api.get_opt(&config.secret).await?;
        if let Some(certs) = existing.as_ref().and_then(|s| usable(s, &sans)) {
            return Ok(certs);
        }
        let (certs, expires) = generate(&config.subject_alt_names())?;
        let written = match existing {
            None => api.create(&PostParams::default(), &secret(config, &certs, &sans, expires, None)).await,
            Some(old) => {
                let version = old.metadata.resource_version;
                api.replace(&config.secret, &PostParams::default(), &secret(config, &certs, &sans, expires, version))
                    .await
            }
        };
        match written {
            Ok(_) => {
                tracing::info!(secret = %config.secret, %sans, expires, "webhook certificates written");
                return Ok(certs);
            }
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(e.into()),
        }
    }
    anyhow::bail!("Secret {}/{} kept changing while it was written", config.namespace, config.secret)
}

/// Points the CRD's conversion at this webhook and serves v1alpha1, in one patch that first checks the version's
/// position; nothing is written when both are already so.
pub async fn register(client: &kube::Client, config: &WebhookConfig, ca_pem: &str) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = api.get(CRD_NAME).await?;
    let conversion = config.conversion(ca_pem);
    let index = crd
        .spec
        .versions
        .iter()
        .position(|v| v.name == "v1alpha1")
        .ok_or_else(|| anyhow::anyhow!("{CRD_NAME} lists no v1alpha1: apply the chart's CRD"))?;
    if crd.spec.conversion.as_ref() == Some(&conversion) && crd.spec.versions[index].served {
        return Ok(());
    }
    let patch: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": format!("/spec/versions/{index}/name"), "value": "v1alpha1"},
        {"op": "replace", "path": format!("/spec/versions/{index}/served"), "value": true},
        {"op": "add", "path": "/spec/conversion", "value": conversion},
    ]))?;
    api.patch(CRD_NAME, &PatchParams::default(), &Patch::Json::<()>(patch)).await?;
    tracing::info!(crd = CRD_NAME, endpoint = ?config.endpoint, "conversion webhook registered; v1alpha1 served");
    Ok(())
}

/// Makes or reads the certificates, starts the HTTPS server, then registers it: the API server is pointed at the
/// webhook only once it answers.
pub async fn start(client: &kube::Client, config: WebhookConfig) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let certs = certificates(client, &config).await?;
    // kube's TLS and this server share rustls; only the ring provider is compiled in.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls = axum_server::tls_rustls::RustlsConfig::from_pem(certs.cert.into_bytes(), certs.key.into_bytes()).await?;
    let listener = std::net::TcpListener::bind(config.addr)
        .map_err(|e| anyhow::anyhow!("cannot listen on --webhook-addr {}: {e}", config.addr))?;
    listener.set_nonblocking(true)?;
    let server = axum_server::from_tcp_rustls(listener, tls)?;
    let task = tokio::spawn(async move {
        if let Err(e) = server.serve(router().into_make_service()).await {
            tracing::error!(error = %e, "conversion webhook stopped");
        }
    });
    register(client, &config, &certs.ca).await?;
    Ok(task)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(endpoint: Endpoint) -> WebhookConfig {
        WebhookConfig {
            addr: "127.0.0.1:0".parse().unwrap(),
            endpoint,
            namespace: "kaito-rag".into(),
            secret: "cert".into(),
        }
    }

    #[test]
    fn names_for_a_service_and_for_a_url() {
        let svc = config(Endpoint::Service { name: "rag-webhook".into(), port: 443 });
        assert_eq!(svc.subject_alt_names(), ["rag-webhook.kaito-rag.svc", "rag-webhook.kaito-rag.svc.cluster.local"]);
        for (url, host) in [
            ("https://127.0.0.1:9443/convert", "127.0.0.1"),
            ("https://[::1]:9443/convert", "::1"),
            ("https://webhook.example/convert", "webhook.example"),
        ] {
            assert_eq!(config(Endpoint::Url(url.into())).subject_alt_names(), [host]);
        }
        let conv = serde_json::to_value(svc.conversion("PEM")).unwrap();
        assert_eq!(
            conv,
            json!({"strategy": "Webhook", "webhook": {"conversionReviewVersions": ["v1"], "clientConfig": {
                "caBundle": "UEVN", "service": {"name": "rag-webhook", "namespace": "kaito-rag", "path": "/convert", "port": 443}}}})
        );
    }

    #[test]
    fn reviews_convert_every_object_or_fail_with_the_reason() {
        let alpha = json!({"apiVersion": "kaito.sh/v1alpha1", "kind": "RAGEngine", "metadata": {"name": "r"},
                           "spec": {"embedding": {"remote": {"url": "u"}}, "storage": {"persistentVolumeClaim": "c"}}});
        let request = |objects: Vec<serde_json::Value>| -> ConversionReview {
            serde_json::from_value(json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "ConversionReview",
                "request": {"uid": "705ab4f5", "desiredAPIVersion": "kaito.sh/v1beta1", "objects": objects}}))
            .unwrap()
        };
        let out = serde_json::to_value(review(request(vec![alpha.clone()]))).unwrap();
        assert_eq!(out["response"]["uid"], "705ab4f5");
        assert_eq!(out["response"]["result"]["status"], "Success");
        assert_eq!(
            out["response"]["convertedObjects"][0]["spec"]["storage"],
            json!({"persistentVolume": {"persistentVolumeClaim": "c"}})
        );
        let mut other = alpha;
        other["kind"] = "Workspace".into();
        let out = serde_json::to_value(review(request(vec![other]))).unwrap();
        assert_eq!(out["response"]["result"]["status"], "Failure");
        assert!(out["response"]["result"]["message"].as_str().unwrap().contains("not \"Workspace\""));
    }

    #[test]
    fn certificates_chain_to_their_ca_and_name_the_service() {
        let (certs, until) = generate(&["rag-webhook.kaito-rag.svc".into(), "127.0.0.1".into()]).unwrap();
        assert_eq!(until, this_year() + VALID_YEARS);
        assert!(certs.ca.starts_with("-----BEGIN CERTIFICATE-----") && certs.key.contains("PRIVATE KEY"));
        assert_ne!(certs.ca, certs.cert);
        // A stored Secret is reused only for the same names and outside its last year.
        let sans = "rag-webhook.kaito-rag.svc,127.0.0.1";
        let cfg = config(Endpoint::Url("https://127.0.0.1:1/convert".into()));
        let stored = secret(&cfg, &certs, sans, until, None);
        assert_eq!(usable(&stored, sans), Some(certs.clone()));
        assert_eq!(usable(&stored, "other.svc"), None);
        assert_eq!(usable(&secret(&cfg, &certs, sans, this_year() + 1, None), sans), None);
    }
}
