//! Every write an owner makes besides its finalizer: server-side apply of what it renders, its status (applied too,
//! so the operator owns exactly the status fields it sets) and its events.

use crate::context::Context;
use crate::error::{Error, Result};
use kube::api::{Api, Patch, PatchParams};
use kube::core::NamespaceResourceScope;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use std::fmt::Debug;

/// Field manager of every write.
pub const FIELD_MANAGER: &str = "kaito-operator";

/// `value` as JSON; `what` names it in the error.
pub fn serialize<T: Serialize>(what: &'static str, value: &T) -> Result<serde_json::Value> {
    serde_json::to_value(value).map_err(|source| Error::Serialize { what, source })
}

/// Server-side applies `object` in `namespace`, taking ownership of its fields, and returns what the server holds.
pub async fn apply<T>(ctx: &Context, namespace: &str, object: &T) -> Result<T>
where
    T: Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Serialize + Debug,
{
    let api: Api<T> = Api::namespaced(ctx.client.clone(), namespace);
    Ok(api.patch(&object.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(object)).await?)
}

/// Applies `status` as the status of `object`.
pub async fn patch_status<K>(ctx: &Context, object: &K, status: &impl Serialize) -> Result<()>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
{
    let body = json!({"apiVersion": K::api_version(&()), "kind": K::kind(&()), "status": serialize("status", status)?});
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &object.namespace().unwrap_or_default());
    api.patch_status(&object.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body)).await?;
    Ok(())
}

/// Longest event note the API server accepts (`note` is validated at 1024 bytes).
const MAX_NOTE_BYTES: usize = 1024;

/// `note` cut to what an Event may carry, at a character boundary, marked as cut.
pub fn event_note(note: String) -> String {
    if note.len() <= MAX_NOTE_BYTES {
        return note;
    }
    let mut end = MAX_NOTE_BYTES - '…'.len_utf8();
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &note[..end])
}

/// Publishes a Reconcile event about `object`. An event that cannot be written must not fail the reconcile that
/// produced it: it is logged.
pub async fn publish_event<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    object: &K,
    type_: EventType,
    reason: &str,
    note: String,
) {
    publish(ctx, &object.object_ref(&()), type_, reason, "Reconcile", note).await;
}

/// Publishes an event about `reference` (its note cut to what the API server takes); a failure is logged, not
/// returned, as no caller should fail for want of an event.
pub async fn publish(
    ctx: &Context,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let event =
        Event { type_, reason: reason.into(), note: Some(event_note(note)), action: action.into(), secondary: None };
    if let Err(e) = ctx.recorder.publish(&event, reference).await {
        tracing::warn!(kind = ?reference.kind, name = ?reference.name, reason, error = %e, "could not publish event");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn long_notes_are_cut_to_what_the_api_server_takes() {
        let long = "é".repeat(700);
        let cut = super::event_note(long);
        assert!(cut.len() <= 1024 && cut.ends_with('…'), "{}", cut.len());
        assert_eq!(super::event_note("short".into()), "short");
    }
}
