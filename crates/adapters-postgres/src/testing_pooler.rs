//! End-to-end tests through a transaction pooler: scripts/with-pgbouncer.sh starts PgBouncer,
//! and with `GOPHERMART_E2E_POOLER=1` the tests' service instances reach their database
//! through it.

/// With `GOPHERMART_E2E_POOLER=1`, under scripts/with-pgbouncer.sh: a URI of the test server
/// rewritten to reach it through PgBouncer (transaction pooling), and the flags of that mode
/// (unnamed statements, `LISTEN` on the direct URI). Otherwise the URI unchanged. A URI of
/// another server (a test's own proxy) is left alone.
///
/// # Panics
/// When the variables of scripts/with-pgbouncer.sh are missing; this is test code.
#[must_use]
pub fn through_pooler(database_url: &str) -> (String, Vec<String>) {
    let unchanged = (database_url.to_owned(), Vec::new());
    if std::env::var("GOPHERMART_E2E_POOLER").as_deref() != Ok("1") {
        return unchanged;
    }
    let parse = |name: &str| {
        let value = std::env::var(name).unwrap_or_else(|_| panic!("{name} is set"));
        url::Url::parse(&value).expect("a postgres:// URI")
    };
    let (direct, pooler) = (parse("DATABASE_URI"), parse("DATABASE_POOLER_URI"));
    let mut url = url::Url::parse(database_url).expect("a postgres:// URI");
    if url.host_str() != direct.host_str() || url.port() != direct.port() {
        return unchanged;
    }
    url.set_port(pooler.port()).expect("a port");
    (
        url.to_string(),
        vec![
            "--database-prepared-statements".into(),
            "false".into(),
            "--database-listen-uri".into(),
            database_url.to_owned(),
        ],
    )
}
