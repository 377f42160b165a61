//! NATS for the cluster tests: a real `nats-server` of the test's own (JetStream on, on a
//! free port, storage in a temp dir) that can be stopped and started again on the same
//! port and storage, and a TCP proxy in front of it that can cut one node's connection
//! and heal it, or stall it silently and resume it (a partition without root or network
//! namespaces).
//!
//! Like the PostgreSQL tests, these never skip: without a `nats-server` binary the test
//! fails, naming what to install.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{DEADLINE, temp_dir};

const POLL: Duration = Duration::from_millis(50);

/// Where Debian's package puts the binary (often not on a non-root PATH).
const DEBIAN_PATH: &str = "/usr/sbin/nats-server";

/// The `nats-server` binary: `MS_TEST_NATS_SERVER`, else `nats-server` on PATH, else
/// Debian's `/usr/sbin/nats-server`. Fails the test, naming what to install, if none is.
pub fn nats_server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("MS_TEST_NATS_SERVER") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "MS_TEST_NATS_SERVER={} is not a file; point it at a nats-server binary \
             (on Debian: `apt-get install nats-server`, then /usr/sbin/nats-server), or run \
             scripts/test.sh, which sets it",
            path.display()
        );
        return path;
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("nats-server"))
            .find(|p| p.is_file())
    });
    if let Some(path) = on_path {
        return path;
    }
    let debian = PathBuf::from(DEBIAN_PATH);
    if debian.is_file() {
        return debian;
    }
    panic!(
        "no nats-server binary: MS_TEST_NATS_SERVER is not set, there is no nats-server on \
         PATH and no {DEBIAN_PATH}. The cluster tests need a real NATS server and never \
         skip: install it (on Debian: `apt-get install nats-server`), or run scripts/test.sh, \
         which installs it and sets MS_TEST_NATS_SERVER."
    )
}

/// A port free a moment ago, for a listener that must keep its number: NATS across a
/// restart, a node's ractor_cluster server. Taken at random below the kernel's ephemeral
/// range (32768 and up on Linux), where `free_port` and every outgoing connection (NATS
/// clients reconnecting, PostgreSQL, HTTP) take theirs, so none of those can take it in the
/// meantime; never the same twice in one test binary.
pub fn stable_port() -> u16 {
    use std::collections::HashSet;
    use std::hash::BuildHasher;
    use std::sync::Mutex;
    const FIRST: u64 = 20_000;
    const SPAN: u64 = 12_000;
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let random = std::collections::hash_map::RandomState::new();
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    for n in 0u64.. {
        let port = (FIRST + random.hash_one(n) % SPAN) as u16;
        if given.insert(port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    unreachable!("the loop returns")
}

/// A `nats-server -js` of this test. Killed on drop.
pub struct NatsServer {
    binary: PathBuf,
    port: u16,
    /// JetStream storage and the server's log; kept across [`Self::stop`] / [`Self::start`].
    dir: TempDir,
    child: Option<Child>,
    starts: u32,
    /// More arguments for every start (TLS settings, say).
    extra_args: Vec<String>,
}

impl NatsServer {
    /// Starts a server on a free port ([`stable_port`]) and waits until it accepts clients.
    pub async fn spawn() -> NatsServer {
        NatsServer::spawn_with(&[]).await
    }

    /// [`Self::spawn`] with more command-line arguments (kept for restarts).
    pub async fn spawn_with(extra_args: &[&str]) -> NatsServer {
        let extra_args: Vec<String> = extra_args.iter().map(|a| a.to_string()).collect();
        let binary = nats_server_binary();
        let mut dir = temp_dir();
        const ATTEMPTS: u32 = 5;
        for attempt in 1..=ATTEMPTS {
            let mut server = NatsServer {
                binary: binary.clone(),
                port: stable_port(),
                dir,
                child: None,
                starts: 0,
                extra_args: extra_args.clone(),
            };
            match server.try_start().await {
                Ok(()) => return server,
                // Another process took the port between `stable_port` and the bind.
                Err(log) if attempt < ATTEMPTS && log.contains("address already in use") => {
                    dir = server.take_dir();
                }
                Err(log) => panic!("nats-server did not start; its log:\n{log}"),
            }
        }
        unreachable!("every attempt either returns or panics")
    }

    fn take_dir(mut self) -> TempDir {
        self.kill();
        // `self` is dropped without its dir: swap in a throwaway one.
        std::mem::replace(&mut self.dir, temp_dir())
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => child.try_wait().expect("waiting for nats-server").is_none(),
            None => false,
        }
    }

    fn store_dir(&self) -> PathBuf {
        self.dir.path().join("jetstream")
    }

    fn log_path(&self, start: u32) -> PathBuf {
        self.dir.path().join(format!("nats-server-{start}.log"))
    }

    /// Everything the server wrote, over all its starts.
    pub fn log(&self) -> String {
        (1..=self.starts)
            .map(|n| read(&self.log_path(n)))
            .collect::<Vec<_>>()
            .join("\n--- restarted ---\n")
    }

    /// Starts the server again, on the same port and JetStream storage, and waits until it
    /// accepts clients (the test fails if it does not).
    pub async fn start(&mut self) {
        assert!(!self.is_running(), "nats-server is already running");
        if let Err(log) = self.try_start().await {
            panic!(
                "nats-server did not start again on port {}; its log:\n{log}",
                self.port
            );
        }
    }

    async fn try_start(&mut self) -> Result<(), String> {
        self.starts += 1;
        let log_path = self.log_path(self.starts);
        let log = std::fs::File::create(&log_path).expect("creating the nats-server log");
        let child = Command::new(&self.binary)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.store_dir())
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning the log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", self.binary.display()));
        self.child = Some(child);
        let start = Instant::now();
        loop {
            if !self.is_running() {
                return Err(read(&log_path));
            }
            if accepts_clients(self.addr()).await {
                return Ok(());
            }
            if start.elapsed() > DEADLINE {
                self.kill();
                return Err(format!(
                    "(not accepting clients after {DEADLINE:?})\n{}",
                    read(&log_path)
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Stops the server (SIGTERM, then SIGKILL if it lingers) and waits until it is gone.
    pub async fn stop(&mut self) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        while child.try_wait().expect("waiting for nats-server").is_none() {
            if start.elapsed() > DEADLINE {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        self.child = None;
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- log of nats-server on {} ---\n{}\n--- end of log ---",
                self.port,
                self.log()
            );
        }
    }
}

/// Whether a NATS server answers on `addr` (a connection that gets the `INFO` banner).
async fn accepts_clients(addr: SocketAddr) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let mut banner = [0u8; 5];
        stream.read_exact(&mut banner).await.ok()?;
        Some(&banner == b"INFO ")
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), attempt).await,
        Ok(Some(true))
    )
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| format!("<cannot read {}: {e}>", path.display()))
}

// ---------------------------------------------------------------------------------------
// A TCP proxy that can be cut or stalled.

/// Forwards TCP connections from a port of its own to `target`. [`Self::cut`] drops every
/// proxied connection and refuses new ones (they are accepted and closed at once) until
/// [`Self::heal`]. [`Self::stall`] keeps every connection open but forwards no byte in
/// either direction (nor answers new connections) until [`Self::resume`]: a silent
/// black hole, as a stuck network path looks to both ends. Runs on the test's runtime;
/// stopped on drop.
pub struct TcpProxy {
    addr: SocketAddr,
    cut: Arc<watch::Sender<bool>>,
    stalled: Arc<watch::Sender<bool>>,
    accept: JoinHandle<()>,
}

impl TcpProxy {
    /// A proxy on a free port of 127.0.0.1 to `target`.
    pub async fn start(target: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the proxy's port");
        let addr = listener.local_addr().expect("the proxy's address");
        let cut = Arc::new(watch::Sender::new(false));
        let stalled = Arc::new(watch::Sender::new(false));
        let accept = tokio::spawn(accept_loop(listener, target, cut.clone(), stalled.clone()));
        TcpProxy {
            addr,
            cut,
            stalled,
            accept,
        }
    }

    /// `nats://<proxy>` (for a node's `--nats`).
    pub fn nats_url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// Drops every proxied connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Accepts and forwards connections again.
    pub fn heal(&self) {
        self.cut.send_replace(false);
    }

    /// Stops forwarding bytes either way, keeping every connection open (what is read
    /// already is held, not dropped); new connections wait unanswered.
    pub fn stall(&self) {
        self.stalled.send_replace(true);
    }

    /// Forwards bytes again on the connections kept through the stall.
    pub fn resume(&self) {
        self.stalled.send_replace(false);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
        // Ends every connection task.
        self.stalled.send_replace(false);
        self.cut.send_replace(true);
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    cut: Arc<watch::Sender<bool>>,
    stalled: Arc<watch::Sender<bool>>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        if *cut.borrow() {
            drop(client); // refused: closed at once
            continue;
        }
        let mut is_cut = cut.subscribe();
        let stalled = stalled.subscribe();
        tokio::spawn(async move {
            let proxied = async {
                // A connection made during a stall waits for it to end before reaching
                // the target: nothing answers it meanwhile.
                flowing(&mut stalled.clone()).await;
                let Ok(server) = TcpStream::connect(target).await else {
                    return;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::select! {
                    _ = pump(client_read, server_write, stalled.clone()) => {}
                    _ = pump(server_read, client_write, stalled.clone()) => {}
                }
            };
            tokio::select! {
                _ = proxied => {}
                _ = is_cut.wait_for(|cut| *cut) => {}
            }
            // Both sockets are closed here, whichever way it ended.
        });
    }
}

/// Returns once the proxy is not stalled.
async fn flowing(stalled: &mut watch::Receiver<bool>) {
    let _ = stalled.wait_for(|stalled| !*stalled).await;
}

/// Copies `from` to `to` until either end closes, reading nothing and writing nothing
/// while stalled (a chunk read just before a stall is held until it ends).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut stalled: watch::Receiver<bool>,
) {
    use tokio::io::AsyncWriteExt;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        flowing(&mut stalled).await;
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        flowing(&mut stalled).await;
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
