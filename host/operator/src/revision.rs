//! What is missing: the planned node objects not created yet. The spec
//! revision itself is [`kaito_crd::Workspace::revision_name`], stamped on the
//! pod template by the renderer.

use serde_json::Value;

/// The planned node objects (NodeClaims) whose names do not exist yet, so a
/// reconcile creates only what is missing.
pub fn missing<'a>(planned: &'a [Value], existing: &[String]) -> Vec<&'a Value> {
    planned.iter().filter(|o| o["metadata"]["name"].as_str().is_none_or(|n| !existing.iter().any(|e| e == n))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_missing_claims_are_created() {
        let planned = vec![json!({"metadata": {"name": "ws1"}}), json!({"metadata": {"name": "ws2"}})];
        let todo = missing(&planned, &["ws1".to_string()]);
        assert_eq!(todo.len(), 1);
        assert_eq!(todo[0]["metadata"]["name"], "ws2");
        assert!(missing(&planned, &["ws1".into(), "ws2".into()]).is_empty());
    }
}
