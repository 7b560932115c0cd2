//! The Workspace CustomResourceDefinition, generated from the Rust types.
//!
//! `kaito crd` prints it; the committed copy lives in
//! `charts/kaito-workspace/crds/` and a test fails when it drifts.
//! Rules KAITO's validating webhook enforces that CEL can express are in the
//! schema as `x-kubernetes-validations`; the rest stay in the controller.

use crate::workspace::{
    MAX_ADAPTERS, RESERVED_LABEL_PREFIX, RESERVED_LABELS, V1ALPHA1_DEFAULT_INSTANCE_TYPE, Workspace,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceColumnDefinition, CustomResourceDefinition, CustomResourceDefinitionNames,
    CustomResourceDefinitionSpec, CustomResourceDefinitionVersion, CustomResourceSubresourceStatus,
    CustomResourceSubresources, CustomResourceValidation, JSONSchemaProps,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Value, json};

/// Path of the committed CRD, relative to the repository root.
pub const WORKSPACE_CRD_PATH: &str = "charts/kaito-workspace/crds/kaito.sh_workspaces.yaml";

fn at<'a>(schema: &'a mut Value, path: &[&str]) -> &'a mut Value {
    path.iter().fold(schema, |node, key| {
        node.get_mut("properties")
            .and_then(|p| p.get_mut(*key))
            .unwrap_or_else(|| panic!("schema has no {key} in {path:?}"))
    })
}

fn rule(schema: &mut Value, path: &[&str], rule: &str, message: &str) {
    let node = at(schema, path);
    let rules =
        node.as_object_mut().expect("object schema").entry("x-kubernetes-validations").or_insert_with(|| json!([]));
    rules.as_array_mut().expect("array").push(json!({"rule": rule, "message": message}));
}

/// The openAPIV3Schema of a Workspace, with KAITO's webhook rules as CEL.
pub fn workspace_schema() -> Value {
    let generator = schemars::generate::SchemaSettings::openapi3()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .with_transform(schemars::transform::AddNullable::default())
        .with_transform(kube::core::schema::StructuralSchemaRewriter)
        .with_transform(kube::core::schema::OptionalEnum)
        .with_transform(kube::core::schema::OptionalIntOrString)
        .into_generator();
    let mut schema = serde_json::to_value(generator.into_root_schema_for::<Workspace>()).expect("schema serialises");
    if let Some(o) = schema.as_object_mut() {
        o.remove("title");
        o.remove("description");
    }
    // Schemaless in KAITO: a pod template and volume sources pass through as written.
    let schemaless = |description: &str| json!({"type": "object", "nullable": true, "x-kubernetes-preserve-unknown-fields": true, "description": description});
    *at(&mut schema, &["inference", "template"]) = schemaless("Pod template run instead of a preset (schemaless).");
    let volume = "A Kubernetes volume source (schemaless).";
    at(&mut schema, &["inference", "adapters"])["items"]["properties"]["source"]["properties"]["volumeSource"] =
        schemaless(volume);
    *at(&mut schema, &["tuning", "input", "volumeSource"]) = schemaless(volume);
    *at(&mut schema, &["tuning", "output", "volumeSource"]) = schemaless(volume);
    at(&mut schema, &["inference", "adapters"])["maxItems"] = json!(MAX_ADAPTERS);
    // The uniqueness rule compares every pair of names: the API server's cost estimator refuses it unless names are
    // bounded (a Kubernetes object name is at most 253 characters).
    at(&mut schema, &["inference", "adapters"])["items"]["properties"]["source"]["properties"]["name"]["maxLength"] =
        json!(253);
    at(&mut schema, &["resource", "count"])["default"] = json!(1);
    at(&mut schema, &["resource", "count"])["minimum"] = json!(1);
    let resource = at(&mut schema, &["resource"]);
    resource["required"] = json!(["labelSelector"]);
    // A default of `{}` would lack the required labelSelector: the API server refuses such a CRD.
    resource.as_object_mut().expect("resource is an object schema").remove("default");

    rule(&mut schema, &[], "has(self.inference) != has(self.tuning)", "set exactly one of inference or tuning");
    // The name labels every object made for the Workspace and names its Service: a label value and a DNS label.
    rule(
        &mut schema,
        &[],
        "size(self.metadata.name) <= 63",
        "metadata.name must have at most 63 characters (it is the Workspace's Service name and a label value)",
    );
    rule(
        &mut schema,
        &[],
        "self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",
        "metadata.name must be a DNS-1123 label (lower-case letters, digits and '-')",
    );
    rule(
        &mut schema,
        &[],
        "has(self.inference) == has(oldSelf.inference)",
        "a Workspace cannot switch between inference and tuning",
    );
    rule(
        &mut schema,
        &[],
        "!has(self.inference) || !has(oldSelf.inference) || has(self.inference.template) == has(oldSelf.inference.template)",
        "inference.template cannot be set or unset after creation",
    );
    rule(&mut schema, &["resource", "instanceType"], "self == oldSelf", "resource.instanceType is immutable");
    rule(&mut schema, &["resource", "count"], "self == oldSelf", "resource.count is immutable");
    rule(&mut schema, &["resource", "labelSelector"], "self == oldSelf", "resource.labelSelector is immutable");
    rule(
        &mut schema,
        &["resource", "labelSelector", "matchLabels"],
        &format!(
            "self.exists(k, !(k in [{}]) && !k.startsWith('{RESERVED_LABEL_PREFIX}'))",
            RESERVED_LABELS.iter().map(|l| format!("'{l}'")).collect::<Vec<_>>().join(", ")
        ),
        "resource.labelSelector.matchLabels needs a label that is not reserved for the operator (kaito.sh/*, karpenter.kaito.sh/*)",
    );
    rule(
        &mut schema,
        &["inference"],
        "has(self.preset) != has(self.template)",
        "set inference.preset or inference.template, not both",
    );
    rule(&mut schema, &["inference", "preset", "name"], "self == oldSelf", "inference.preset.name is immutable");
    rule(&mut schema, &["inference", "preset"], "self == oldSelf", "inference.preset is immutable");
    rule(
        &mut schema,
        &["resource"],
        "has(self.partition) == has(oldSelf.partition) && (!has(self.partition) || self.partition == oldSelf.partition)",
        "resource.partition is immutable",
    );
    rule(
        &mut schema,
        &["inference", "adapters"],
        "self.all(a, !has(a.source) || !has(a.source.name) || self.filter(b, has(b.source) && has(b.source.name) && b.source.name == a.source.name).size() == 1)",
        "inference.adapters names must be unique",
    );
    // KAITO's adapter checks (AdapterSpec.validateCreateorUpdate), per item.
    let adapter = &mut at(&mut schema, &["inference", "adapters"])["items"];
    adapter["properties"]["strength"]["maxLength"] = json!(32);
    let adapter_rules = [
        ("has(self.source)", "inference.adapters[].source is required"),
        (
            "!has(self.source) || has(self.source.name) && self.source.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')",
            "inference.adapters[].source.name is required and must be a DNS-1123 subdomain (lower-case letters, digits, '-' and '.')",
        ),
        (
            "!has(self.source) || (has(self.source.image) && size(self.source.image) > 0) || has(self.source.volumeSource)",
            "inference.adapters[].source needs an image or a volumeSource",
        ),
        (
            "!has(self.source) || !has(self.source.urls) || size(self.source.urls) == 0",
            "inference.adapters[].source.urls is not supported: use an image or a volumeSource",
        ),
        (
            "!has(self.strength) || self.strength.matches('^(0*\\\\.[0-9]+|0+(\\\\.[0-9]*)?|1(\\\\.0*)?)$')",
            "inference.adapters[].strength must be a number between 0 and 1",
        ),
    ];
    for (cel, message) in adapter_rules {
        let rules = adapter.as_object_mut().expect("adapter schema").entry("x-kubernetes-validations");
        rules
            .or_insert_with(|| json!([]))
            .as_array_mut()
            .expect("array")
            .push(json!({"rule": cel, "message": message}));
    }
    // KAITO's tuning checks (TuningSpec, DataSource and DataDestination validateCreate) that need no lookup.
    rule(&mut schema, &["tuning"], "has(self.preset)", "tuning.preset is required");
    rule(&mut schema, &["tuning"], "has(self.input)", "tuning.input is required");
    rule(&mut schema, &["tuning"], "has(self.output)", "tuning.output is required");
    rule(&mut schema, &["tuning", "method"], "self.matches('^(?i)q?lora$')", "tuning.method must be lora or qlora");
    rule(
        &mut schema,
        &["tuning", "input"],
        "(has(self.urls) && size(self.urls) > 0 ? 1 : 0) + (has(self.image) && size(self.image) > 0 ? 1 : 0) + (has(self.volumeSource) ? 1 : 0) == 1",
        "tuning.input needs exactly one of urls, image or volumeSource",
    );
    rule(
        &mut schema,
        &["tuning", "output"],
        "(has(self.image) && size(self.image) > 0 ? 1 : 0) + (has(self.volumeSource) ? 1 : 0) == 1",
        "tuning.output needs exactly one of image or volumeSource",
    );
    rule(
        &mut schema,
        &["tuning", "output"],
        "!has(self.image) || size(self.image) == 0 || (has(self.imagePushSecret) && size(self.imagePushSecret) > 0)",
        "tuning.output.image needs tuning.output.imagePushSecret (credentials to push the adapter)",
    );
    rule(
        &mut schema,
        &[],
        "!has(self.tuning) || !has(self.resource.count) || self.resource.count <= 1",
        "tuning runs on one node: set resource.count to 1",
    );
    rule(
        &mut schema,
        &[],
        "!has(self.tuning) || !has(self.resource.partition)",
        "GPU partitioning (resource.partition) is not supported for tuning",
    );
    rule(&mut schema, &["tuning", "preset", "name"], "self == oldSelf", "tuning.preset.name is immutable");
    rule(&mut schema, &["tuning", "preset"], "self == oldSelf", "tuning.preset is immutable");
    rule(&mut schema, &["tuning", "method"], "self == oldSelf", "tuning.method is immutable");
    rule(&mut schema, &["tuning", "input", "name"], "self == oldSelf", "tuning.input.name is immutable");
    // A field rule does not run when the field is removed: the parent checks that.
    rule(
        &mut schema,
        &["resource"],
        "!has(oldSelf.instanceType) || has(self.instanceType)",
        "resource.instanceType cannot be removed",
    );
    schema
}

fn condition_column(name: &str) -> CustomResourceColumnDefinition {
    CustomResourceColumnDefinition {
        name: name.into(),
        type_: "string".into(),
        json_path: format!(".status.conditions[?(@.type==\"{name}\")].status"),
        ..Default::default()
    }
}

/// The v1alpha1 schema: v1beta1's plus what KAITO's v1alpha1 webhook adds (the default instance type, private access
/// mode needing an image). The API server stores a v1alpha1 request as v1beta1, so these run at apply time only.
pub fn workspace_v1alpha1_schema() -> Value {
    let mut schema = workspace_schema();
    at(&mut schema, &["resource", "instanceType"])["default"] = json!(V1ALPHA1_DEFAULT_INSTANCE_TYPE);
    rule(
        &mut schema,
        &["inference", "preset"],
        "!has(self.accessMode) || self.accessMode != 'private' || (has(self.presetOptions) && has(self.presetOptions.image) && size(self.presetOptions.image) > 0)",
        "inference.preset.accessMode private needs an image in inference.preset.presetOptions.image",
    );
    schema
}

/// The Workspace CRD: v1beta1 stored, v1alpha1 served.
pub fn workspace_crd() -> CustomResourceDefinition {
    let schema: JSONSchemaProps = serde_json::from_value(workspace_schema()).expect("valid JSONSchemaProps");
    let alpha: JSONSchemaProps = serde_json::from_value(workspace_v1alpha1_schema()).expect("valid JSONSchemaProps");
    let columns = vec![
        CustomResourceColumnDefinition {
            name: "Instance".into(),
            type_: "string".into(),
            json_path: ".resource.instanceType".into(),
            ..Default::default()
        },
        condition_column("ResourceReady"),
        condition_column("InferenceReady"),
        condition_column("JobStarted"),
        condition_column(crate::workspace::SUCCEEDED_CONDITION),
        CustomResourceColumnDefinition {
            name: "State".into(),
            type_: "string".into(),
            json_path: ".status.state".into(),
            ..Default::default()
        },
        CustomResourceColumnDefinition {
            name: "Age".into(),
            type_: "date".into(),
            json_path: ".metadata.creationTimestamp".into(),
            ..Default::default()
        },
    ];
    let version = |name: &str, storage: bool, schema: &JSONSchemaProps| CustomResourceDefinitionVersion {
        name: name.into(),
        served: true,
        storage,
        additional_printer_columns: Some(columns.clone()),
        schema: Some(CustomResourceValidation { open_api_v3_schema: Some(schema.clone()) }),
        // `status: {}`: the default value serialises as `status: null`, which the API server reads as no status
        // subresource (every PATCH to /status answers 404).
        subresources: Some(CustomResourceSubresources {
            status: Some(CustomResourceSubresourceStatus(json!({}))),
            scale: None,
        }),
        ..Default::default()
    };
    CustomResourceDefinition {
        metadata: ObjectMeta { name: Some("workspaces.kaito.sh".into()), ..Default::default() },
        spec: CustomResourceDefinitionSpec {
            group: crate::GROUP.into(),
            names: CustomResourceDefinitionNames {
                kind: "Workspace".into(),
                list_kind: Some("WorkspaceList".into()),
                plural: "workspaces".into(),
                singular: Some("workspace".into()),
                short_names: Some(vec!["wk".into(), "wks".into()]),
                ..Default::default()
            },
            scope: "Namespaced".into(),
            versions: vec![version("v1beta1", true, &schema), version("v1alpha1", false, &alpha)],
            ..Default::default()
        },
        status: None,
    }
}

/// The CRD as the YAML committed at [`WORKSPACE_CRD_PATH`].
pub fn workspace_crd_yaml() -> String {
    format!(
        "# Generated by `kaito crd` from host/crd; do not edit. A test fails when this file drifts.\n{}",
        serde_yaml::to_string(&workspace_crd()).expect("CRD serialises")
    )
}

/// Fails when the committed file at `rel_path` differs from `want`
/// (`KAITO_BLESS=1` rewrites it); `cli_args` is the `kaito` command that prints it.
#[cfg(test)]
pub(crate) fn assert_committed(rel_path: &str, want: &str, cli_args: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(rel_path);
    if std::env::var_os("KAITO_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "{} drifted from the Rust types: run `cargo run -p kaito-cli -- {cli_args} > {rel_path}`",
        path.display()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_leaves_metadata_to_the_api_server_and_keeps_cel_rules() {
        let s = workspace_schema();
        assert!(s["properties"].get("metadata").is_none());
        assert!(s["properties"].get("apiVersion").is_none());
        assert_eq!(s["properties"]["resource"]["properties"]["count"]["default"], 1);
        assert_eq!(s["properties"]["inference"]["properties"]["adapters"]["maxItems"], 10);
        assert!(s["x-kubernetes-validations"].as_array().unwrap().len() >= 3);
        assert_eq!(
            s["properties"]["inference"]["properties"]["template"]["x-kubernetes-preserve-unknown-fields"],
            true
        );
    }

    #[test]
    fn committed_crd_matches_the_types() {
        assert_committed(WORKSPACE_CRD_PATH, &workspace_crd_yaml(), "crd");
    }
}
