//! Each customer's event log: what changed that the customer can see, in commit order.

use async_trait::async_trait;
use std::time::Duration;

use domain::{Balance, Order, UserId};

use super::RepositoryError;

/// Where an event stands in the log: after every event of an older transaction, and after the
/// events its own transaction wrote before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventPosition {
    /// The writing transaction.
    pub tx: u64,
    /// The event within the log, in insertion order.
    pub id: i64,
}

impl std::fmt::Display for EventPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.tx, self.id)
    }
}

impl std::str::FromStr for EventPosition {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (tx, id) = s.split_once('-').ok_or(())?;
        let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        if !digits(tx) || !digits(id) {
            return Err(());
        }
        Ok(Self {
            tx: tx.parse().map_err(|_| ())?,
            id: id.parse().map_err(|_| ())?,
        })
    }
}

/// Which transactions had ended when the log was read: every one before `xmin`, none from
/// `xmax` on, and between them all but those `running`. The log as it stood then is the
/// events of the transactions that had ended (committed; a rolled back one wrote none).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Snapshot {
    pub xmin: u64,
    pub xmax: u64,
    /// Sorted.
    pub running: Vec<u64>,
}

impl Snapshot {
    /// Whether transaction `tx` had ended.
    #[must_use]
    pub fn ended(&self, tx: u64) -> bool {
        tx < self.xmin || (tx < self.xmax && self.running.binary_search(&tx).is_err())
    }
}

/// What a stream has delivered of its customer's log: every event up to `through`, and the
/// events of the later transactions in `also`, each up to the position given there. A
/// transaction's events are delivered as soon as it commits, even while an older transaction
/// is still running (which may still write events before them): `also` lists those delivered
/// ahead, so that a client resuming from a cursor gets exactly what it has not seen.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Cursor {
    pub through: EventPosition,
    /// Ordered by transaction, each after `through`'s; at most [`Cursor::MAX_AHEAD`].
    pub also: Vec<EventPosition>,
}

/// A stream delivered events of more than [`Cursor::MAX_AHEAD`] transactions ahead of an older
/// one that is still running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "events of more than {} transactions were delivered ahead of an older one",
    Cursor::MAX_AHEAD
)]
pub struct TooFarAhead;

impl Cursor {
    /// Most transactions a cursor lists ahead of `through` (which bounds its printed length).
    pub const MAX_AHEAD: usize = 32;

    /// The cursor of a stream that starts where every transaction before `xmin` had ended.
    #[must_use]
    pub fn start(xmin: u64) -> Self {
        Self {
            through: EventPosition { tx: xmin, id: 0 },
            also: Vec::new(),
        }
    }

    /// Whether the event at `position` was delivered.
    #[must_use]
    pub fn covers(&self, position: EventPosition) -> bool {
        position <= self.through
            || self
                .also
                .iter()
                .any(|a| a.tx == position.tx && position.id <= a.id)
    }

    /// Records the delivery of the event at `position`, read when every transaction before
    /// `xmin` had ended, after every event of the customer read before it; `false` when the
    /// event was delivered already (it is then not to be sent again).
    ///
    /// # Errors
    /// [`TooFarAhead`] when it would list more than [`Cursor::MAX_AHEAD`] transactions.
    pub fn deliver(&mut self, position: EventPosition, xmin: u64) -> Result<bool, TooFarAhead> {
        if self.covers(position) {
            return Ok(false);
        }
        if position.tx < xmin {
            // Every older transaction has ended and its events were delivered before this one.
            self.through = position;
            self.also.retain(|a| a.tx > position.tx);
            return Ok(true);
        }
        // Delivered ahead. Every event of a transaction before `xmin` was read before this one.
        let start = EventPosition { tx: xmin, id: 0 };
        if start > self.through {
            self.through = start;
            self.also.retain(|a| a.tx >= xmin);
        }
        match self.also.binary_search_by_key(&position.tx, |a| a.tx) {
            Ok(at) => self.also[at].id = self.also[at].id.max(position.id),
            Err(_) if self.also.len() >= Self::MAX_AHEAD => return Err(TooFarAhead),
            Err(at) => self.also.insert(at, position),
        }
        Ok(true)
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.through)?;
        for ahead in &self.also {
            write!(f, ".{ahead}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Cursor {
    type Err = ();

    /// What [`Cursor`]'s `Display` prints, and nothing else.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split('.');
        let through: EventPosition = parts.next().ok_or(())?.parse()?;
        let also = parts
            .map(str::parse)
            .collect::<Result<Vec<EventPosition>, ()>>()?;
        let ordered = also.windows(2).all(|w| w[0].tx < w[1].tx);
        if also.len() > Self::MAX_AHEAD
            || !ordered
            || also.first().is_some_and(|a| a.tx <= through.tx)
        {
            return Err(());
        }
        Ok(Self { through, also })
    }
}

/// What changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// An order was uploaded, or its status or accrual changed: its state after.
    Order(Order),
    /// The balance after a credit or a withdrawal.
    Balance(Balance),
}

/// One event of a customer's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub position: EventPosition,
    pub user: UserId,
    pub change: Change,
}

/// A customer's events after a position they had seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resumed {
    /// The events the cursor did not cover, in order.
    Events(Vec<Event>),
    /// Events after the position were removed after the retention: what the customer missed
    /// cannot be told.
    Lost,
}

/// Reads the event log (written with the changes themselves) and removes old events.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait EventLog: Send + Sync {
    /// Which transactions have ended now.
    ///
    /// # Errors
    /// [`RepositoryError`] on a storage failure.
    async fn snapshot(&self) -> Result<Snapshot, RepositoryError>;

    /// Every customer's events of the transactions that had not ended at `since` and have now,
    /// in order, and which transactions have ended now (where the next read begins).
    ///
    /// # Errors
    /// [`RepositoryError`] on a storage failure.
    async fn read(&self, since: &Snapshot) -> Result<(Vec<Event>, Snapshot), RepositoryError>;

    /// `user`'s events not covered by `after` of the transactions that had ended at `until`,
    /// in order, at most `limit`.
    ///
    /// # Errors
    /// [`RepositoryError`] on a storage failure.
    async fn resume(
        &self,
        user: UserId,
        after: &Cursor,
        until: &Snapshot,
        limit: u32,
    ) -> Result<Resumed, RepositoryError>;

    /// Removes at most `batch` events written more than `older_than` ago (by the database's
    /// clock); returns how many.
    ///
    /// # Errors
    /// [`RepositoryError`] on a storage failure.
    async fn prune(&self, older_than: Duration, batch: u32) -> Result<u64, RepositoryError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(tx: u64, id: i64) -> EventPosition {
        EventPosition { tx, id }
    }

    #[test]
    fn a_cursor_prints_and_reads_back_and_refuses_what_it_never_prints() {
        let cursor = Cursor {
            through: at(741, 2051),
            also: vec![at(743, 2056), at(750, 2060)],
        };
        assert_eq!(cursor.to_string(), "741-2051.743-2056.750-2060");
        assert_eq!("741-2051.743-2056.750-2060".parse(), Ok(cursor));
        assert_eq!(
            "741-2051".parse(),
            Ok(Cursor {
                through: at(741, 2051),
                also: Vec::new()
            })
        );
        let too_many: String = std::iter::once("1-1".to_owned())
            .chain((2..=34).map(|tx| format!("{tx}-{tx}")))
            .collect::<Vec<_>>()
            .join(".");
        for bad in [
            "",
            "741",
            "741-",
            "+741-1",
            "741--1",
            "741-1.",
            "741-1.741-2",
            "741-1.745-2.743-3",
            "741-1.745-2.745-3",
            "a-1",
            too_many.as_str(),
        ] {
            assert_eq!(bad.parse::<Cursor>(), Err(()), "{bad:?}");
        }
    }

    #[test]
    fn events_delivered_ahead_are_listed_until_every_older_transaction_ended() {
        let mut cursor = Cursor::start(100);
        // Transaction 100 still runs; 103 committed: delivered ahead.
        assert_eq!(cursor.deliver(at(103, 7), 100), Ok(true));
        assert_eq!(cursor.deliver(at(103, 8), 100), Ok(true));
        assert_eq!(cursor.to_string(), "100-0.103-8");
        assert!(cursor.covers(at(103, 8)) && !cursor.covers(at(100, 1)));
        // 100 ended (it wrote events 1 and 9), 105 still runs, 106 committed.
        assert_eq!(cursor.deliver(at(100, 1), 105), Ok(true));
        assert_eq!(cursor.deliver(at(100, 9), 105), Ok(true));
        assert_eq!(cursor.to_string(), "100-9.103-8");
        assert_eq!(cursor.deliver(at(106, 10), 105), Ok(true));
        // Everything before 105 was delivered: 103 no longer needs listing.
        assert_eq!(cursor.to_string(), "105-0.106-10");
        // What was delivered is not delivered again.
        assert_eq!(cursor.deliver(at(103, 8), 105), Ok(false));
        assert_eq!(cursor.deliver(at(106, 10), 107), Ok(false));
        assert_eq!(cursor.deliver(at(107, 11), 108), Ok(true));
        assert_eq!(cursor.to_string(), "107-11");
    }

    #[test]
    fn a_cursor_lists_a_bounded_number_of_transactions_ahead() {
        let mut cursor = Cursor::start(10);
        for tx in 11..11 + Cursor::MAX_AHEAD as u64 {
            assert_eq!(
                cursor.deliver(at(tx, i64::try_from(tx).expect("small")), 10),
                Ok(true)
            );
        }
        assert_eq!(cursor.deliver(at(100, 100), 10), Err(TooFarAhead));
        let printed = cursor.to_string();
        assert_eq!(printed.parse(), Ok(cursor));
    }
}
