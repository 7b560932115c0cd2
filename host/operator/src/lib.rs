//! The Workspace operator.
//!
//! So far this crate holds the part of the controller that needs no API
//! server: turning what the cluster shows (NodeClaims, nodes, the
//! StatefulSet and its pods) into KAITO's status conditions and state, with
//! reasons taken from the real failure. The kube-runtime controller that
//! observes and applies is not written yet.

pub mod status;
