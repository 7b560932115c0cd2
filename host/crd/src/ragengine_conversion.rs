//! RAGEngine `kaito.sh/v1alpha1`, KAITO's first RAGEngine version, served beside the stored v1beta1 through the
//! operator's conversion webhook. The two differ in `spec.storage` (v1alpha1: flat `persistentVolumeClaim` and
//! `mountPath`; v1beta1: `persistentVolume` and `vectorDB`) and in v1alpha1's `queryServiceName` and
//! `indexServiceName`; v1beta1 adds `guardrails`. KAITO drops what the other version cannot hold; we keep it in [`CONVERSION_DATA`] so that
//! a round trip through either version gives back the object that was written.

use serde_json::{Map, Value, json};

/// apiVersion of the served, not stored, version.
pub const V1ALPHA1: &str = "kaito.sh/v1alpha1";
/// apiVersion of the stored version.
pub const V1BETA1: &str = "kaito.sh/v1beta1";
/// Annotation holding, as a JSON object, the fields of the version an object was written in that its current
/// version has no place for.
pub const CONVERSION_DATA: &str = "ragengine.kaito.sh/conversion-data";
/// v1alpha1 spec fields with no v1beta1 counterpart (KAITO never used them to name anything).
const V1ALPHA1_ONLY: [&str; 2] = ["queryServiceName", "indexServiceName"];

/// Converts one RAGEngine, as the API server sends it in a ConversionReview, to `desired` (an apiVersion).
pub fn convert(mut obj: Value, desired: &str) -> Result<Value, String> {
    if obj["kind"] != "RAGEngine" {
        return Err(format!("this webhook converts RAGEngines, not {}", obj["kind"]));
    }
    let from = obj["apiVersion"].as_str().ok_or("the object has no apiVersion")?.to_string();
    match (from.as_str(), desired) {
        (a, b) if a == b => {}
        (V1ALPHA1, V1BETA1) => to_v1beta1(&mut obj)?,
        (V1BETA1, V1ALPHA1) => to_v1alpha1(&mut obj)?,
        _ => {
            return Err(format!(
                "cannot convert a RAGEngine from {from} to {desired}: served are {V1ALPHA1} and {V1BETA1}"
            ));
        }
    }
    obj["apiVersion"] = desired.into();
    Ok(obj)
}

fn to_v1beta1(obj: &mut Value) -> Result<(), String> {
    let mut kept = take_conversion_data(obj)?;
    let mut stash = Map::new();
    if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
        for field in V1ALPHA1_ONLY {
            if let Some(v) = spec.remove(field).filter(|v| v != "" && !v.is_null()) {
                stash.insert(field.into(), v);
            }
        }
        if let Some(g) = kept.remove("guardrails") {
            spec.insert("guardrails".into(), g);
        }
        let restored_db = kept.remove("vectorDB");
        let flat = spec.remove("storage");
        if flat.is_some() || restored_db.is_some() {
            let flat = flat.unwrap_or_else(|| json!({}));
            let text = |k: &str| flat.get(k).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string);
            let mut storage = Map::new();
            let (claim, mount) = (text("persistentVolumeClaim"), text("mountPath"));
            // As KAITO: a mount path without a claim still becomes a persistentVolume, whose empty claim the
            // controller then refuses by name, rather than the path vanishing.
            if claim.is_some() || mount.is_some() {
                let mut pv = Map::new();
                pv.insert("persistentVolumeClaim".into(), claim.unwrap_or_default().into());
                if let Some(m) = mount {
                    pv.insert("mountPath".into(), m.into());
                }
                storage.insert("persistentVolume".into(), pv.into());
            }
            if let Some(db) = restored_db {
                storage.insert("vectorDB".into(), db);
            }
            spec.insert("storage".into(), storage.into());
        }
    }
    put_conversion_data(obj, stash);
    Ok(())
}

fn to_v1alpha1(obj: &mut Value) -> Result<(), String> {
    let mut kept = take_conversion_data(obj)?;
    let mut stash = Map::new();
    if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
        if let Some(mut storage) = spec.remove("storage") {
            let mut flat = Map::new();
            if let Some(pv) = storage.get("persistentVolume") {
                for k in ["persistentVolumeClaim", "mountPath"] {
                    if let Some(v) = pv.get(k).filter(|v| *v != "") {
                        flat.insert(k.into(), v.clone());
                    }
                }
            }
            if let Some(db) = storage.as_object_mut().and_then(|s| s.remove("vectorDB")) {
                stash.insert("vectorDB".into(), db);
            }
            spec.insert("storage".into(), flat.into());
        }
        if let Some(g) = spec.remove("guardrails") {
            stash.insert("guardrails".into(), g);
        }
        for field in V1ALPHA1_ONLY {
            if let Some(v) = kept.remove(field) {
                spec.insert(field.into(), v);
            }
        }
    }
    put_conversion_data(obj, stash);
    Ok(())
}

/// Removes and parses [`CONVERSION_DATA`]; an annotation that is not a JSON object is refused (a user edited it).
fn take_conversion_data(obj: &mut Value) -> Result<Map<String, Value>, String> {
    let Some(annotations) = obj.pointer_mut("/metadata/annotations").and_then(Value::as_object_mut) else {
        return Ok(Map::new());
    };
    let Some(raw) = annotations.remove(CONVERSION_DATA) else { return Ok(Map::new()) };
    if annotations.is_empty() {
        obj["metadata"].as_object_mut().expect("metadata is an object").remove("annotations");
    }
    let text = raw.as_str().ok_or_else(|| format!("annotation {CONVERSION_DATA} is not a string"))?;
    match serde_json::from_str(text) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(format!(
            "annotation {CONVERSION_DATA} is not a JSON object ({text:?}): remove it, it only carries fields the other version cannot hold"
        )),
    }
}

fn put_conversion_data(obj: &mut Value, stash: Map<String, Value>) {
    if stash.is_empty() {
        return;
    }
    let meta = &mut obj["metadata"];
    if !meta["annotations"].is_object() {
        meta["annotations"] = json!({});
    }
    // Keys sorted, so the annotation's text does not depend on serde_json's `preserve_order` being unified in.
    let sorted: std::collections::BTreeMap<String, Value> = stash.into_iter().collect();
    meta["annotations"][CONVERSION_DATA] =
        Value::String(serde_json::to_string(&sorted).expect("JSON values serialize"));
}

/// The v1alpha1 openAPIV3Schema: the v1beta1 one with KAITO's v1alpha1 `storage` and service names.
pub fn v1alpha1_schema(v1beta1: &Value) -> Value {
    let mut schema = v1beta1.clone();
    let spec = &mut schema["properties"]["spec"]["properties"];
    spec["storage"] = json!({
        "description": "Where the index lives (v1alpha1: stored as v1beta1's storage.persistentVolume).",
        "type": "object",
        "properties": {
            "persistentVolumeClaim": {"description": "An existing PersistentVolumeClaim the index lives on.", "type": "string"},
            "mountPath": {"description": "Mount path (default /mnt/data).", "type": "string"}
        }
    });
    for field in V1ALPHA1_ONLY {
        spec[field] =
            json!({"description": "KAITO v1alpha1 field, kept across conversion; names nothing.", "type": "string"});
    }
    // v1alpha1 has no guardrails (a v1beta1 object's are kept in the conversion-data annotation).
    spec.as_object_mut().expect("spec properties").remove("guardrails");
    schema
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(api: &str, spec: Value) -> Value {
        json!({"apiVersion": api, "kind": "RAGEngine", "metadata": {"name": "r", "namespace": "default", "uid": "u"},
               "spec": spec, "status": {"workerNodes": ["n1"]}})
    }

    #[test]
    fn v1alpha1_storage_becomes_persistent_volume_and_back() {
        let alpha = obj(
            V1ALPHA1,
            json!({"embedding": {"local": {"modelID": "BAAI/bge-small-en-v1.5"}},
                   "storage": {"persistentVolumeClaim": "rag-data", "mountPath": "/data"}}),
        );
        let beta = convert(alpha.clone(), V1BETA1).unwrap();
        assert_eq!(
            beta,
            obj(
                V1BETA1,
                json!({"embedding": {"local": {"modelID": "BAAI/bge-small-en-v1.5"}},
                       "storage": {"persistentVolume": {"persistentVolumeClaim": "rag-data", "mountPath": "/data"}}})
            )
        );
        assert_eq!(convert(beta, V1ALPHA1).unwrap(), alpha);
    }

    #[test]
    fn fields_one_version_lacks_survive_a_round_trip() {
        let alpha = obj(
            V1ALPHA1,
            json!({"embedding": {"remote": {"url": "http://e"}}, "queryServiceName": "q", "indexServiceName": "i"}),
        );
        let beta = convert(alpha.clone(), V1BETA1).unwrap();
        assert!(beta["spec"].get("queryServiceName").is_none());
        assert_eq!(
            beta["metadata"]["annotations"][CONVERSION_DATA],
            json!(r#"{"indexServiceName":"i","queryServiceName":"q"}"#)
        );
        assert_eq!(convert(beta, V1ALPHA1).unwrap(), alpha);

        let beta = obj(
            V1BETA1,
            json!({"embedding": {"remote": {"url": "http://e"}}, "guardrails": {"enabled": true},
                   "storage": {"vectorDB": {"engine": "qdrant", "url": "http://q"}, "persistentVolume": {"persistentVolumeClaim": "c"}}}),
        );
        let alpha = convert(beta.clone(), V1ALPHA1).unwrap();
        assert_eq!(alpha["spec"]["storage"], json!({"persistentVolumeClaim": "c"}));
        assert!(alpha["spec"].get("guardrails").is_none());
        assert_eq!(convert(alpha, V1BETA1).unwrap(), beta);
    }

    #[test]
    fn empty_and_absent_storage() {
        let alpha = obj(V1ALPHA1, json!({"embedding": {"remote": {"url": "u"}}, "storage": {}}));
        assert_eq!(convert(alpha, V1BETA1).unwrap()["spec"]["storage"], json!({}));
        let beta = obj(V1BETA1, json!({"embedding": {"remote": {"url": "u"}}}));
        assert_eq!(convert(beta.clone(), V1ALPHA1).unwrap()["spec"].get("storage"), None);
        assert_eq!(convert(beta.clone(), V1BETA1).unwrap(), beta);
        // A mount path alone keeps its place; the controller then names the missing claim.
        let alpha = obj(V1ALPHA1, json!({"embedding": {"remote": {"url": "u"}}, "storage": {"mountPath": "/d"}}));
        assert_eq!(
            convert(alpha, V1BETA1).unwrap()["spec"]["storage"],
            json!({"persistentVolume": {"persistentVolumeClaim": "", "mountPath": "/d"}})
        );
    }

    #[test]
    fn refusals_say_why() {
        let mut bad = obj(V1BETA1, json!({"embedding": {"remote": {"url": "u"}}}));
        bad["metadata"]["annotations"] = json!({CONVERSION_DATA: "[1]"});
        assert!(convert(bad, V1ALPHA1).unwrap_err().contains("remove it"));
        let other = obj("kaito.sh/v2", json!({}));
        assert!(convert(other, V1BETA1).unwrap_err().contains("served are kaito.sh/v1alpha1"));
        let mut ws = obj(V1BETA1, json!({}));
        ws["kind"] = "Workspace".into();
        assert!(convert(ws, V1ALPHA1).is_err());
    }
}
