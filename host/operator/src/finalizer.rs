//! Finalizer patches shared by both controllers. JSON patches with a `test` operation: a concurrent change to the
//! finalizer list fails the patch (422) instead of being overwritten, and, unlike a merge patch pinned to a
//! `resourceVersion`, an unrelated write (our own status patch) does not make it fail with 409.

use json_patch::{AddOperation, Patch, PatchOperation, RemoveOperation, TestOperation};
use serde_json::json;

/// Adds `finalizer` to an object whose finalizers are `current` (`None`: the field is absent).
pub fn add(current: Option<&[String]>, finalizer: &str) -> Patch {
    let ops = match current {
        // Test first, so finalizers another writer just added are not overwritten.
        None => vec![
            PatchOperation::Test(TestOperation {
                path: "/metadata/finalizers".parse().expect("valid JSON pointer"),
                value: serde_json::Value::Null,
            }),
            PatchOperation::Add(AddOperation {
                path: "/metadata/finalizers".parse().expect("valid JSON pointer"),
                value: json!([finalizer]),
            }),
        ],
        Some(_) => vec![PatchOperation::Add(AddOperation {
            path: "/metadata/finalizers/-".parse().expect("valid JSON pointer"),
            value: finalizer.into(),
        })],
    };
    Patch(ops)
}

/// Removes `finalizer`, found at `index` of the object's finalizers; fails if the list moved meanwhile.
pub fn remove(index: usize, finalizer: &str) -> Patch {
    let path = format!("/metadata/finalizers/{index}");
    Patch(vec![
        PatchOperation::Test(TestOperation {
            path: path.parse().expect("valid JSON pointer"),
            value: finalizer.into(),
        }),
        PatchOperation::Remove(RemoveOperation { path: path.parse().expect("valid JSON pointer") }),
    ])
}
