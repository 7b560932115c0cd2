//! Host bindings, one module per frozen contract version.
//!
//! `latest` is what the rest of the host speaks; an older version's module
//! would convert its types into `latest` ones (as Zed does), so the host can
//! keep loading plugins built against it.

/// Bindings for `wit/v0.1.0`.
pub mod v0_1_0 {
    /// The `preset` world.
    pub mod preset {
        wasmtime::component::bindgen!({
            path: "../../wit/v0.1.0",
            world: "kaito:plugin/preset@0.1.0",
            additional_derives: [PartialEq],
        });
    }
    /// The `provisioner` world; shared interfaces come from `preset`.
    pub mod provisioner {
        wasmtime::component::bindgen!({
            path: "../../wit/v0.1.0",
            world: "kaito:plugin/provisioner@0.1.0",
            additional_derives: [PartialEq],
            with: {
                "kaito:plugin/types@0.1.0": super::preset::kaito::plugin::types,
                "kaito:plugin/log@0.1.0": super::preset::kaito::plugin::log,
            },
        });
    }

    /// Contract version string.
    pub const VERSION: &str = "0.1.0";
    /// Export name a preset component must have.
    pub const PRESET_EXPORT: &str = "kaito:plugin/preset-api@0.1.0";
    /// Export name a provisioner component must have.
    pub const PROVISIONER_EXPORT: &str = "kaito:plugin/provisioner-api@0.1.0";
    /// Import name of the log interface.
    pub const LOG_IMPORT: &str = "kaito:plugin/log@0.1.0";
}

/// The contract version the host speaks internally.
pub mod latest {
    pub use super::v0_1_0::preset::exports::kaito::plugin::preset_api::{
        Adapter, EnvSource, EnvVar, HttpGetAction, ModelInfo, Parallelism, PersistentClaim, PlanRequest, Port,
        PresetPlan, Probe, ProbeAction, ResourcePlan, SecretKeyRef, Volume, VolumeSource, WorkloadPlan,
    };
    pub use super::v0_1_0::preset::kaito::plugin::log::Level;
    pub use super::v0_1_0::preset::kaito::plugin::types::{ErrorKind, GpuShape, KeyValue, PluginError, PluginInfo};
    pub use super::v0_1_0::provisioner::exports::kaito::plugin::provisioner_api::{
        InstanceType, NodeClassRef, NodeGpu, NodeObject, NodeObjectKind, NodePlan, NodeRequest, ProvisionerInfo,
        ProvisionerMode, Requirement, RequirementOperator, Taint, TaintEffect,
    };
}

/// Contract versions this host loads, newest first.
pub const SUPPORTED_VERSIONS: &[&str] = &[v0_1_0::VERSION];

/// `field: message (fix: hint)`, the way errors are shown to users.
pub fn describe(e: &latest::PluginError) -> String {
    match &e.hint {
        Some(hint) => format!("{}: {} (fix: {hint})", e.field, e.message),
        None => format!("{}: {}", e.field, e.message),
    }
}

/// Shorthand for building key/value lists on the host side.
pub fn kv(key: impl Into<String>, value: impl Into<String>) -> latest::KeyValue {
    latest::KeyValue { key: key.into(), value: value.into() }
}
