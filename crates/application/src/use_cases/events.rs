//! Live event streams: each customer's open streams on this instance, fed from the event log.
//!
//! One task per instance ([`EventStreams::run`]) reads the log while any stream is open, when
//! woken (a change committed here, or another instance's announcement) and at least every
//! [`EventStreamsConfig::poll_interval`]: the events of the transactions that ended since the
//! last read, as soon as they committed, even while older ones still run. It hands each event
//! to its customer's streams. Each stream keeps a [`Cursor`] of what it delivered, sent with
//! every event, so that a client resuming from it gets exactly what it missed. A stream first
//! reads from the log what its customer's cursor does not cover up to where the live reads
//! began. A stream that falls [`EventStreamsConfig::buffer`] events behind, or that would list
//! too many transactions delivered ahead of an older one still running, is ended: its client
//! reconnects from its last event and reads the rest from the log.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use domain::UserId;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::ports::{
    events::{Cursor, Event, EventLog, Resumed, Snapshot},
    RepositoryError,
};

/// Limits and pace of the streams.
#[derive(Debug, Clone)]
pub struct EventStreamsConfig {
    /// Most streams open on this instance at once.
    pub max_streams: usize,
    /// Most streams one customer may have open on this instance at once.
    pub max_streams_per_customer: usize,
    /// Longest time between two reads of the log while a stream is open, woken or not.
    pub poll_interval: Duration,
    /// Events a stream may have waiting to be sent before it is ended as too slow.
    pub buffer: usize,
    /// Events read at once for a stream that resumes.
    pub resume_batch: u32,
    /// How long events are kept.
    pub retention: Duration,
    /// How often this instance removes events older than the retention.
    pub prune_interval: Duration,
    /// Events removed at once.
    pub prune_batch: u32,
}

impl Default for EventStreamsConfig {
    fn default() -> Self {
        Self {
            max_streams: 20_000,
            max_streams_per_customer: 5,
            poll_interval: Duration::from_secs(1),
            buffer: 256,
            resume_batch: 500,
            retention: Duration::from_secs(24 * 3600),
            prune_interval: Duration::from_secs(60),
            prune_batch: 10_000,
        }
    }
}

/// Why a stream could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenStreamError {
    #[error("the customer has {0} streams open on this instance")]
    CustomerLimit(usize),
    #[error("this instance has {0} streams open")]
    InstanceLimit(usize),
    #[error("the instance is stopping")]
    Stopping,
    #[error(transparent)]
    Repository(#[from] RepositoryError),
}

/// Where a stream starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamStart {
    /// From now on: the stream opens with [`StreamItem::Ready`].
    Now,
    /// After a cursor a stream sent: the events missed since then come first.
    After(Cursor),
    /// After a position the log cannot place (not one a stream sends): nothing can be said of
    /// what was missed, so the stream opens with [`StreamItem::Reset`], as when the events
    /// after a position were removed. A client is never refused for its position: a browser's
    /// `EventSource` does not reconnect after a refusal.
    Unknown,
}

/// What a stream sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamItem {
    /// The stream starts here (it resumed from nothing): the cursor to resume from.
    Ready(Cursor),
    /// Events after the cursor the stream resumed from were removed, or the cursor is not one
    /// the log can place: the client must load the state again; the stream goes on from the
    /// cursor given.
    Reset(Cursor),
    /// An event, and the stream's cursor once it is delivered.
    Event(Event, Cursor),
}

/// An event read live, when every transaction before `xmin` had ended.
struct Live {
    event: Event,
    xmin: u64,
}

struct Subscriber {
    key: u64,
    events: mpsc::Sender<Live>,
}

#[derive(Default)]
struct Streams {
    /// Where the next live read begins; `None` while no stream is open.
    snapshot: Option<Snapshot>,
    by_customer: HashMap<UserId, Vec<Subscriber>>,
    open: usize,
    next_key: u64,
}

/// The streams open on this instance.
pub struct EventStreams {
    log: Arc<dyn EventLog>,
    config: EventStreamsConfig,
    streams: Mutex<Streams>,
    stopping: CancellationToken,
}

impl std::fmt::Debug for EventStreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStreams")
            .field("config", &self.config)
            .field("open", &self.open())
            .finish_non_exhaustive()
    }
}

impl EventStreams {
    #[must_use]
    pub fn new(log: Arc<dyn EventLog>, config: EventStreamsConfig) -> Self {
        Self {
            log,
            config,
            streams: Mutex::new(Streams::default()),
            stopping: CancellationToken::new(),
        }
    }

    /// How many streams are open.
    #[must_use]
    pub fn open(&self) -> usize {
        self.lock().open
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Streams> {
        self.streams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Opens a stream of `user`'s events from `from`.
    ///
    /// # Errors
    /// When a limit is reached, the instance is stopping, or the log cannot be read.
    pub async fn open_stream(
        self: &Arc<Self>,
        user: UserId,
        from: StreamStart,
    ) -> Result<EventStream, OpenStreamError> {
        let mut fetched = None;
        loop {
            if self.stopping.is_cancelled() {
                return Err(OpenStreamError::Stopping);
            }
            let known = self.lock().snapshot.is_some();
            if !known && fetched.is_none() {
                fetched = Some(self.log.snapshot().await?);
            }
            let mut streams = self.lock();
            let snapshot = match (&streams.snapshot, fetched.take()) {
                (Some(snapshot), _) => snapshot.clone(),
                (None, Some(snapshot)) => streams.snapshot.insert(snapshot).clone(),
                // The last stream closed meanwhile: the snapshot is to be read again.
                (None, None) => continue,
            };
            if streams.open >= self.config.max_streams {
                return Err(OpenStreamError::InstanceLimit(streams.open));
            }
            let theirs = streams.by_customer.get(&user).map_or(0, Vec::len);
            if theirs >= self.config.max_streams_per_customer {
                return Err(OpenStreamError::CustomerLimit(theirs));
            }
            let (sender, receiver) = mpsc::channel(self.config.buffer.max(1));
            let key = streams.next_key;
            streams.next_key += 1;
            streams.open += 1;
            streams
                .by_customer
                .entry(user)
                .or_default()
                .push(Subscriber {
                    key,
                    events: sender,
                });
            // A stream from now on first delivers the events of the transactions that ended
            // after `xmin` but before the live reads began, as it would had it opened a moment
            // earlier; a stream from a cursor, whatever the cursor does not cover.
            let start = Cursor::start(snapshot.xmin);
            let (cursor, pending, reset) = match from {
                StreamStart::Now => (start.clone(), Some(StreamItem::Ready(start)), false),
                StreamStart::Unknown => (start.clone(), Some(StreamItem::Reset(start)), true),
                StreamStart::After(after) => (after, None, false),
            };
            return Ok(EventStream {
                streams: self.clone(),
                user,
                key,
                live: receiver,
                cursor,
                catch_up: Some(snapshot),
                reset,
                ending: false,
                pending: pending.into_iter().collect(),
            });
        }
    }

    fn close(&self, user: UserId, key: u64) {
        let mut streams = self.lock();
        let Some(theirs) = streams.by_customer.get_mut(&user) else {
            return;
        };
        let before = theirs.len();
        theirs.retain(|s| s.key != key);
        let closed = before - theirs.len();
        if theirs.is_empty() {
            streams.by_customer.remove(&user);
        }
        streams.open -= closed;
    }

    /// Hands events read since `from` to their customers' streams and moves the next read to
    /// `end`; a stream whose buffer is full is ended.
    fn dispatch(&self, from: &Snapshot, events: Vec<Event>, end: Snapshot) {
        let mut streams = self.lock();
        if streams.snapshot.as_ref() != Some(from) {
            // Every stream closed and others opened meanwhile, from a later snapshot: this
            // read is theirs to do again.
            return;
        }
        let mut ended = 0;
        for event in events {
            let Some(theirs) = streams.by_customer.get_mut(&event.user) else {
                continue;
            };
            let before = theirs.len();
            theirs.retain(|s| {
                s.events
                    .try_send(Live {
                        event: event.clone(),
                        xmin: end.xmin,
                    })
                    .is_ok()
            });
            ended += before - theirs.len();
            if theirs.is_empty() {
                streams.by_customer.remove(&event.user);
            }
        }
        streams.open -= ended;
        if ended > 0 {
            tracing::debug!(ended, "event streams too slow to keep up were ended");
        }
        streams.snapshot = Some(end);
    }

    /// Feeds the streams until `stop` is cancelled, then ends every stream: reads the log when
    /// `wake` is notified and at least every [`EventStreamsConfig::poll_interval`] while a
    /// stream is open.
    pub async fn run(self: Arc<Self>, wake: Arc<Notify>, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                () = self.stopping.cancelled() => break,
                () = wake.notified() => {}
                () = tokio::time::sleep(self.config.poll_interval) => {}
            }
            let from = {
                let mut streams = self.lock();
                if streams.open == 0 {
                    streams.snapshot = None;
                }
                streams.snapshot.clone()
            };
            let Some(from) = from else { continue };
            match self.log.read(&from).await {
                Ok((events, end)) => self.dispatch(&from, events, end),
                // Read again at the next wake or poll; the outage is reported by the pool.
                Err(error) => tracing::debug!(%error, "could not read the event log"),
            }
        }
        self.stop_streams();
    }

    /// Ends every stream (their clients reconnect, to another instance) and opens no more.
    pub fn stop_streams(&self) {
        self.stopping.cancel();
    }

    /// Removes events older than the retention, every [`EventStreamsConfig::prune_interval`],
    /// until `stop` is cancelled. Every instance may run it; one is enough.
    pub async fn prune(self: Arc<Self>, stop: CancellationToken) {
        loop {
            loop {
                match self
                    .log
                    .prune(self.config.retention, self.config.prune_batch)
                    .await
                {
                    Ok(removed) if removed >= u64::from(self.config.prune_batch) => {
                        if stop.is_cancelled() {
                            return;
                        }
                    }
                    Ok(_) => break,
                    Err(error) => {
                        tracing::debug!(%error, "could not remove old events");
                        break;
                    }
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(self.config.prune_interval) => {}
            }
        }
    }
}

/// One customer's open stream; closed when dropped.
pub struct EventStream {
    streams: Arc<EventStreams>,
    user: UserId,
    key: u64,
    live: mpsc::Receiver<Live>,
    /// What the stream delivered.
    cursor: Cursor,
    /// What remains to be read from the log: what the cursor does not cover of the
    /// transactions that had ended here, where the live reads began.
    catch_up: Option<Snapshot>,
    /// Whether the stream sent `reset`.
    reset: bool,
    /// Whether the stream ends once `pending` is sent.
    ending: bool,
    pending: VecDeque<StreamItem>,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("user", &self.user)
            .field("cursor", &self.cursor)
            .finish_non_exhaustive()
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.streams.close(self.user, self.key);
    }
}

impl EventStream {
    /// The next item; `None` when the stream ended (the instance is stopping, or the stream
    /// fell too far behind: the client resumes from its last event).
    ///
    /// # Errors
    /// When the missed events cannot be read (the stream is to be ended then).
    pub async fn next(&mut self) -> Result<Option<StreamItem>, RepositoryError> {
        loop {
            if self.streams.stopping.is_cancelled() {
                return Ok(None);
            }
            if let Some(item) = self.pending.pop_front() {
                return Ok(Some(item));
            }
            if self.ending {
                return Ok(None);
            }
            if let Some(until) = &self.catch_up {
                let batch = self.streams.config.resume_batch;
                match self
                    .streams
                    .log
                    .resume(self.user, &self.cursor, until, batch)
                    .await?
                {
                    Resumed::Lost if !self.reset => {
                        self.reset = true;
                        self.cursor = Cursor::start(until.xmin);
                        self.pending
                            .push_back(StreamItem::Reset(self.cursor.clone()));
                    }
                    Resumed::Lost => self.catch_up = None,
                    Resumed::Events(events) => {
                        let full = events.len() >= usize::try_from(batch).unwrap_or(usize::MAX);
                        let xmin = until.xmin;
                        if !full {
                            self.catch_up = None;
                        }
                        for event in events {
                            if !self.deliver(event, xmin) {
                                break;
                            }
                        }
                    }
                }
                continue;
            }
            let live = tokio::select! {
                () = self.streams.stopping.cancelled() => return Ok(None),
                live = self.live.recv() => live,
            };
            let Some(Live { event, xmin }) = live else {
                return Ok(None);
            };
            self.deliver(event, xmin);
        }
    }

    /// Queues `event` (read when every transaction before `xmin` had ended) unless it was
    /// delivered already; `false` when the stream is to end instead, once what is queued is
    /// sent (its client resumes from there).
    fn deliver(&mut self, event: Event, xmin: u64) -> bool {
        match self.cursor.deliver(event.position, xmin) {
            Ok(true) => {
                self.pending
                    .push_back(StreamItem::Event(event, self.cursor.clone()));
                true
            }
            Ok(false) => true,
            Err(error) => {
                tracing::debug!(%error, "an event stream was ended");
                self.ending = true;
                self.catch_up = None;
                false
            }
        }
    }
}
