//! A full reload of the snapshot (at start, and whenever the listener may have missed
//! notifications) must not stop checks: they answer from the old snapshot until the new one
//! is swapped in. The reload is held inside Postgres by a lock on a table it reads.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use entitled::cache::Cache;
use serde_json::json;

#[tokio::test]
async fn checks_answer_from_the_old_snapshot_during_a_full_reload() {
    let app = common::spawn_app().await;
    let pro = app.seed_demo().await;
    let company = app
        .create(
            "/companies",
            json!({"keys": {"id": "r"}, "base_plan_id": pro}),
        )
        .await;

    // A snapshot of our own, so the test drives its reload.
    let envs =
        entitled::store::environments::sync_environments(&app.pool, &app.config.environments)
            .await
            .unwrap();
    let pairs: Vec<_> = envs
        .into_iter()
        .zip(app.config.environments.iter().cloned())
        .collect();
    let cache = Cache::load(app.pool.clone(), &pairs).await.unwrap();
    let env = cache.default_env().unwrap().clone();
    let keys = vec![("id".to_string(), "r".to_string())];
    let check = |cache: &Cache| {
        let catalog = cache.catalog();
        let flag = catalog.flags_by_key.get("custom-branding").unwrap().clone();
        env.check(&catalog, &flag, &keys, &Vec::new(), Utc::now())
            .evaluation
            .value
    };
    assert!(check(&cache));

    // The company loses Pro, in a transaction that also locks a table the reload reads,
    // so the reload waits inside Postgres until the transaction commits.
    let mut tx = app.pool.begin().await.unwrap();
    sqlx::query("UPDATE company_plans SET ended_at = now() WHERE company_id = $1")
        .bind(company["id"].as_str().unwrap())
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("LOCK TABLE company_plans IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await
        .unwrap();
    let reload = tokio::spawn({
        let cache: Arc<Cache> = cache.clone();
        async move { cache.reload_all().await }
    });
    common::eventually(Duration::from_secs(5), || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE wait_event_type = 'Lock' AND query LIKE '%FROM company_plans%'",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        (waiting > 0).then_some(())
    })
    .await;

    // The reload is under way: checks answer at once, from the old snapshot.
    for _ in 0..100 {
        let started = Instant::now();
        assert!(check(&cache), "a check during the reload saw no snapshot");
        assert!(started.elapsed() < Duration::from_millis(100));
    }
    assert!(!reload.is_finished());

    tx.commit().await.unwrap();
    reload.await.unwrap().unwrap();
    assert!(!check(&cache), "the reload swapped in the new snapshot");
    app.stop().await;
}
