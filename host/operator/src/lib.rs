//! The Workspace operator.
//!
//! So far this crate holds the parts of the controller that need no API
//! server: the spec revision and the NodeClaims still missing
//! ([`revision`]), and turning what the cluster shows (NodeClaims, nodes,
//! the StatefulSet and its pods) into KAITO's status conditions and state,
//! with reasons taken from the real failure ([`status`]). The kube-runtime
//! controller that observes and applies is not written yet.

pub mod revision;
pub mod status;
