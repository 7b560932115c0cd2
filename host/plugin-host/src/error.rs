//! Errors of loading and calling plugins.

use crate::wit::latest::PluginError;
use std::path::PathBuf;
use std::time::Duration;

/// Misbehaviour that quarantines a plugin.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Fault {
    #[error("ran past its {0:?} deadline")]
    Timeout(Duration),
    #[error("tried to grow memory past its {0} byte cap")]
    OutOfMemory(usize),
    #[error("trapped: {0}")]
    Trap(String),
    #[error("returned invalid output: {0}")]
    InvalidOutput(String),
}

impl Fault {
    /// Short reason, usable as a condition reason or metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Fault::Timeout(_) => "PluginTimeout",
            Fault::OutOfMemory(_) => "PluginOutOfMemory",
            Fault::Trap(_) => "PluginTrap",
            Fault::InvalidOutput(_) => "PluginInvalidOutput",
        }
    }
}

/// Why a call did not produce a valid answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The plugin answered with a typed error about the request: not its fault.
    #[error("{}", crate::wit::describe(error))]
    Plugin { plugin: String, error: PluginError },
    /// The host refused to pass this request to the plugin: the input is invalid, the plugin is not at fault.
    #[error("invalid input for plugin {plugin}: {detail}")]
    InvalidInput { plugin: String, detail: String },
    /// The plugin misbehaved on this call and is now quarantined.
    #[error("plugin {plugin} {fault}; it is quarantined")]
    Fault { plugin: String, fault: Fault },
    /// The plugin misbehaved earlier and is not called any more.
    #[error("plugin {plugin} is quarantined: {reason}")]
    Quarantined { plugin: String, reason: String },
    /// The caller asked a plugin for an export of the other kind.
    #[error("plugin {plugin} is a {actual} plugin, not a {wanted} plugin")]
    WrongKind { plugin: String, actual: &'static str, wanted: &'static str },
    /// The host had no free instance slot; retry later.
    #[error("plugin {plugin}: no free instance slot, retry later")]
    Busy { plugin: String },
}

impl CallError {
    /// Short reason, usable as a condition reason or metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            CallError::Plugin { .. } => "PluginRejected",
            CallError::InvalidInput { .. } => "InvalidInput",
            CallError::Fault { fault, .. } => fault.reason(),
            CallError::Quarantined { .. } => "PluginQuarantined",
            CallError::WrongKind { .. } => "PluginWrongKind",
            CallError::Busy { .. } => "PluginBusy",
        }
    }
}

/// Why a plugin file was not loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{file}: {source}")]
    Io { file: PathBuf, source: std::io::Error },
    #[error("{file}: {size} bytes is over the {max} byte limit for a component")]
    TooLarge { file: PathBuf, size: u64, max: u64 },
    #[error("{file}: sha256 is {actual} but the manifest pins {expected}")]
    DigestMismatch { file: PathBuf, expected: String, actual: String },
    #[error("{file}: not pinned in plugins.yaml, and the host requires pins")]
    Unpinned { file: PathBuf },
    #[error("{file}: not a valid Wasm component: {detail}")]
    Compile { file: PathBuf, detail: String },
    #[error("{file}: exports no known KAITO contract (exports: {exports}); expected one of {expected}")]
    NoContract { file: PathBuf, exports: String, expected: String },
    #[error("{file}: imports {imports}, but plugins may only import {allowed}")]
    Imports { file: PathBuf, imports: String, allowed: String },
    #[error("{file}: {detail}")]
    Instantiate { file: PathBuf, detail: String },
}
