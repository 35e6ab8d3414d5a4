//! One suite, two session stores: Redis (the real server, a unique key prefix) and in-memory.

use facteur_server::session::{MemorySessionStore, RedisSessionStore, SessionStore};
use facteur_tests::*;
use std::time::Duration;

async fn suite(store: &dyn SessionStore) {
    store.ping().await.expect("ping");
    assert_eq!(store.get("missing").await.expect("get"), None);

    store
        .put("session:a", "one", Duration::from_secs(60))
        .await
        .expect("put");
    assert_eq!(
        store.get("session:a").await.expect("get").as_deref(),
        Some("one")
    );
    let ttl = store.ttl("session:a").await.expect("ttl").expect("has ttl");
    assert!(
        ttl > Duration::from_secs(50) && ttl <= Duration::from_secs(60),
        "{ttl:?}"
    );
    store
        .put("session:a", "two", Duration::from_secs(60))
        .await
        .expect("overwrite");
    assert_eq!(
        store.get("session:a").await.expect("get").as_deref(),
        Some("two")
    );

    assert!(
        store
            .put_if_absent("dedup:1", "x", Duration::from_secs(60))
            .await
            .expect("first")
    );
    assert!(
        !store
            .put_if_absent("dedup:1", "y", Duration::from_secs(60))
            .await
            .expect("second")
    );
    assert_eq!(
        store.get("dedup:1").await.expect("get").as_deref(),
        Some("x"),
        "the first writer wins"
    );

    store
        .put("session:b", "b", Duration::from_secs(60))
        .await
        .expect("put");
    assert_eq!(
        store.keys("session:").await.expect("keys"),
        vec!["session:a".to_string(), "session:b".to_string()]
    );

    assert!(store.delete("session:b").await.expect("delete"));
    assert!(!store.delete("session:b").await.expect("delete again"));

    // TTLs are honoured: the entry disappears, and the key becomes free for put_if_absent.
    store
        .put("short", "v", Duration::from_millis(150))
        .await
        .expect("put");
    assert!(
        store
            .put_if_absent("short-dedup", "v", Duration::from_millis(150))
            .await
            .expect("nx")
    );
    wait_until(
        "short-lived keys to expire",
        Duration::from_secs(5),
        || async { store.get("short").await.expect("get").is_none() },
    )
    .await;
    assert_eq!(store.ttl("short").await.expect("ttl"), None);
    wait_until("dedup key to expire", Duration::from_secs(5), || async {
        store
            .put_if_absent("short-dedup", "again", Duration::from_secs(60))
            .await
            .expect("nx")
    })
    .await;
    assert!(
        !store
            .keys("")
            .await
            .expect("keys")
            .contains(&"short".to_string())
    );
}

#[tokio::test]
async fn memory_session_store() {
    suite(&MemorySessionStore::new()).await;
}

#[tokio::test]
async fn redis_session_store() {
    let prefix = RedisPrefix::new();
    let store =
        RedisSessionStore::new(&redis_url(), &prefix.0, 4, Duration::from_secs(2)).expect("pool");
    suite(&store).await;
    // Another prefix sees none of these keys: deployments sharing a Redis stay apart.
    let other = RedisPrefix::new();
    let neighbour =
        RedisSessionStore::new(&redis_url(), &other.0, 2, Duration::from_secs(2)).expect("pool");
    assert_eq!(neighbour.get("session:a").await.expect("get"), None);
    assert!(neighbour.keys("").await.expect("keys").is_empty());
}

#[tokio::test]
async fn redis_that_is_down_is_an_error_not_a_hang() {
    let proxy = CuttableProxy::start(
        redis_url()
            .trim_start_matches("redis://")
            .trim_end_matches('/'),
    )
    .await;
    proxy.cut();
    let store = RedisSessionStore::new(
        &format!("redis://{}", proxy.addr),
        "x:",
        2,
        Duration::from_millis(300),
    )
    .expect("pool");
    let started = std::time::Instant::now();
    let err = store.ping().await.expect_err("down");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(err.to_string().contains("session_store"), "{err}");
}
