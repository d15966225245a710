//! Database outages on command: a TCP proxy between a test's clients and PostgreSQL.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};

/// What an outage does to the connections already open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// They are closed at once, as when the server's machine goes away.
    AtOnce,
    /// Each stays open until its client next sends something, and is then closed without
    /// passing it on: a connection that died while idle, found out by the next statement.
    OnNextRequest,
    /// Nothing is closed and nothing passes any more, either way; new connections are
    /// accepted and never answered: a server behind a network partition (no FIN, no RST).
    Silent,
}

/// Forwards connections to a PostgreSQL server until told to fail them.
#[derive(Debug)]
pub struct OutageProxy {
    url: String,
    down: Arc<AtomicBool>,
    silent: Arc<AtomicBool>,
    cut: watch::Sender<u64>,
    accepting: JoinHandle<()>,
}

impl OutageProxy {
    /// A proxy in front of the server of `database_url`; [`OutageProxy::url`] reaches the same
    /// database through it.
    ///
    /// # Panics
    /// When `database_url` is not a URI with a host, or no local port can be bound; this is
    /// test code.
    pub async fn start(database_url: &str) -> Self {
        let mut url = url::Url::parse(database_url).expect("a postgres:// URI");
        let target = format!(
            "{}:{}",
            url.host_str().expect("a host"),
            url.port().unwrap_or(5432)
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        url.set_host(Some("127.0.0.1")).expect("a host");
        url.set_port(Some(port)).expect("a port");
        let down = Arc::new(AtomicBool::new(false));
        let silent = Arc::new(AtomicBool::new(false));
        let (cut, _) = watch::channel(0u64);
        let accepting = tokio::spawn(accept(
            listener,
            target,
            Lines {
                down: down.clone(),
                silent: silent.clone(),
            },
            cut.clone(),
        ));
        Self {
            url: url.to_string(),
            down,
            silent,
            cut,
            accepting,
        }
    }

    /// The database's URI through the proxy.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.url
    }

    /// From now on new connections are refused (or, [`Cut::Silent`], never answered), and the
    /// open ones fail as `cut` says.
    pub fn outage(&self, cut: Cut) {
        match cut {
            Cut::Silent => self.silent.store(true, Ordering::SeqCst),
            Cut::AtOnce | Cut::OnNextRequest => self.down.store(true, Ordering::SeqCst),
        }
        if cut == Cut::AtOnce {
            self.cut.send_modify(|n| *n += 1);
        }
    }

    /// New connections are forwarded again; those held silent are closed.
    pub fn restore(&self) {
        let was_silent = self.silent.swap(false, Ordering::SeqCst);
        self.down.store(false, Ordering::SeqCst);
        if was_silent {
            self.cut.send_modify(|n| *n += 1);
        }
    }
}

impl Drop for OutageProxy {
    fn drop(&mut self) {
        self.accepting.abort();
        self.cut.send_modify(|n| *n += 1);
    }
}

/// The proxy's state, as every connection sees it.
#[derive(Clone)]
struct Lines {
    down: Arc<AtomicBool>,
    silent: Arc<AtomicBool>,
}

async fn accept(listener: TcpListener, target: String, lines: Lines, cut: watch::Sender<u64>) {
    while let Ok((client, _)) = listener.accept().await {
        if lines.down.load(Ordering::SeqCst) {
            continue;
        }
        if lines.silent.load(Ordering::SeqCst) {
            tokio::spawn(hold(client, cut.subscribe()));
            continue;
        }
        tokio::spawn(forward(
            client,
            target.clone(),
            lines.clone(),
            cut.subscribe(),
        ));
    }
}

/// Keeps a connection open and unanswered, reading what comes, until the next cut.
async fn hold(mut client: TcpStream, mut cut: watch::Receiver<u64>) {
    let mut buffer = vec![0u8; 16 * 1024];
    let swallow = async { while client.read(&mut buffer).await.is_ok_and(|read| read > 0) {} };
    tokio::select! {
        () = swallow => {}
        _ = cut.changed() => {}
    }
}

async fn forward(client: TcpStream, target: String, lines: Lines, mut cut: watch::Receiver<u64>) {
    let Ok(server) = TcpStream::connect(&target).await else {
        return;
    };
    let (mut client_reads, mut client_writes) = client.into_split();
    let (mut server_reads, mut server_writes) = server.into_split();
    let requests = async {
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            let read = client_reads.read(&mut buffer).await?;
            if read == 0 || lines.down.load(Ordering::SeqCst) {
                return Ok::<_, std::io::Error>(());
            }
            if !lines.silent.load(Ordering::SeqCst) {
                server_writes.write_all(&buffer[..read]).await?;
            }
        }
    };
    let answers = async {
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            let read = server_reads.read(&mut buffer).await?;
            if read == 0 {
                return Ok::<_, std::io::Error>(());
            }
            if !lines.silent.load(Ordering::SeqCst) {
                client_writes.write_all(&buffer[..read]).await?;
            }
        }
    };
    // Whichever ends first, both sockets are closed when the halves are dropped.
    tokio::select! {
        _ = requests => {}
        _ = answers => {}
        _ = cut.changed() => {}
    }
}
