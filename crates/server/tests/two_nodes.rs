//! Two registries over one store, as two hub nodes would share a database:
//! each keeps the records it last wrote for its next write, and a write by
//! the other node must still never be lost (the store's revision check
//! makes the stale one re-read).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use ferrohub_core::identity::DeviceRequest;
use ferrohub_core::precondition::IfMatch;
use ferrohub_server::hub::registry::Registry;
use ferrohub_store::SqliteStore;
use serde_json::json;

#[tokio::test]
async fn a_write_by_another_node_is_never_overwritten_by_a_cached_record() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ferrohub_store::Store> =
        Arc::new(SqliteStore::open(&dir.path().join("hub.db")).unwrap());
    let (a, _) = Registry::new(store.clone(), Default::default());
    let (b, _) = Registry::new(store, Default::default());
    a.create_device("d1", DeviceRequest::default(), None).await.unwrap();
    // Node A writes twice (the second from its cache), node B once in
    // between, then A again: every tag survives.
    a.patch_twin("d1", &json!({"tags": {"a1": 1}}), &IfMatch::Any).await.unwrap();
    b.patch_twin("d1", &json!({"tags": {"b": 1}}), &IfMatch::Any).await.unwrap();
    a.patch_twin("d1", &json!({"tags": {"a2": 1}}), &IfMatch::Any).await.unwrap();
    a.patch_reported("d1", &json!({"x": 1})).await.unwrap();
    b.patch_reported("d1", &json!({"y": 2})).await.unwrap();
    a.patch_reported("d1", &json!({"z": 3})).await.unwrap();
    let twin = b.get_twin("d1").await.unwrap();
    assert_eq!(twin["tags"], json!({"a1": 1, "b": 1, "a2": 1}), "{twin}");
    let reported = &twin["properties"]["reported"];
    assert_eq!(
        (reported["x"].clone(), reported["y"].clone(), reported["z"].clone()),
        (json!(1), json!(2), json!(3))
    );
    // Deleted by B, A's next write finds no device instead of resurrecting it.
    b.delete_device("d1", &IfMatch::Any).await.unwrap();
    let err = a.patch_twin("d1", &json!({"tags": {"late": 1}}), &IfMatch::Any).await.unwrap_err();
    assert_eq!(err.code, ferrohub_core::ErrorCode::DeviceNotFound);
    assert!(a.get_twin("d1").await.is_err());
}
