//! The Workspace operator.
//!
//! [`controller`] runs kube-runtime's `Controller` over Workspaces, their
//! StatefulSets and Services, and the NodeClaims or NodePools the provisioner
//! plugin planned. The reconcile logic is in [`workspace::WorkspaceExt`]: it
//! renders the Workspace through the same [`kaito_workload::render`] as
//! `kaito render`, creates missing node objects, applies the workload with
//! server-side apply once nodes are Ready, and patches status from what it
//! observed ([`status`]). [`leader`] holds a Lease; [`server`] serves metrics
//! and probes; [`rbac`] lists every API verb used. [`ragengine`] is the
//! RAGEngine controller's logic (Deployment and Service running `kaito-rag`,
//! NodeClaims through the same provisioner plugin); the binary runs either
//! controller or both (`--controllers`).

pub mod context;
pub mod controller;
pub mod error;
pub mod finalizer;
pub mod leader;
pub mod metrics;
pub mod ragengine;
pub mod rbac;
pub mod revision;
pub mod server;
pub mod status;
pub mod workspace;

#[cfg(test)]
mod scenarios;

pub use context::{Config, Context};
pub use controller::{error_policy, reconcile};
pub use error::{Error, Result};
