//! The KAITO operator.
//!
//! Every kind the operator reconciles is its CRD type plus an [`controller::Owner`] impl; [`controller`] holds the
//! one pipeline they share (finalizer through kube-runtime, thin `reconcile`/`error_policy`, CRD check, `run`).
//! [`workspace`] renders a Workspace through the same [`kaito_workload::render`] as `kaito render`, creates missing
//! node objects ([`nodes`]), applies the workload once nodes are Ready ([`writes`]) and reports status from what it
//! observed ([`status`], [`verdict`]). [`ragengine`] runs `kaito-rag` for a RAGEngine; [`inferenceset`] keeps
//! `replicas` Workspaces from a template. [`conversion`] serves RAGEngine v1alpha1; [`leader`] holds a Lease; [`server`] serves metrics and probes; [`rbac`]
//! lists every API verb used. The binary runs any of the controllers (`--controllers`).

pub mod context;
pub mod controller;
pub mod conversion;
pub mod error;
pub mod inferenceset;
pub mod leader;
pub mod metrics;
pub mod nodes;
pub mod ragengine;
pub mod rbac;
pub mod reload;
pub mod server;
pub mod status;
pub mod verdict;
pub mod workspace;
pub mod writes;

#[cfg(test)]
mod scenarios;

pub use context::{Config, Context};
pub use controller::{Owner, error_policy, reconcile};
pub use error::{Error, Result};
