//! Guest SDK for KAITO plugins.
//!
//! A model preset is a plain Rust type implementing [`Preset`]; a node
//! provisioner implements [`Provisioner`]. [`export_preset!`] and
//! [`export_provisioner!`] turn that type into the exports of the
//! `kaito:plugin@0.2.0` contract (see `wit/v0.2.0/kaito.wit`). wit-bindgen
//! stays an implementation detail of this crate.
//!
//! The same crate also compiles natively, so plugin logic can be unit-tested
//! and benchmarked without a Wasm runtime.

pub mod catalog;
/// Object names, Kubernetes name validators and annotation keys, shared with the host.
pub use kaito_names as names;
pub mod log;
pub mod runtime;
pub mod sizing;
pub mod tuning;

#[doc(hidden)]
pub mod __private {
    /// Bindings for the `preset` world.
    pub mod preset {
        wit_bindgen::generate!({
            path: "../../wit/v0.2.0",
            world: "kaito:plugin/preset@0.2.0",
            pub_export_macro: true,
            additional_derives: [PartialEq],
            export_macro_name: "export_preset_world",
            default_bindings_module: "kaito_plugin_sdk::__private::preset",
        });
    }
    /// Bindings for the `provisioner` world; shared interfaces come from `preset`.
    pub mod provisioner {
        wit_bindgen::generate!({
            path: "../../wit/v0.2.0",
            world: "kaito:plugin/provisioner@0.2.0",
            pub_export_macro: true,
            additional_derives: [PartialEq],
            export_macro_name: "export_provisioner_world",
            default_bindings_module: "kaito_plugin_sdk::__private::provisioner",
            with: {
                "kaito:plugin/types@0.2.0": crate::__private::preset::kaito::plugin::types,
                "kaito:plugin/log@0.2.0": crate::__private::preset::kaito::plugin::log,
            },
        });
    }
}

pub use __private::preset::exports::kaito::plugin::preset_api::{
    Adapter, EnvSource, EnvVar, HttpGetAction, ModelFacts, ModelInfo, Parallelism, PersistentClaim, PlanRequest, Port,
    PresetPlan, Probe, ProbeAction, ResourcePlan, SecretKeyRef, TuneInput, TuneOutput, TunePlan, TuneRequest, Volume,
    VolumeSource, WorkloadPlan,
};
pub use __private::preset::kaito::plugin::types::{ErrorKind, GpuShape, KeyValue, Owner, PluginError, PluginInfo};
pub use __private::provisioner::exports::kaito::plugin::provisioner_api::{
    InstanceType, NodeClassRef, NodeGpu, NodeObject, NodeObjectKind, NodePlan, NodeRequest, ProvisionerInfo,
    ProvisionerMode, Requirement, RequirementOperator, Taint, TaintEffect, Toleration, TolerationOperator,
};

/// Contract version this SDK builds against.
pub const CONTRACT_VERSION: &str = "0.2.0";

/// A model preset: static model facts plus a pure planning function.
pub trait Preset {
    /// Name, version and description of the plugin.
    fn info() -> PluginInfo;
    /// Every model this plugin provides.
    fn models() -> Vec<ModelInfo>;
    /// Size `request.model` for `shape` and say how to run it.
    fn plan(request: PlanRequest, shape: GpuShape) -> Result<PresetPlan, PluginError>;
    /// Plan a fine-tuning Job for `request.model` on `shape`.
    fn tune(request: TuneRequest, shape: GpuShape) -> Result<TunePlan, PluginError>;
}

/// A node provisioner: instance-type table plus node planning.
pub trait Provisioner {
    /// Name, mode and cloud of the provisioner.
    fn info() -> ProvisionerInfo;
    /// Instance types this provisioner can create, with their GPUs.
    fn instance_types() -> Vec<InstanceType>;
    /// NodeClaims or NodePools for `request.node-count` nodes.
    fn plan_nodes(request: NodeRequest) -> Result<NodePlan, PluginError>;
    /// GPU facts of an existing node, read from its labels.
    fn gpu_from_labels(labels: Vec<KeyValue>) -> Result<NodeGpu, PluginError>;
}

impl PluginError {
    /// An error of `kind` at `field`, with a fix.
    pub fn new(kind: ErrorKind, field: &str, message: impl Into<String>, hint: Option<String>) -> Self {
        PluginError { kind, field: field.to_string(), message: message.into(), hint }
    }

    /// Invalid input at `field`.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, field, message, None)
    }
}

/// Shorthand for a label or annotation pair.
pub fn kv(key: impl Into<String>, value: impl Into<String>) -> KeyValue {
    KeyValue { key: key.into(), value: value.into() }
}

/// Value of `key` in a key/value list.
pub fn lookup<'a>(pairs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    pairs.iter().find(|p| p.key == key).map(|p| p.value.as_str())
}

/// A whole table-driven family plugin in one line: defines `$name`, implements
/// [`Preset`] with [`catalog::models`] and [`catalog::plan`] over `$models`, and
/// exports it. `gated = [...]` names the Hugging Face ids that need a token ([`catalog::plan_gated`]).
#[macro_export]
macro_rules! catalog_preset {
    ($name:ident, $plugin:literal, $description:literal, $models:expr) => {
        $crate::catalog_preset!($name, $plugin, $description, $models, gated = []);
    };
    ($name:ident, $plugin:literal, $description:literal, $models:expr, gated = [$($gated:literal),* $(,)?]) => {
        /// The family's preset plugin.
        pub struct $name;

        impl $crate::Preset for $name {
            fn info() -> $crate::PluginInfo {
                $crate::PluginInfo {
                    name: $plugin.into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    description: $description.into(),
                }
            }

            fn models() -> ::std::vec::Vec<$crate::ModelInfo> {
                $crate::catalog::models($models)
            }

            fn plan(
                request: $crate::PlanRequest,
                shape: $crate::GpuShape,
            ) -> ::core::result::Result<$crate::PresetPlan, $crate::PluginError> {
                $crate::catalog::plan_gated($models, &[$($gated),*], request, shape)
            }

            fn tune(
                request: $crate::TuneRequest,
                shape: $crate::GpuShape,
            ) -> ::core::result::Result<$crate::TunePlan, $crate::PluginError> {
                $crate::tuning::tune($models, &[$($gated),*], request, shape)
            }
        }

        $crate::export_preset!($name);
    };
}

/// Export a [`Preset`] implementation as the plugin's `preset-api`.
#[macro_export]
macro_rules! export_preset {
    ($t:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            use $crate::__private::preset::exports::kaito::plugin::preset_api as api;
            struct KaitoPresetExport;
            impl api::Guest for KaitoPresetExport {
                fn info() -> $crate::PluginInfo {
                    <$t as $crate::Preset>::info()
                }
                fn models() -> ::std::vec::Vec<$crate::ModelInfo> {
                    <$t as $crate::Preset>::models()
                }
                fn plan(
                    request: $crate::PlanRequest,
                    shape: $crate::GpuShape,
                ) -> ::core::result::Result<$crate::PresetPlan, $crate::PluginError> {
                    <$t as $crate::Preset>::plan(request, shape)
                }
                fn tune(
                    request: $crate::TuneRequest,
                    shape: $crate::GpuShape,
                ) -> ::core::result::Result<$crate::TunePlan, $crate::PluginError> {
                    <$t as $crate::Preset>::tune(request, shape)
                }
            }
    $crate::__private::preset::export_preset_world!(KaitoPresetExport with_types_in $crate::__private::preset);
        };
    };
}

/// Export a [`Provisioner`] implementation as the plugin's `provisioner-api`.
#[macro_export]
macro_rules! export_provisioner {
    ($t:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            use $crate::__private::provisioner::exports::kaito::plugin::provisioner_api as api;
            struct KaitoProvisionerExport;
            impl api::Guest for KaitoProvisionerExport {
                fn info() -> $crate::ProvisionerInfo {
                    <$t as $crate::Provisioner>::info()
                }
                fn instance_types() -> ::std::vec::Vec<$crate::InstanceType> {
                    <$t as $crate::Provisioner>::instance_types()
                }
                fn plan_nodes(
                    request: $crate::NodeRequest,
                ) -> ::core::result::Result<$crate::NodePlan, $crate::PluginError> {
                    <$t as $crate::Provisioner>::plan_nodes(request)
                }
                fn gpu_from_labels(
                    labels: ::std::vec::Vec<$crate::KeyValue>,
                ) -> ::core::result::Result<$crate::NodeGpu, $crate::PluginError> {
                    <$t as $crate::Provisioner>::gpu_from_labels(labels)
                }
            }
            $crate::__private::provisioner::export_provisioner_world!(KaitoProvisionerExport with_types_in $crate::__private::provisioner);
        };
    };
}

pub mod gfd;
pub mod provisioning;
