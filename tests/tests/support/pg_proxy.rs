//! A TCP proxy in front of the suite's PostgreSQL, for the faults PostgreSQL
//! itself cannot be asked for while other tests use it: a stall (bytes stop
//! flowing both ways, connections stay open), a restart as clients see it
//! (every connection closed at once), and a database that is not there yet
//! (the proxy listens only when told to).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Where the suite's PostgreSQL listens.
const UPSTREAM: &str = "127.0.0.1:5432";

/// The proxy: every connection accepted is forwarded to [`UPSTREAM`].
pub struct PgProxy {
    pub port: u16,
    stalled: watch::Sender<bool>,
    connections: Arc<Mutex<CancellationToken>>,
    stop: CancellationToken,
}

impl PgProxy {
    /// A proxy on an ephemeral port.
    pub async fn start() -> Self {
        Self::on(0).await
    }

    /// A proxy on `port` (0: any), listening from now on.
    pub async fn on(port: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind the proxy");
        let port = listener.local_addr().expect("bound").port();
        let (stalled, _) = watch::channel(false);
        let proxy = Self {
            port,
            stalled,
            connections: Arc::new(Mutex::new(CancellationToken::new())),
            stop: CancellationToken::new(),
        };
        tokio::spawn(accept(listener, proxy.stalled.clone(), Arc::clone(&proxy.connections), proxy.stop.clone()));
        proxy
    }

    /// `url` (a test database's) through this proxy.
    pub fn url(&self, url: &str) -> String {
        through(url, self.port)
    }

    /// No byte moves either way until [`PgProxy::resume`]; connections stay open.
    pub fn stall(&self) {
        self.stalled.send_replace(true);
    }

    pub fn resume(&self) {
        self.stalled.send_replace(false);
    }

    /// Closes every connection open now, as a server restart does.
    pub fn cut(&self) {
        let mut connections = self.connections.lock().expect("not poisoned");
        connections.cancel();
        *connections = CancellationToken::new();
    }
}

impl Drop for PgProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.connections.lock().expect("not poisoned").cancel();
        self.stalled.send_replace(false);
    }
}

/// `url` with its host and port replaced by this machine's `port`.
pub fn through(url: &str, port: u16) -> String {
    url.replacen(UPSTREAM, &format!("127.0.0.1:{port}"), 1)
}

async fn accept(
    listener: TcpListener,
    stalled: watch::Sender<bool>,
    connections: Arc<Mutex<CancellationToken>>,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => return,
        };
        let Ok((client, _)) = accepted else { continue };
        let cut = connections.lock().expect("not poisoned").clone();
        tokio::spawn(forward(client, stalled.subscribe(), cut));
    }
}

async fn forward(client: TcpStream, stalled: watch::Receiver<bool>, cut: CancellationToken) {
    let Ok(server) = TcpStream::connect(UPSTREAM.parse::<SocketAddr>().expect("an address")).await else { return };
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::select! {
        () = pump(client_read, server_write, stalled.clone()) => {}
        () = pump(server_read, client_write, stalled) => {}
        () = cut.cancelled() => {}
    }
}

/// Copies `from` to `to` while not stalled.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut stalled: watch::Receiver<bool>) {
    let mut buffer = vec![0; 16 * 1024];
    loop {
        while *stalled.borrow_and_update() {
            if stalled.changed().await.is_err() {
                return;
            }
        }
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            _ = stalled.changed() => continue,
        };
        match read {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if to.write_all(&buffer[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}
