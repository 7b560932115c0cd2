//! The sandboxed plugin runtime.
//!
//! Plugins are Wasm components implementing a `kaito:plugin` contract
//! (`wit/vX.Y.Z/`). Each file is compiled once (or loaded from the on-disk
//! artifact cache) into an `InstancePre`; every call gets a fresh `Store`
//! with the limits of [`Limits`]. A plugin that traps, runs past its
//! deadline, exhausts its memory or returns output that fails validation is
//! quarantined: its calls fail fast with the recorded reason while every
//! other plugin keeps answering.

mod cache;
pub mod conformance;
mod error;
mod host;
mod limits;
mod plugin;
mod registry;
pub mod validate;
pub mod wit;

pub use cache::{ArtifactCache, CacheOutcome};
pub use error::{CallError, Fault, LoadError};
pub use host::{HostConfig, PluginHost};
pub use limits::{Limits, Policy};
pub use plugin::{Metadata, Plugin, PluginKind};
pub use registry::{LoadFailure, Manifest, ManifestEntry, Registry, ResolveError, nearest};
pub use wit::describe;
pub use wit::latest::*;

// The operator calls plugins from many reconcile tasks at once.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Registry>();
    send_sync::<PluginHost>();
};
