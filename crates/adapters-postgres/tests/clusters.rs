//! The clusters `scripts/with-postgres.sh` starts: a throwaway one trades durability for speed
//! and leaves nothing behind; a kept one (`make run`'s `.pgdata`) runs with PostgreSQL's
//! durable defaults and keeps its data between runs, also when the `postgres` user (which runs
//! PostgreSQL when the tests run as root) cannot enter the folder asked for, and `make clean-db`
//! (`--remove-keep-dir`) leaves nothing behind.

use std::{
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::Command,
};

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

/// Removes a folder when dropped, also when the test fails; when it is a link (a kept cluster
/// the script put elsewhere), the folder it links to as well.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Ok(target) = std::fs::read_link(&self.0) {
            let _ = std::fs::remove_dir_all(target);
            let _ = std::fs::remove_file(&self.0);
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `make clean-db`: `scripts/with-postgres.sh --remove-keep-dir DIR`.
fn remove_kept_cluster(dir: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/with-postgres.sh");
    let status = Command::new("bash")
        .arg(&script)
        .arg("--remove-keep-dir")
        .arg(dir)
        .status()
        .unwrap_or_else(|error| panic!("cannot run {}: {error}", script.display()));
    assert!(
        status.success(),
        "--remove-keep-dir {}: {status}",
        dir.display()
    );
}

/// Whether `path` is there, as a folder, a file or a link (even a dangling one).
fn is_there(path: &Path) -> bool {
    path.symlink_metadata().is_ok()
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

/// Starts a cluster kept in `dir`, writes a row, stops it, starts it again and reads the row
/// back. Returns the data folder the server reported.
async fn keeps_its_data(dir: &Path) -> PathBuf {
    let first = ScriptedCluster::start(Some(dir));
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

    let second = ScriptedCluster::start(Some(dir));
    let (_, data_again) = durability(second.uri()).await;
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
    assert_eq!(data_again, data, "the second start found another folder");
    data
}

#[tokio::test]
async fn a_kept_cluster_runs_with_the_durable_defaults_and_keeps_its_data() {
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("kept-cluster-{}", std::process::id()));
    let _remove = RemoveOnDrop(dir.clone());

    let data = keeps_its_data(&dir).await;

    remove_kept_cluster(&dir);
    assert!(!is_there(&dir), "{} is left", dir.display());
    assert!(!is_there(&data), "{} is left", data.display());
}

/// A checkout in root's home (mode 700): the `postgres` user cannot enter it, so as root the
/// script keeps the cluster in a folder of /var/lib/gophermart and leaves a link in its place;
/// the caller's folder keeps its mode. Run by another user, the cluster is where it was asked.
#[tokio::test]
async fn a_kept_cluster_in_a_folder_postgres_cannot_enter_is_kept_where_it_can() {
    let private = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("private-checkout-{}", std::process::id()));
    let _remove_private = RemoveOnDrop(private.clone());
    std::fs::create_dir_all(private.join("check out")).expect("private folder");
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).expect("mode 700");
    let as_root = std::fs::metadata(&private).expect("private folder").uid() == 0;
    let dir = private.join("check out").join(".pgdata");
    let _remove = RemoveOnDrop(dir.clone());

    let data = keeps_its_data(&dir).await;

    if as_root {
        let link = std::fs::read_link(&dir).expect(".pgdata is a link to the data");
        assert_eq!(link, data);
        assert!(
            data.starts_with("/var/lib/gophermart/"),
            "{}",
            data.display()
        );
        assert_ne!(
            std::fs::metadata(&data).expect("data").uid(),
            0,
            "owned by postgres"
        );
    } else {
        assert!(std::fs::symlink_metadata(&dir).expect("dir").is_dir());
    }
    let mode = std::fs::metadata(&private).expect("private folder").mode() & 0o777;
    assert_eq!(mode, 0o700, "the private folder was opened");

    remove_kept_cluster(&dir);
    assert!(!is_there(&dir), "{} is left", dir.display());
    assert!(!is_there(&data), "{} is left", data.display());
}
