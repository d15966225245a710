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
}

/// Forwards connections to a PostgreSQL server until told to fail them.
#[derive(Debug)]
pub struct OutageProxy {
    url: String,
    down: Arc<AtomicBool>,
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
        let (cut, _) = watch::channel(0u64);
        let accepting = tokio::spawn(accept(listener, target, down.clone(), cut.clone()));
        Self {
            url: url.to_string(),
            down,
            cut,
            accepting,
        }
    }

    /// The database's URI through the proxy.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.url
    }

    /// From now on new connections are refused, and the open ones fail as `cut` says.
    pub fn outage(&self, cut: Cut) {
        self.down.store(true, Ordering::SeqCst);
        if cut == Cut::AtOnce {
            self.cut.send_modify(|n| *n += 1);
        }
    }

    /// New connections are forwarded again.
    pub fn restore(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

impl Drop for OutageProxy {
    fn drop(&mut self) {
        self.accepting.abort();
        self.cut.send_modify(|n| *n += 1);
    }
}

async fn accept(
    listener: TcpListener,
    target: String,
    down: Arc<AtomicBool>,
    cut: watch::Sender<u64>,
) {
    while let Ok((client, _)) = listener.accept().await {
        if down.load(Ordering::SeqCst) {
            continue;
        }
        tokio::spawn(forward(
            client,
            target.clone(),
            down.clone(),
            cut.subscribe(),
        ));
    }
}

async fn forward(
    client: TcpStream,
    target: String,
    down: Arc<AtomicBool>,
    mut cut: watch::Receiver<u64>,
) {
    let Ok(server) = TcpStream::connect(&target).await else {
        return;
    };
    let (mut client_reads, mut client_writes) = client.into_split();
    let (mut server_reads, mut server_writes) = server.into_split();
    let requests = async {
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            let read = client_reads.read(&mut buffer).await?;
            if read == 0 || down.load(Ordering::SeqCst) {
                return Ok::<_, std::io::Error>(());
            }
            server_writes.write_all(&buffer[..read]).await?;
        }
    };
    let answers = tokio::io::copy(&mut server_reads, &mut client_writes);
    // Whichever ends first, both sockets are closed when the halves are dropped.
    tokio::select! {
        _ = requests => {}
        _ = answers => {}
        _ = cut.changed() => {}
    }
}
