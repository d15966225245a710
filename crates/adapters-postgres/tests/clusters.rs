//! The clusters `scripts/with-postgres.sh` starts: a throwaway one trades durability for speed
//! and leaves nothing behind; a kept one (`make run`'s `.pgdata`) runs with PostgreSQL's
//! durable defaults and keeps its data between runs.

use std::path::{Path, PathBuf};

use adapters_postgres::testing::ScriptedCluster;
use diesel::{sql_types::Text, QueryableByName};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};

#[derive(QueryableByName)]
struct Setting {
    #[diesel(sql_type = Text)]
    value: String,
}

async fn setting(conn: &mut AsyncPgConnection, name: &str) -> String {
    let rows: Vec<Setting> =
        diesel::sql_query(format!("SELECT current_setting('{name}') AS value"))
            .load(conn)
            .await
            .expect("setting");
    rows.into_iter().next().expect("one row").value
}

async fn durability(uri: &str) -> (Vec<(String, String)>, PathBuf) {
    let mut conn = AsyncPgConnection::establish(uri).await.expect("connect");
    let mut settings = Vec::new();
    for name in ["fsync", "synchronous_commit", "full_page_writes"] {
        settings.push((name.to_owned(), setting(&mut conn, name).await));
    }
    let data = PathBuf::from(setting(&mut conn, "data_directory").await);
    (settings, data)
}

fn all(value: &str) -> Vec<(String, String)> {
    ["fsync", "synchronous_commit", "full_page_writes"]
        .iter()
        .map(|name| ((*name).to_owned(), value.to_owned()))
        .collect()
}

/// Removes a folder when dropped, also when the test fails.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn a_throwaway_cluster_is_fast_and_unsafe_and_leaves_nothing_behind() {
    let cluster = ScriptedCluster::start(None);

    let (settings, data) = durability(cluster.uri()).await;
    let status = cluster.stop();

    assert_eq!(settings, all("off"));
    assert!(status.success(), "{status}");
    assert!(!data.exists(), "{} is left", data.display());
}

#[tokio::test]
async fn a_kept_cluster_runs_with_the_durable_defaults_and_keeps_its_data() {
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("kept-cluster-{}", std::process::id()));
    let _remove = RemoveOnDrop(dir.clone());

    let first = ScriptedCluster::start(Some(&dir));
    let (settings, data) = durability(first.uri()).await;
    let mut conn = AsyncPgConnection::establish(first.uri())
        .await
        .expect("connect");
    conn.batch_execute("CREATE TABLE kept (value TEXT); INSERT INTO kept VALUES ('still here')")
        .await
        .expect("write");
    drop(conn);
    assert!(first.stop().success());
    assert_eq!(settings, all("on"));
    assert_eq!(
        data.canonicalize().expect("data folder"),
        dir.canonicalize().expect("kept folder")
    );
    assert!(dir.join("PG_VERSION").exists(), "the kept cluster is gone");

    let second = ScriptedCluster::start(Some(&dir));
    let mut conn = AsyncPgConnection::establish(second.uri())
        .await
        .expect("connect");
    let kept: Vec<Setting> = diesel::sql_query("SELECT value FROM kept")
        .load(&mut conn)
        .await
        .expect("read");
    drop(conn);
    assert!(second.stop().success());
    assert_eq!(
        kept.into_iter().map(|s| s.value).collect::<Vec<_>>(),
        ["still here"]
    );
}
