//! Leader election over the in-memory cluster: one holder at a time, takeover on expiry, hand-over on release.

use k8s_openapi::jiff::Timestamp;
use kaito_operator::leader::LeaderElector;
use kaito_tests::cluster::{Cluster, paths};
use serde_json::json;

fn holder(cluster: &Cluster) -> serde_json::Value {
    cluster.get(paths::LEASES, "kaito-system", "kaito-operator-leader").expect("lease exists")["spec"].clone()
}

#[tokio::test]
async fn one_leader_takeover_on_expiry_and_release() {
    let cluster = Cluster::new();
    let a = LeaderElector::new(cluster.client(), "kaito-system", "kaito-operator-leader", "pod-a");
    let b = LeaderElector::new(cluster.client(), "kaito-system", "kaito-operator-leader", "pod-b");

    assert!(a.try_acquire_or_renew().await.unwrap(), "the first candidate creates the Lease");
    assert!(!b.try_acquire_or_renew().await.unwrap(), "a held Lease is not taken");
    assert!(a.try_acquire_or_renew().await.unwrap(), "the holder renews");
    let spec = holder(&cluster);
    assert_eq!((spec["holderIdentity"].as_str(), spec["leaseTransitions"].as_i64()), (Some("pod-a"), Some(0)));
    assert_eq!(spec["leaseDurationSeconds"], 15);

    // The holder stops renewing: once renewTime + duration has passed, the other takes over.
    let stale = Timestamp::from_second(Timestamp::now().as_second() - 60).unwrap().to_string();
    cluster.edit(paths::LEASES, "kaito-system", "kaito-operator-leader", json!({"spec": {"renewTime": stale}}));
    assert!(b.try_acquire_or_renew().await.unwrap());
    let spec = holder(&cluster);
    assert_eq!((spec["holderIdentity"].as_str(), spec["leaseTransitions"].as_i64()), (Some("pod-b"), Some(1)));
    assert!(!a.try_acquire_or_renew().await.unwrap(), "the old holder learns it lost");

    // Released on shutdown: the standby need not wait for expiry.
    b.release().await.unwrap();
    assert!(holder(&cluster)["holderIdentity"].is_null());
    assert!(a.try_acquire_or_renew().await.unwrap());
    assert_eq!(holder(&cluster)["holderIdentity"], "pod-a");
}

#[tokio::test]
async fn a_stale_write_loses_the_race() {
    let cluster = Cluster::new();
    let a = LeaderElector::new(cluster.client(), "kaito-system", "kaito-operator-leader", "pod-a");
    assert!(a.try_acquire_or_renew().await.unwrap());
    // A PUT carrying an old resourceVersion is refused with 409, which a candidate reads as "not leader".
    let api: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
        kube::Api::namespaced(cluster.client(), "kaito-system");
    let mut lease = api.get("kaito-operator-leader").await.unwrap();
    assert!(a.try_acquire_or_renew().await.unwrap());
    lease.spec.as_mut().unwrap().holder_identity = Some("intruder".into());
    let err = api.replace("kaito-operator-leader", &Default::default(), &lease).await.unwrap_err();
    assert!(matches!(err, kube::Error::Api(s) if s.code == 409));
    assert_eq!(holder(&cluster)["holderIdentity"], "pod-a");
}
