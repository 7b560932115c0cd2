//! What changed, and what is missing: the revision of a Workspace's spec and
//! the node objects still to be created.

use kaito_crd::Workspace;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Annotation carrying the full spec hash on owned objects.
pub const HASH_ANNOTATION: &str = "workspace.kaito.io/hash";

/// sha256 over what the user asked for (resource, inference, tuning), as KAITO hashes it;
/// metadata and status changes do not make a new revision.
pub fn spec_hash(ws: &Workspace) -> String {
    let spec = json!({"resource": ws.resource, "inference": ws.inference, "tuning": ws.tuning});
    hex::encode(Sha256::digest(serde_json::to_vec(&spec).expect("Workspace spec serialises")))
}

/// ControllerRevision name: `<workspace>-<first 5 hex digits of the spec hash>`.
pub fn revision_name(ws: &Workspace) -> String {
    format!("{}-{}", ws.name(), &spec_hash(ws)[..5])
}

/// The planned node objects (NodeClaims) whose names do not exist yet, so a
/// reconcile creates only what is missing.
pub fn missing<'a>(planned: &'a [Value], existing: &[String]) -> Vec<&'a Value> {
    planned.iter().filter(|o| o["metadata"]["name"].as_str().is_none_or(|n| !existing.iter().any(|e| e == n))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws(instance: &str) -> Workspace {
        Workspace::from_yaml(&format!(
            "apiVersion: kaito.sh/v1beta1\nkind: Workspace\nmetadata: {{name: w}}\nresource: {{instanceType: {instance}, labelSelector: {{matchLabels: {{a: b}}}}}}\ninference: {{preset: {{name: phi-4}}}}\n"
        ))
        .unwrap()
    }

    #[test]
    fn hash_follows_the_spec_only() {
        let a = ws("Standard_NC24ads_A100_v4");
        let mut annotated = a.clone();
        annotated.metadata.annotations = Some([("x".to_string(), "y".to_string())].into());
        assert_eq!(spec_hash(&a), spec_hash(&annotated));
        assert_ne!(spec_hash(&a), spec_hash(&ws("Standard_NC48ads_A100_v4")));
        assert_eq!(spec_hash(&a).len(), 64);
        assert_eq!(revision_name(&a), format!("w-{}", &spec_hash(&a)[..5]));
    }

    #[test]
    fn only_missing_claims_are_created() {
        let planned = vec![json!({"metadata": {"name": "ws1"}}), json!({"metadata": {"name": "ws2"}})];
        let todo = missing(&planned, &["ws1".to_string()]);
        assert_eq!(todo.len(), 1);
        assert_eq!(todo[0]["metadata"]["name"], "ws2");
        assert!(missing(&planned, &["ws1".into(), "ws2".into()]).is_empty());
    }
}
