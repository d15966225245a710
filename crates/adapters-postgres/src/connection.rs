//! The pool's connection: diesel's interface over one tokio-postgres client, with named
//! prepared statements kept on the connection, or every statement unnamed, for a transaction
//! pooler in front of PostgreSQL.
//!
//! With [`StatementMode::Prepared`] a statement is prepared under a name the first time the
//! connection runs it (`Parse`, `Describe`, `Sync`) and from then on only bound and executed
//! (`Bind`, `Execute`, `Sync`). Behind PgBouncer in transaction pooling mode every `Sync`
//! outside a transaction may hand the client another server connection, where that name does
//! not exist, so [`StatementMode::Unnamed`] sends `Parse`, `Bind`, `Describe`, `Execute` and
//! `Sync` of the unnamed statement in one message batch (tokio-postgres's `query_typed_raw`):
//! one round trip, served whole by one server connection, leaving nothing behind on it. Every
//! statement goes one way or the other, the fixed ones of
//! [`crate::prepared::prepared_statement!`] and diesel's DSL alike, since the choice is made
//! here, below diesel.
//!
//! Both modes share everything else, and so behave alike where it matters:
//! - a statement is reported done only once PostgreSQL's `ReadyForQuery` for it has arrived
//!   (see [`to_the_end`]);
//! - a failure is translated from its SQLSTATE, so a session the server ends (57P01–57P03) or
//!   a connection exception (class 08) reads as the database being unavailable, and the
//!   connection is discarded (see [`from_tokio_postgres`]);
//! - a statement during which PostgreSQL sent a plain `WARNING` (SQLSTATE 01000), which is how
//!   it answers a commit whose wait for the synchronous standby was cancelled, reads as the
//!   database being unavailable too, though it succeeded: see [`Unconfirmed`];
//! - the connection's reads and writes are driven by a task of the runtime that opened it.
//!
//! tokio-postgres learns the type of a result column it does not know (an enum of the schema)
//! with a named statement of its own. So a new connection asks once, inside one transaction
//! (one server connection), for every enum type and its array, and then drops the statements
//! that took (`DEALLOCATE ALL`): later results of those types are decoded without a question.
//! A type created after the connection opened still needs the question; with unnamed
//! statements the connection fails that statement and is then discarded by the pool, and its
//! replacement knows the type.

use std::{
    any::TypeId,
    collections::HashMap,
    num::NonZeroU32,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use diesel::{
    connection::{CacheSize, DynInstrumentation, Instrumentation},
    pg::{Pg, PgMetadataLookup, PgQueryBuilder, PgTypeMetadata, PgValue},
    query_builder::{
        bind_collector::RawBytesBindCollector, AsQuery, QueryBuilder, QueryFragment, QueryId,
    },
    result::{DatabaseErrorInformation, DatabaseErrorKind, Error},
    row::{Field, PartialRow, Row, RowIndex, RowSealed},
    ConnectionError, ConnectionResult, QueryResult,
};
use diesel_async::{
    pooled_connection::PoolableConnection, AnsiTransactionManager, AsyncConnection,
    AsyncConnectionCore, SimpleAsyncConnection, TransactionManager,
};
use futures::{future::BoxFuture, stream::BoxStream, FutureExt, StreamExt, TryStreamExt};
use tokio_postgres::{
    types::{private::BytesMut, FromSql, IsNull, Kind, ToSql, Type},
    Statement,
};

use crate::availability::Availability;

/// How statements reach PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatementMode {
    /// Named prepared statements, kept on each connection: the fastest, for direct
    /// connections and session pooling.
    Prepared,
    /// Unnamed statements in one round trip each, nothing kept on the server: for transaction
    /// (or statement) pooling.
    Unnamed,
}

impl StatementMode {
    /// The name shown in metrics and `/readyz`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Prepared => "prepared",
            Self::Unnamed => "unnamed",
        }
    }
}

/// How a connection is opened, how long its statements may take, and where it reports whether
/// the database answers.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// Longest wait to open the connection, shared between the URI's hosts (each is given
    /// its part, so that a host that does not answer leaves time for the next), unless the
    /// URI sets `connect_timeout` itself.
    pub connect_timeout: Option<Duration>,
    /// Longest wait for a statement's answer, up to its `ReadyForQuery`. Past it the statement
    /// fails as the database being unavailable (its outcome is unknown) and the connection is
    /// discarded: a server that went silent (a network partition) cannot hold a request for
    /// longer. `None`: no limit.
    pub statement_timeout: Option<Duration>,
    /// Told when the connection cannot be opened or a statement gets no answer, and when the
    /// database answers again (see [`Availability`]).
    pub availability: Option<Arc<Availability>>,
}

/// TCP keepalives for a connection whose URI sets none (the operating system's default waits
/// two hours): an idle connection to a server that went silent is found dead in about 16 s.
pub(crate) const KEEPALIVES_IDLE: Duration = Duration::from_secs(10);
pub(crate) const KEEPALIVES_INTERVAL: Duration = Duration::from_secs(2);
pub(crate) const KEEPALIVES_RETRIES: u32 = 3;

/// Sets [`KEEPALIVES_IDLE`], [`KEEPALIVES_INTERVAL`] and [`KEEPALIVES_RETRIES`] on `config`
/// unless its URI sets keepalives itself: every session this crate opens (the pool's and the
/// listener's) finds a server that went silent dead in about 16 s.
pub(crate) fn with_keepalives(config: &mut tokio_postgres::Config) {
    if config.get_keepalives() && config.get_keepalives_idle() == Duration::from_secs(7200) {
        config.keepalives_idle(KEEPALIVES_IDLE);
        if config.get_keepalives_interval().is_none() {
            config.keepalives_interval(KEEPALIVES_INTERVAL);
        }
        if config.get_keepalives_retries().is_none() {
            config.keepalives_retries(KEEPALIVES_RETRIES);
        }
    }
}

/// What a prepared statement is kept under: its query type when diesel gives it a static id
/// (no SQL need be built to find it), else its SQL and parameter types.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum StatementKey {
    Type(TypeId),
    Sql(String, Vec<u32>),
}

/// A connection of the pool, in one of the [`StatementMode`]s; see the module.
pub struct DbConnection {
    client: tokio_postgres::Client,
    mode: StatementMode,
    /// The statements prepared on this connection ([`StatementMode::Prepared`]).
    statements: HashMap<StatementKey, Statement>,
    /// Whether statements are kept at all (diesel's `CacheSize`).
    keep_statements: bool,
    /// See [`ConnectOptions::statement_timeout`].
    statement_timeout: Option<Duration>,
    /// See [`ConnectOptions::availability`].
    availability: Option<Arc<Availability>>,
    /// [`Availability::outages`] when the connection was opened.
    opened_after: u64,
    transaction_state: AnsiTransactionManager,
    instrumentation: DynInstrumentation,
    /// The schema's enum types.
    types: Arc<TypeMap>,
    /// Set when the connection can no longer be trusted (its socket closed, the server ended
    /// the session, or a statement needed a type it did not know): the pool then discards it.
    broken: Arc<AtomicBool>,
    /// Set by the driver when the server warns that a commit may not have reached the
    /// synchronous standby; see [`Unconfirmed`].
    unconfirmed: Arc<Unconfirmed>,
    _driver: tokio::task::JoinHandle<()>,
}

/// Whether PostgreSQL warned, during the statement in flight, that a commit may not have
/// reached the synchronous standby.
///
/// A commit waiting for the synchronous standby that is cancelled (`pg_cancel_backend`, which
/// pg_auto_failover's keeper sends to every session waiting on `SyncRep` when it disables
/// synchronous replication, as it does when it moves a primary to `wait_primary`) is not undone:
/// PostgreSQL answers it with success, preceded by `WARNING: canceling wait for synchronous
/// replication due to user request` ("The transaction has already committed locally, but might
/// not have been replicated to the standby"), SQLSTATE 01000. Acknowledging that write would
/// promise what a failover can take back. tokio-postgres hands such a notice only to whoever
/// drives the connection, and does so before it reads the server's next message, so the
/// driver ([`DbConnection::open_with`]) records it here before the statement's
/// `ReadyForQuery` can reach the caller; the statement then fails as the database being
/// unavailable (its outcome is unknown, and the same request may be repeated) and the
/// connection is discarded.
#[derive(Debug, Default)]
struct Unconfirmed(AtomicBool);

impl Unconfirmed {
    /// Whether `notice` is PostgreSQL's plain `WARNING` (SQLSTATE 01000): the class of its
    /// "canceling wait for synchronous replication" answer, told by code and severity, never
    /// by its (translatable) text. The other warnings a statement of this service could get
    /// have codes of their own (25P01, 25001 ...).
    fn is_warning(notice: &tokio_postgres::error::DbError) -> bool {
        notice.parsed_severity() == Some(tokio_postgres::error::Severity::Warning)
            && *notice.code() == tokio_postgres::error::SqlState::WARNING
    }

    fn before_statement(&self) {
        self.0.store(false, Ordering::SeqCst);
    }

    /// `outcome`, or the database being unavailable when the server warned during the
    /// statement (and the connection is then marked broken).
    fn after_statement<T>(&self, broken: &AtomicBool, outcome: QueryResult<T>) -> QueryResult<T> {
        if outcome.is_ok() && self.0.swap(false, Ordering::SeqCst) {
            broken.store(true, Ordering::SeqCst);
            return Err(Error::DatabaseError(
                DatabaseErrorKind::ClosedConnection,
                Box::new(
                    "the database warned that a commit may not have reached the synchronous \
                     standby (SQLSTATE 01000: its wait was cancelled)"
                        .to_owned(),
                ),
            ));
        }
        outcome
    }
}

impl std::fmt::Debug for DbConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbConnection")
            .field("mode", &self.mode)
            .field("statements", &self.statements.len())
            .field("types", &self.types.len())
            .finish_non_exhaustive()
    }
}

impl Drop for DbConnection {
    fn drop(&mut self) {
        self._driver.abort();
    }
}

impl DbConnection {
    /// Opens a connection in `mode` and learns the schema's enum types, with no time limits
    /// of its own (migrations, tools).
    ///
    /// # Errors
    /// When PostgreSQL cannot be reached or the types cannot be read.
    pub async fn open(url: &str, mode: StatementMode) -> ConnectionResult<Self> {
        Self::open_with(url, mode, ConnectOptions::default()).await
    }

    /// Opens a connection in `mode` with `options`, and learns the schema's enum types.
    ///
    /// # Errors
    /// When the URI is not valid, PostgreSQL cannot be reached in time or the types cannot be
    /// read.
    pub async fn open_with(
        url: &str,
        mode: StatementMode,
        options: ConnectOptions,
    ) -> ConnectionResult<Self> {
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|e: tokio_postgres::Error| {
                ConnectionError::InvalidConnectionUrl(e.to_string())
            })?;
        if let (None, Some(total)) = (config.get_connect_timeout(), options.connect_timeout) {
            let hosts = u32::try_from(config.get_hosts().len().max(1)).unwrap_or(u32::MAX);
            config.connect_timeout((total / hosts).max(Duration::from_millis(500)));
        }
        with_keepalives(&mut config);
        let (client, connection) = match config.connect(tokio_postgres::NoTls).await {
            Ok(connected) => connected,
            Err(error) => {
                let reason = describe(&error);
                if let Some(availability) = &options.availability {
                    availability.unreachable(&reason);
                }
                return Err(ConnectionError::BadConnection(reason));
            }
        };
        let broken = Arc::new(AtomicBool::new(false));
        let unconfirmed = Arc::new(Unconfirmed::default());
        let (driver_broken, driver_unconfirmed) = (broken.clone(), unconfirmed.clone());
        let driver = tokio::spawn(async move {
            // Drives the connection as `connection.await` would, looking at each notice before
            // the next message is read (see `Unconfirmed`).
            let mut connection = connection;
            loop {
                match futures::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(tokio_postgres::AsyncMessage::Notice(notice))) => {
                        if Unconfirmed::is_warning(&notice) {
                            driver_unconfirmed.0.store(true, Ordering::SeqCst);
                        }
                        tracing::debug!(
                            severity = notice.severity(),
                            code = notice.code().code(),
                            "database notice: {}",
                            notice.message()
                        );
                    }
                    Some(Ok(_)) => {}
                    Some(Err(error)) => {
                        tracing::debug!(%error, "database connection ended");
                        break;
                    }
                    None => break,
                }
            }
            driver_broken.store(true, Ordering::SeqCst);
        });
        let mut conn = Self {
            client,
            mode,
            statements: HashMap::new(),
            keep_statements: true,
            statement_timeout: options.statement_timeout,
            availability: options.availability.clone(),
            opened_after: 0,
            transaction_state: AnsiTransactionManager::default(),
            instrumentation: DynInstrumentation::default_instrumentation(),
            types: Arc::default(),
            broken,
            unconfirmed,
            _driver: driver,
        };
        conn.learn_types()
            .await
            .map_err(ConnectionError::CouldntSetupConfiguration)?;
        if let Some(availability) = &options.availability {
            let server = Self::server(&conn.client).await;
            availability.connected(&server);
            conn.opened_after = availability.outages();
        }
        Ok(conn)
    }

    /// The server this connection reached, `address:port` (or the socket's port).
    async fn server(client: &tokio_postgres::Client) -> String {
        const SERVER: &str = "SELECT coalesce(host(inet_server_addr()), 'local socket') \
             || ':' || coalesce(inet_server_port(), current_setting('port')::int)";
        match client.query_typed(SERVER, &[]).await {
            Ok(rows) => rows
                .first()
                .and_then(|row| row.try_get::<_, String>(0).ok())
                .unwrap_or_default(),
            Err(error) => format!("(unknown: {error})"),
        }
    }

    /// The mode the connection sends its statements in.
    #[must_use]
    pub fn mode(&self) -> StatementMode {
        self.mode
    }

    async fn learn_types(&mut self) -> QueryResult<()> {
        const ENUMS: &str = "SELECT n.nspname::text, t.typname::text, t.oid, t.typarray, \
             pg_type_is_visible(t.oid), format('NULL::%I.%I, NULL::%I.%I[]', n.nspname, t.typname, n.nspname, t.typname) \
             FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE t.typtype = 'e'";
        self.client
            .batch_execute("BEGIN")
            .await
            .map_err(|e| self.error(e))?;
        let learned = async {
            let rows = self
                .client
                .query_typed(ENUMS, &[])
                .await
                .map_err(|e| self.error(e))?;
            let mut casts = Vec::new();
            let mut types = TypeMap::new();
            for row in rows {
                let (schema, name): (String, String) = (row.get(0), row.get(1));
                let oids: (u32, u32) = (row.get(2), row.get(3));
                if row.get::<_, bool>(4) {
                    types.insert((None, name.clone()), oids);
                }
                types.insert((Some(schema), name), oids);
                casts.push(row.get::<_, String>(5));
            }
            self.types = Arc::new(types);
            if !casts.is_empty() {
                // Decoding these columns makes tokio-postgres ask about (and keep) each type.
                self.client
                    .query_typed(&format!("SELECT {}", casts.join(", ")), &[])
                    .await
                    .map_err(|e| self.error(e))?;
                self.client
                    .batch_execute("DEALLOCATE ALL")
                    .await
                    .map_err(|e| self.error(e))?;
            }
            Ok::<_, Error>(())
        }
        .await;
        let end = if learned.is_ok() {
            "COMMIT"
        } else {
            "ROLLBACK"
        };
        let ended = self
            .client
            .batch_execute(end)
            .await
            .map_err(|e| self.error(e));
        learned.and(ended)
    }

    fn error(&self, error: tokio_postgres::Error) -> Error {
        from_tokio_postgres(error, &self.broken)
    }
}

/// The SQL of a query.
fn sql(query: &dyn QueryFragment<Pg>) -> QueryResult<String> {
    let mut builder = PgQueryBuilder::default();
    query.to_sql(&mut builder, &Pg)?;
    Ok(builder.finish())
}

/// A query's parameters, serialised by diesel, with their types.
fn binds(query: &dyn QueryFragment<Pg>, types: &Arc<TypeMap>) -> QueryResult<Vec<(Bind, Type)>> {
    let mut binds = RawBytesBindCollector::<Pg>::new();
    query.collect_binds(&mut binds, &mut KnownTypes(types.clone()), &Pg)?;
    binds
        .metadata
        .iter()
        .zip(binds.binds)
        .map(|(metadata, bytes)| Ok((Bind(bytes), param_type(metadata)?)))
        .collect()
}

/// How a query is to be sent: as a statement kept on the connection (found, or to be
/// prepared and kept), or unnamed when statements are not kept or this one may not be (its
/// SQL depends on its values, as with an `IN` list).
fn plan<'c, Q>(
    query: &Q,
    keep: Option<&'c mut HashMap<StatementKey, Statement>>,
    types: &Arc<TypeMap>,
) -> QueryResult<Plan<'c>>
where
    Q: QueryFragment<Pg> + QueryId,
{
    let params = binds(query, types)?;
    let statements = match keep {
        Some(statements) if query.is_safe_to_cache_prepared(&Pg)? => statements,
        _ => {
            return Ok(Plan::Unnamed {
                sql: sql(query)?,
                params,
            })
        }
    };
    let (key, sql) = match Q::query_id() {
        Some(id) => (StatementKey::Type(id), None),
        None => {
            let sql = sql(query)?;
            let types = params.iter().map(|(_, ty)| ty.oid()).collect();
            (StatementKey::Sql(sql.clone(), types), Some(sql))
        }
    };
    let statement = match statements.get(&key) {
        Some(statement) => Ok(statement.clone()),
        None => Err(Preparing {
            key,
            sql: match sql {
                Some(sql) => sql,
                None => self::sql(query)?,
            },
            types: params.iter().map(|(_, ty)| ty.clone()).collect(),
            statements,
        }),
    };
    Ok(Plan::Prepared { statement, params })
}

/// How one statement goes out; see [`plan`].
enum Plan<'c> {
    Unnamed {
        sql: String,
        params: Vec<(Bind, Type)>,
    },
    Prepared {
        /// The statement kept on the connection, or what is needed to prepare and keep it.
        statement: Result<Statement, Preparing<'c>>,
        params: Vec<(Bind, Type)>,
    },
}

/// A statement to prepare on the connection, and where to keep it.
struct Preparing<'c> {
    key: StatementKey,
    sql: String,
    types: Vec<Type>,
    statements: &'c mut HashMap<StatementKey, Statement>,
}

impl Preparing<'_> {
    async fn prepare(
        self,
        client: &tokio_postgres::Client,
        broken: &AtomicBool,
    ) -> QueryResult<Statement> {
        let statement = client
            .prepare_typed(&self.sql, &self.types)
            .await
            .map_err(|e| from_tokio_postgres(e, broken))?;
        self.statements.insert(self.key, statement.clone());
        Ok(statement)
    }
}

/// The type of a parameter: its OID, or 0 (PostgreSQL infers it) for a type not known.
fn param_type(metadata: &PgTypeMetadata) -> QueryResult<Type> {
    let oid = metadata
        .oid()
        .map_err(|e| Error::SerializationError(Box::new(e)))?;
    Ok(Type::from_oid(oid)
        .unwrap_or_else(|| Type::new(format!("oid_{oid}"), oid, Kind::Simple, "public".into())))
}

/// Custom types for diesel's bind collector: those the connection learned, else OID 0, which
/// lets PostgreSQL infer the parameter's type from the statement.
struct KnownTypes(Arc<TypeMap>);

/// Enum types by (schema, name), and by (None, name) when visible: (oid, array oid).
type TypeMap = HashMap<(Option<String>, String), (u32, u32)>;

impl PgMetadataLookup for KnownTypes {
    fn lookup_type(&mut self, type_name: &str, schema: Option<&str>) -> PgTypeMetadata {
        let key = (schema.map(ToOwned::to_owned), type_name.to_owned());
        let (oid, array_oid) = self.0.get(&key).copied().unwrap_or((0, 0));
        PgTypeMetadata::new(oid, array_oid)
    }
}

/// A parameter already serialised by diesel.
#[derive(Debug)]
struct Bind(Option<Vec<u8>>);

impl ToSql for Bind {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match &self.0 {
            Some(bytes) => {
                out.extend_from_slice(bytes);
                Ok(IsNull::No)
            }
            None => Ok(IsNull::Yes),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    tokio_postgres::types::to_sql_checked!();
}

/// A failure and every cause beneath it, each said once ("error connecting to server:
/// Connection refused (os error 111)").
fn describe(error: &tokio_postgres::Error) -> String {
    let mut said = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let cause_said = cause.to_string();
        if !said.ends_with(&cause_said) {
            said.push_str(": ");
            said.push_str(&cause_said);
        }
        source = cause.source();
    }
    said
}

/// Translates tokio-postgres's failure, by its SQLSTATE. A failure with none (no answer from
/// PostgreSQL: the connection closed, or could not be written to) and one that ends the
/// session mark the connection broken and read as [`DatabaseErrorKind::ClosedConnection`].
fn from_tokio_postgres(error: tokio_postgres::Error, broken: &AtomicBool) -> Error {
    use tokio_postgres::error::SqlState;
    let Some(db) = error.as_db_error().cloned() else {
        // No answer from PostgreSQL: the connection is closed or unusable.
        broken.store(true, Ordering::SeqCst);
        return Error::DatabaseError(
            DatabaseErrorKind::ClosedConnection,
            Box::new(error.to_string()),
        );
    };
    let kind = match *db.code() {
        SqlState::UNIQUE_VIOLATION => DatabaseErrorKind::UniqueViolation,
        SqlState::FOREIGN_KEY_VIOLATION => DatabaseErrorKind::ForeignKeyViolation,
        SqlState::RESTRICT_VIOLATION => DatabaseErrorKind::RestrictViolation,
        SqlState::EXCLUSION_VIOLATION => DatabaseErrorKind::ExclusionViolation,
        SqlState::T_R_SERIALIZATION_FAILURE => DatabaseErrorKind::SerializationFailure,
        SqlState::READ_ONLY_SQL_TRANSACTION => DatabaseErrorKind::ReadOnlyTransaction,
        SqlState::NOT_NULL_VIOLATION => DatabaseErrorKind::NotNullViolation,
        SqlState::CHECK_VIOLATION => DatabaseErrorKind::CheckViolation,
        SqlState::INVALID_SQL_STATEMENT_NAME => {
            // tokio-postgres asked about a type with a statement of its own.
            broken.store(true, Ordering::SeqCst);
            DatabaseErrorKind::Unknown
        }
        ref code if ends_the_connection(code) => {
            // The server (or the pooler in front of it) is going away: the next statement
            // would find the connection closed.
            broken.store(true, Ordering::SeqCst);
            DatabaseErrorKind::ClosedConnection
        }
        _ => DatabaseErrorKind::Unknown,
    };
    Error::DatabaseError(kind, Box::new(DbErrorInfo(db)))
}
/// Errors after which the connection is gone: a connection exception (class 08, which is
/// also what PgBouncer sends when its server connection fails under a query) or the server
/// terminating its sessions (`admin_shutdown`, `crash_shutdown`, `cannot_connect_now`).
fn ends_the_connection(code: &tokio_postgres::error::SqlState) -> bool {
    use tokio_postgres::error::SqlState;
    code.code().starts_with("08")
        || [
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
        ]
        .contains(code)
}

struct DbErrorInfo(tokio_postgres::error::DbError);

impl DatabaseErrorInformation for DbErrorInfo {
    fn message(&self) -> &str {
        self.0.message()
    }
    fn details(&self) -> Option<&str> {
        self.0.detail()
    }
    fn hint(&self) -> Option<&str> {
        self.0.hint()
    }
    fn table_name(&self) -> Option<&str> {
        self.0.table()
    }
    fn column_name(&self) -> Option<&str> {
        self.0.column()
    }
    fn constraint_name(&self) -> Option<&str> {
        self.0.constraint()
    }
    fn statement_position(&self) -> Option<i32> {
        use tokio_postgres::error::ErrorPosition;
        self.0.position().and_then(|p| match *p {
            ErrorPosition::Original(at) | ErrorPosition::Internal { position: at, .. } => {
                at.try_into().ok()
            }
        })
    }
}

/// A result row, with its columns' type OIDs for diesel (shared by the rows of a statement).
pub struct DbRow {
    row: tokio_postgres::Row,
    oids: Arc<[NonZeroU32]>,
}

impl std::fmt::Debug for DbRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbRow").field("row", &self.row).finish()
    }
}

impl RowSealed for DbRow {}

impl<'a> Row<'a, Pg> for DbRow {
    type Field<'f>
        = DbField<'f>
    where
        Self: 'f,
        'a: 'f;
    type InnerPartialRow = Self;

    fn field_count(&self) -> usize {
        self.row.len()
    }

    fn get<'f, I>(&'f self, idx: I) -> Option<Self::Field<'f>>
    where
        'a: 'f,
        Self: RowIndex<I>,
    {
        let idx = self.idx(idx)?;
        Some(DbField { row: self, idx })
    }

    fn partial_row(&self, range: std::ops::Range<usize>) -> PartialRow<'_, Self> {
        PartialRow::new(self, range)
    }
}

impl RowIndex<usize> for DbRow {
    fn idx(&self, idx: usize) -> Option<usize> {
        (idx < self.row.len()).then_some(idx)
    }
}

impl<'n> RowIndex<&'n str> for DbRow {
    fn idx(&self, idx: &'n str) -> Option<usize> {
        self.row.columns().iter().position(|c| c.name() == idx)
    }
}

/// A field of a [`DbRow`].
pub struct DbField<'f> {
    row: &'f DbRow,
    idx: usize,
}

impl std::fmt::Debug for DbField<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("DbField").field(&self.field_name()).finish()
    }
}

impl<'f> Field<'f, Pg> for DbField<'f> {
    fn field_name(&self) -> Option<&str> {
        Some(self.row.row.columns()[self.idx].name())
    }

    fn value(&self) -> Option<PgValue<'_>> {
        let Raw(bytes) = self.row.row.get(self.idx);
        bytes.map(|bytes| PgValue::new(bytes, &self.row.oids[self.idx]))
    }
}

/// A column's bytes as they came, whatever its type.
struct Raw<'a>(Option<&'a [u8]>);

impl<'a> FromSql<'a> for Raw<'a> {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(Some(raw)))
    }

    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(None))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// A statement's rows, read up to PostgreSQL's `ReadyForQuery` for it.
///
/// Rows come before their statement is done: outside a transaction block PostgreSQL commits
/// the statement only at the `Sync` that follows its `Execute`, after the rows and
/// `CommandComplete` have been sent, and with synchronous replication that commit then waits
/// for the standby. A constraint checked at commit fails there too. Only `ReadyForQuery`,
/// which ends tokio-postgres's row stream, says that the statement committed; an error in its
/// place, or a connection closed before it, ends the stream with that error.
///
/// diesel-async's `get_result` and `first` take the first row of the stream and drop the rest
/// unread, so a caller could be told of a write that never committed. Every statement is
/// therefore read whole here, whichever way it is called: its rows, or its failure, reach the
/// caller only once the statement has ended.
async fn to_the_end(
    rows: tokio_postgres::RowStream,
    broken: &AtomicBool,
) -> QueryResult<BoxStream<'static, QueryResult<DbRow>>> {
    let rows: Vec<tokio_postgres::Row> = rows
        .try_collect()
        .await
        .map_err(|e| from_tokio_postgres(e, broken))?;
    let oids: Arc<[NonZeroU32]> = rows.first().map_or_else(Arc::default, |row| {
        row.columns()
            .iter()
            .map(|c| NonZeroU32::new(c.type_().oid()).unwrap_or(NonZeroU32::MIN))
            .collect()
    });
    Ok(futures::stream::iter(rows.into_iter().map(move |row| {
        Ok(DbRow {
            row,
            oids: oids.clone(),
        })
    }))
    .boxed())
}

/// `work`, a statement, given at most `limit` to end; see
/// [`ConnectOptions::statement_timeout`].
/// Tells `availability` what a statement's outcome says of the database: an answer, or none
/// (a closed connection, a session the server ended, no answer in time).
fn observe<T>(availability: Option<&Availability>, outcome: QueryResult<T>) -> QueryResult<T> {
    if let Some(availability) = availability {
        match &outcome {
            Err(Error::DatabaseError(DatabaseErrorKind::ClosedConnection, info)) => {
                availability.unreachable(info.message());
            }
            Err(Error::DatabaseError(..)) | Ok(_) => availability.answered(),
            Err(_) => {}
        }
    }
    outcome
}

async fn bounded<T>(
    limit: Option<Duration>,
    broken: &AtomicBool,
    work: impl std::future::Future<Output = QueryResult<T>>,
) -> QueryResult<T> {
    let Some(limit) = limit else {
        return work.await;
    };
    if let Ok(result) = tokio::time::timeout(limit, work).await {
        return result;
    }
    // The answer may still come, to a statement nobody waits for: the connection is no longer
    // in step with its statements.
    broken.store(true, Ordering::SeqCst);
    Err(Error::DatabaseError(
        DatabaseErrorKind::ClosedConnection,
        Box::new(format!(
            "no answer from the database in {} ms",
            limit.as_millis()
        )),
    ))
}

impl SimpleAsyncConnection for DbConnection {
    async fn batch_execute(&mut self, query: &str) -> QueryResult<()> {
        let (client, broken, unconfirmed) = (&self.client, &*self.broken, &*self.unconfirmed);
        unconfirmed.before_statement();
        let outcome = bounded(self.statement_timeout, broken, async {
            client
                .batch_execute(query)
                .await
                .map_err(|e| from_tokio_postgres(e, broken))
        })
        .await;
        observe(
            self.availability.as_deref(),
            unconfirmed.after_statement(broken, outcome),
        )
    }
}

/// What sending one statement needs of its connection; see [`DbConnection::sending`].
struct Sending<'c> {
    client: &'c tokio_postgres::Client,
    broken: &'c AtomicBool,
    unconfirmed: &'c Unconfirmed,
    limit: Option<Duration>,
    availability: Option<&'c Availability>,
    planned: QueryResult<Plan<'c>>,
}

impl DbConnection {
    /// How `query` is to be sent on this connection, and what to send it with.
    fn sending<Q>(&mut self, query: &Q) -> Sending<'_>
    where
        Q: QueryFragment<Pg> + QueryId,
    {
        let keep = (self.mode == StatementMode::Prepared && self.keep_statements)
            .then_some(&mut self.statements);
        self.unconfirmed.before_statement();
        Sending {
            planned: plan(query, keep, &self.types),
            client: &self.client,
            broken: &self.broken,
            unconfirmed: &self.unconfirmed,
            limit: self.statement_timeout,
            availability: self.availability.as_deref(),
        }
    }
}

/// The statement kept on the connection, prepared (and kept) first when it is new.
async fn prepared(
    statement: Result<Statement, Preparing<'_>>,
    client: &tokio_postgres::Client,
    broken: &AtomicBool,
) -> QueryResult<Statement> {
    match statement {
        Ok(statement) => Ok(statement),
        Err(preparing) => preparing.prepare(client, broken).await,
    }
}

impl AsyncConnectionCore for DbConnection {
    type ExecuteFuture<'conn, 'query> = BoxFuture<'conn, QueryResult<usize>>;
    type LoadFuture<'conn, 'query> = BoxFuture<'conn, QueryResult<Self::Stream<'conn, 'query>>>;
    type Stream<'conn, 'query> = BoxStream<'static, QueryResult<DbRow>>;
    type Row<'conn, 'query> = DbRow;
    type Backend = Pg;

    /// Runs a query and reads its rows to the end of the statement before handing out any.
    ///
    /// See [`to_the_end`]: a row is no proof that its statement was committed.
    fn load<'conn, 'query, T>(&'conn mut self, source: T) -> Self::LoadFuture<'conn, 'query>
    where
        T: AsQuery + 'query,
        T::Query: QueryFragment<Self::Backend> + QueryId + 'query,
    {
        let Sending {
            client,
            broken,
            unconfirmed,
            limit,
            availability,
            planned,
        } = self.sending(&source.as_query());
        async move {
            let outcome = bounded(limit, broken, async {
                let rows = match planned? {
                    Plan::Unnamed { sql, params } => client.query_typed_raw(&sql, params).await,
                    Plan::Prepared { statement, params } => {
                        let statement = prepared(statement, client, broken).await?;
                        let params = params.into_iter().map(|(bind, _)| bind);
                        client.query_raw(&statement, params).await
                    }
                }
                .map_err(|e| from_tokio_postgres(e, broken))?;
                to_the_end(rows, broken).await
            })
            .await;
            observe(availability, unconfirmed.after_statement(broken, outcome))
        }
        .boxed()
    }

    fn execute_returning_count<'conn, 'query, T>(
        &'conn mut self,
        source: T,
    ) -> Self::ExecuteFuture<'conn, 'query>
    where
        T: QueryFragment<Self::Backend> + QueryId + 'query,
    {
        let Sending {
            client,
            broken,
            unconfirmed,
            limit,
            availability,
            planned,
        } = self.sending(&source);
        async move {
            let outcome = bounded(limit, broken, async {
                // tokio-postgres returns the count only once `ReadyForQuery` has arrived.
                let count = match planned? {
                    Plan::Unnamed { sql, params } => {
                        let params: Vec<(&(dyn ToSql + Sync), Type)> = params
                            .iter()
                            .map(|(bind, ty)| (bind as &(dyn ToSql + Sync), ty.clone()))
                            .collect();
                        client.execute_typed(&sql, &params).await
                    }
                    Plan::Prepared { statement, params } => {
                        let statement = prepared(statement, client, broken).await?;
                        let params = params.iter().map(|(bind, _)| bind);
                        client.execute_raw(&statement, params).await
                    }
                }
                .map_err(|e| from_tokio_postgres(e, broken))?;
                usize::try_from(count).map_err(|e| Error::DeserializationError(Box::new(e)))
            })
            .await;
            observe(availability, unconfirmed.after_statement(broken, outcome))
        }
        .boxed()
    }
}

impl AsyncConnection for DbConnection {
    type TransactionManager = AnsiTransactionManager;

    /// A connection with prepared statements.
    async fn establish(database_url: &str) -> ConnectionResult<Self> {
        Self::open(database_url, StatementMode::Prepared).await
    }

    fn transaction_state(&mut self) -> &mut AnsiTransactionManager {
        &mut self.transaction_state
    }

    fn instrumentation(&mut self) -> &mut dyn Instrumentation {
        &mut *self.instrumentation
    }

    fn set_instrumentation(&mut self, instrumentation: impl Instrumentation) {
        self.instrumentation = instrumentation.into();
    }

    fn set_prepared_statement_cache_size(&mut self, size: CacheSize) {
        self.keep_statements = matches!(size, CacheSize::Unbounded);
        if !self.keep_statements {
            self.statements.clear();
        }
    }
}

impl PoolableConnection for DbConnection {
    fn is_broken(&mut self) -> bool {
        if self.broken.load(Ordering::SeqCst) || self.client.is_closed() {
            return true;
        }
        if let Some(availability) = &self.availability {
            if availability.outages() != self.opened_after {
                // Opened before the latest outage: see `Availability::outages`.
                return true;
            }
        }
        AnsiTransactionManager::is_broken_transaction_manager(self)
    }
}

#[cfg(test)]
mod on_a_database {
    use application::ports::{
        ledger::LedgerRepository,
        orders::OrderRepository,
        queue::{AccrualQueue, FinalOutcome, RetryReason},
        security::PasswordHash,
        users::UserRepository,
    };
    use chrono::Utc;
    use diesel::{
        sql_types::{Int4, Int8},
        QueryableByName,
    };
    use diesel_async::RunQueryDsl;
    use domain::{with_check_digit, Login, Money, OrderNumber, OrderStatus};

    use super::StatementMode;
    use crate::{testing::TestDatabase, PgPoolConfig, PgStore};

    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = Int8)]
        count: i64,
    }

    fn number(n: u64) -> OrderNumber {
        OrderNumber::parse(&with_check_digit(&n.to_string())).expect("valid number")
    }

    fn store_in(mode: StatementMode, url: &str, connections: usize) -> PgStore {
        let mut config = PgPoolConfig::new(url);
        config.max_size = connections;
        config.statements = mode;
        PgStore::new(config.build().expect("pool"))
    }

    fn unnamed_store(url: &str, connections: usize) -> PgStore {
        store_in(StatementMode::Unnamed, url, connections)
    }

    /// Every kind of statement the store sends: fixed SQL, diesel's DSL, enum parameters and
    /// enum results, arrays, unique violations.
    async fn workload(store: &PgStore, login: &str, base: u64) {
        let number = |n: u64| number(base + n);
        let user = store
            .create(
                &Login::parse(login).expect("login"),
                &PasswordHash("h".into()),
            )
            .await
            .expect("user");
        assert!(store
            .find_by_login(&Login::parse(login).expect("login"))
            .await
            .expect("found")
            .is_some());
        let one = Money::new(rust_decimal::Decimal::ONE).expect("money");
        for n in 1..=3 {
            store
                .insert(user, &number(n), Utc::now(), None)
                .await
                .expect("upload");
            store
                .insert(user, &number(n), Utc::now(), None)
                .await
                .expect("upload again");
        }
        // Concurrent workloads share the queue: each claims what is due, its own or not.
        store
            .claim(
                10,
                Utc::now(),
                std::time::Duration::from_secs(60),
                application::ports::queue::ClaimOrder::DueFirst,
            )
            .await
            .expect("claim");
        store
            .finish(
                &number(1),
                FinalOutcome::Processed(Some(
                    Money::new(rust_decimal::Decimal::TEN).expect("money"),
                )),
            )
            .await
            .expect("credit");
        store
            .retry_later(&number(2), Utc::now(), RetryReason::StillProcessing)
            .await
            .expect("retry");
        store.release(&[number(3)]).await.expect("release");
        store.next_due(Utc::now()).await.expect("next due");
        store.queue_depth(Utc::now()).await.expect("depth");
        let listed = store.list(user).await.expect("orders");
        assert!(listed.iter().any(|o| o.status == OrderStatus::Processed));
        assert!(listed.iter().any(|o| o.status == OrderStatus::Processing));
        store
            .withdraw(user, &number(100), one, Utc::now())
            .await
            .expect("withdraw");
        store
            .withdraw(user, &number(100), one, Utc::now())
            .await
            .expect("again");
        assert_eq!(store.withdrawals(user).await.expect("withdrawals").len(), 1);
        let balance = store.balance(user).await.expect("balance");
        assert_eq!(balance.withdrawn.amount(), rust_decimal::Decimal::ONE);
    }

    #[tokio::test]
    async fn the_unnamed_mode_leaves_no_prepared_statement_on_the_server() {
        let db = TestDatabase::create().await;
        // One connection: the session that served every statement.
        let store = unnamed_store(db.url(), 1);
        workload(&store, "ann", 0).await;
        let mut conn = store.conn().await.expect("connection");
        let left: Count = diesel::sql_query("SELECT count(*) AS count FROM pg_prepared_statements")
            .get_result(&mut conn)
            .await
            .expect("prepared statements");
        assert_eq!(left.count, 0, "named statements left on the server");
    }

    /// The server ends the session under a running statement, as it does to every session
    /// when it shuts down (SQLSTATE 57P01), and PgBouncer does with class 08 when its server
    /// connection fails: the caller is told the database is unavailable (503), not that the
    /// statement failed (500), and the pool replaces the connection; in both statement modes.
    #[tokio::test]
    async fn a_session_the_server_ends_under_a_statement_reports_the_database_unavailable() {
        for mode in [StatementMode::Prepared, StatementMode::Unnamed] {
            the_session_ends_under_a_statement(mode).await;
        }
    }

    async fn the_session_ends_under_a_statement(mode: StatementMode) {
        #[derive(QueryableByName)]
        struct Pid {
            #[diesel(sql_type = Int4)]
            pid: i32,
        }
        let db = TestDatabase::create().await;
        let (store, observer) = (store_in(mode, db.url(), 1), store_in(mode, db.url(), 1));
        let mut conn = store.conn().await.expect("connection");
        let Pid { pid } = diesel::sql_query("SELECT pg_backend_pid() AS pid")
            .get_result(&mut conn)
            .await
            .expect("pid");
        let terminate = async {
            let mut other = observer.conn().await.expect("connection");
            loop {
                let sleeping: Count = diesel::sql_query(
                    "SELECT count(*) AS count FROM pg_stat_activity \
                     WHERE pid = $1 AND state = 'active' AND query LIKE 'SELECT pg_sleep%'",
                )
                .bind::<Int4, _>(pid)
                .get_result(&mut other)
                .await
                .expect("activity");
                if sleeping.count == 1 {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            diesel::sql_query("SELECT pg_terminate_backend($1)")
                .bind::<Int4, _>(pid)
                .execute(&mut other)
                .await
                .expect("terminated");
        };

        let (slept, ()) = tokio::join!(
            diesel::sql_query("SELECT pg_sleep(30)").execute(&mut conn),
            terminate
        );
        drop(conn);

        let error = crate::error::from_diesel(slept.expect_err("the session was ended"));
        assert!(
            matches!(error, application::RepositoryError::Unavailable(_)),
            "{mode:?}: {error:?}"
        );
        store.ping().await.expect("a new connection");
    }

    /// A constraint checked at commit fails after the statement has sent its rows: the caller
    /// is told of the failure, not handed the rows, however it reads them and in both modes,
    /// and nothing is stored.
    #[tokio::test]
    async fn a_statement_whose_commit_fails_is_reported_as_failed() {
        #[derive(QueryableByName)]
        struct N {
            #[diesel(sql_type = Int4)]
            #[allow(dead_code)]
            n: i32,
        }
        let db = TestDatabase::create().await;
        TestDatabase::execute(
            &db,
            "CREATE TABLE scratch (n int UNIQUE DEFERRABLE INITIALLY DEFERRED); \
             INSERT INTO scratch VALUES (1)",
        )
        .await;
        for mode in [StatementMode::Prepared, StatementMode::Unnamed] {
            let store = store_in(mode, db.url(), 1);
            let mut conn = store.conn().await.expect("connection");
            let insert = || diesel::sql_query("INSERT INTO scratch VALUES (1), (2) RETURNING n");

            let first = insert().get_result::<N>(&mut conn).await;
            let all = insert().load::<N>(&mut conn).await;
            let count = insert().execute(&mut conn).await;

            for (how, failed) in [
                ("get_result", first.err()),
                ("load", all.err()),
                ("execute", count.err()),
            ] {
                assert!(
                    matches!(
                        failed,
                        Some(diesel::result::Error::DatabaseError(
                            diesel::result::DatabaseErrorKind::UniqueViolation,
                            _
                        ))
                    ),
                    "{mode:?}, {how}: {failed:?}"
                );
            }
        }
        let mut conn = db.store().conn().await.expect("connection");
        let stored: Count = diesel::sql_query("SELECT count(*) AS count FROM scratch")
            .get_result(&mut conn)
            .await
            .expect("count");
        assert_eq!(stored.count, 1, "a failed commit stored rows");
    }

    /// Through PgBouncer in transaction mode when scripts/with-pgbouncer.sh runs the tests:
    /// more clients than server connections, every statement on whichever one is free.
    #[tokio::test]
    async fn the_unnamed_mode_works_through_a_transaction_pooler() {
        let Ok(pooler) = std::env::var("DATABASE_POOLER_URI") else {
            eprintln!(
                "skipped: DATABASE_POOLER_URI is not set (scripts/with-pgbouncer.sh sets it)"
            );
            return;
        };
        let db = TestDatabase::create().await;
        let mut url = url::Url::parse(db.url()).expect("url");
        url.set_port(url::Url::parse(&pooler).expect("url").port())
            .expect("port");
        crate::run_migrations_in(url.as_str(), StatementMode::Unnamed)
            .await
            .expect("migrations through the pooler");
        let store = unnamed_store(url.as_str(), 8);
        let runs = (0..8).map(|i| {
            let store = store.clone();
            async move { workload(&store, &format!("user{i}"), 1000 * (i + 1)).await }
        });
        futures::future::join_all(runs).await;
        // The server connections behind the pooler (two per database in the script): asked
        // from eight clients at once, each lands on one of them; none holds a named statement.
        let asks = (0..16).map(|_| {
            let store = store.clone();
            async move {
                let mut conn = store.conn().await.expect("connection");
                diesel::sql_query("SELECT count(*) AS count FROM pg_prepared_statements")
                    .get_result::<Count>(&mut conn)
                    .await
                    .expect("prepared statements")
                    .count
            }
        });
        let counts = futures::future::join_all(asks).await;
        assert!(counts.iter().all(|&c| c == 0), "{counts:?}");
    }
}
