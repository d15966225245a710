//! Whether the database can be reached, told once per outage.
//!
//! While PostgreSQL is out of reach every request fails the same way, and a line per request
//! would bury what an operator needs: when it began, why, how much was refused, and when it
//! ended and which server serves now. The pool's connections report here: a connection that
//! cannot be opened, and a statement that gets no answer (a closed connection, a session the
//! server ended, no answer in time), mark the database unreachable; a connection opened, or a
//! statement answered, marks it reachable again. The first of each writes one log line; the
//! failures in between are only counted.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Mutex,
    },
    time::Instant,
};

/// The database's reachability as the pool sees it; shared by the pool's connections.
#[derive(Debug)]
pub struct Availability {
    /// The URI's hosts, for messages (`host:port`, comma-separated).
    hosts: String,
    /// Set while unreachable: the only thing a statement that succeeds looks at.
    down: AtomicBool,
    /// How many outages have begun: a connection opened before the latest one is not used
    /// again (see [`Availability::outages`]).
    outages: AtomicU64,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The server the last connection opened reached (`address:port`).
    primary: Option<String>,
    outage: Option<Outage>,
}

#[derive(Debug)]
struct Outage {
    since: Instant,
    refused: u64,
}

impl Availability {
    /// For the database of `url` (its hosts are named in messages; nothing else of it).
    #[must_use]
    pub fn new(url: &str) -> Self {
        Self {
            hosts: hosts_of(url),
            down: AtomicBool::new(false),
            outages: AtomicU64::new(0),
            state: Mutex::default(),
        }
    }

    /// The server that the last connection opened reached, `address:port`.
    #[must_use]
    pub fn primary(&self) -> Option<String> {
        self.lock().primary.clone()
    }

    /// How many outages have begun. A connection opened before the latest outage began is
    /// discarded instead of being used again: the server it reached may be gone, read-only
    /// (a demoted primary) or silent, and each such connection would otherwise fail one more
    /// request after the database is back.
    #[must_use]
    pub fn outages(&self) -> u64 {
        self.outages.load(Ordering::Acquire)
    }

    /// Whether the database is taken to be out of reach.
    #[must_use]
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    /// The database could not be reached, for `reason`: the first failure of an outage is
    /// logged, the others counted.
    pub fn unreachable(&self, reason: &str) {
        let mut state = self.lock();
        match &mut state.outage {
            Some(outage) => outage.refused += 1,
            None => {
                tracing::warn!(hosts = %self.hosts, %reason, "the database is unreachable; requests answer 503 until it is back");
                state.outage = Some(Outage {
                    since: Instant::now(),
                    refused: 1,
                });
                self.outages.fetch_add(1, Ordering::AcqRel);
                self.down.store(true, Ordering::Relaxed);
            }
        }
    }

    /// A request refused for want of the database (no connection could be had): counted in
    /// the outage, if one is known.
    pub fn refused(&self) {
        if self.is_down() {
            if let Some(outage) = &mut self.lock().outage {
                outage.refused += 1;
            }
        }
    }

    /// A connection was opened to `server` (`address:port`).
    pub fn connected(&self, server: &str) {
        let mut state = self.lock();
        let changed = state.primary.as_deref() != Some(server);
        let previous = state.primary.replace(server.to_owned());
        match state.outage.take() {
            Some(outage) => {
                self.down.store(false, Ordering::Relaxed);
                tracing::info!(
                    primary = %server,
                    outage_ms = u64::try_from(outage.since.elapsed().as_millis()).unwrap_or(u64::MAX),
                    refused = outage.refused,
                    "the database is reachable again"
                );
            }
            None if changed && previous.is_some() => {
                tracing::info!(primary = %server, previous = ?previous, "connected to another database server");
            }
            None => {}
        }
    }

    /// A statement was answered: the database is reachable.
    pub fn answered(&self) {
        if !self.is_down() {
            return;
        }
        let mut state = self.lock();
        if let Some(outage) = state.outage.take() {
            self.down.store(false, Ordering::Relaxed);
            tracing::info!(
                primary = ?state.primary,
                outage_ms = u64::try_from(outage.since.elapsed().as_millis()).unwrap_or(u64::MAX),
                refused = outage.refused,
                "the database is reachable again"
            );
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The hosts of a connection URI, `host:port` comma-separated; never its user or password.
fn hosts_of(url: &str) -> String {
    match url.parse::<tokio_postgres::Config>() {
        Ok(config) => {
            let ports = config.get_ports();
            config
                .get_hosts()
                .iter()
                .enumerate()
                .map(|(i, host)| {
                    let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
                    match host {
                        tokio_postgres::config::Host::Tcp(name) => format!("{name}:{port}"),
                        tokio_postgres::config::Host::Unix(path) => {
                            format!("{}:{port}", path.display())
                        }
                    }
                })
                .collect::<Vec<_>>()
                .join(",")
        }
        Err(_) => "(an unreadable URI)".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hosts_of_a_uri_are_named_without_its_credentials() {
        assert_eq!(
            hosts_of("postgres://user:secret@db1:5433,db2:5434/gm?target_session_attrs=read-write"),
            "db1:5433,db2:5434"
        );
        assert_eq!(hosts_of("postgres://user:secret@db/gm"), "db:5432");
    }

    #[test]
    fn an_outage_is_open_from_its_first_failure_to_the_first_answer_and_counts_what_it_refused() {
        let availability = Availability::new("postgres://db/gm");
        availability.connected("10.0.0.1:5432");
        assert!(!availability.is_down());
        availability.refused();
        availability.unreachable("connection refused");
        availability.unreachable("connection refused");
        availability.refused();
        assert!(availability.is_down());
        assert_eq!(
            availability
                .lock()
                .outage
                .as_ref()
                .map(|outage| outage.refused),
            Some(3)
        );
        assert_eq!(availability.outages(), 1);
        availability.answered();
        assert!(!availability.is_down());
        availability.unreachable("the session was ended");
        assert_eq!(availability.outages(), 2, "a second outage");
        availability.answered();
        availability.connected("10.0.0.2:5432");
        assert_eq!(availability.primary().as_deref(), Some("10.0.0.2:5432"));
    }
}
