//! The accept loop out of file descriptors: it must back off, not spin a core, and
//! admit connections again once descriptors are free. Its own test binary (one
//! process), so lowering RLIMIT_NOFILE here affects no other test.

use std::fs::File;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use snakepit_core::net::{incoming, raise_fd_limit, ConnCounter, ConnLimits};
use tokio::io::AsyncReadExt;

#[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every target
fn nofile() -> (u64, u64) {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    (lim.rlim_cur as u64, lim.rlim_max as u64)
}

fn set_soft_nofile(soft: u64) {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    lim.rlim_cur = soft as libc::rlim_t;
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0, "{}", std::io::Error::last_os_error());
}

/// User + system CPU time of the whole process (all threads).
fn cpu_time() -> Duration {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) }, 0);
    let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn is_emfile(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::EMFILE)
}

fn wait_open(counter: &ConnCounter, n: usize, within: Duration) {
    let t = Instant::now();
    while counter.open() != n {
        assert!(t.elapsed() < within, "open() stayed {} (want {n})", counter.open());
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn exhausted_descriptors_back_off_then_recover() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = ConnLimits { max_connections: 10_000, handshake_timeout: Duration::from_secs(60), idle_timeout: None };
    let (stream, counter) = incoming(listener, limits);
    // Like hyper: one task per connection, reading until EOF or error.
    runtime.spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(conn) = stream.next().await {
            let mut conn = conn.expect("incoming yields no errors");
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while let Ok(n) = conn.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    });

    let (soft, hard) = nofile();
    set_soft_nofile(64);

    // A few admitted connections, then every descriptor left filled with files.
    // (Clients are not used to fill: their ends would hold the descriptors the server needs.)
    let mut clients: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
    wait_open(&counter, 3, Duration::from_secs(2));
    let mut fillers = Vec::new();
    loop {
        match File::open("/dev/null") {
            Ok(f) => fillers.push(f),
            Err(e) if is_emfile(&e) => break,
            Err(e) => panic!("open: {e}"),
        }
        assert!(fillers.len() < 64, "never ran out of descriptors");
    }
    // The last free descriptor goes to one more client: its connection then waits in
    // the backlog and accept fails with EMFILE; without backoff the accept loop would
    // retry it as fast as it can.
    fillers.pop();
    clients.push(TcpStream::connect(addr).expect("connect with one descriptor free"));
    assert!(File::open("/dev/null").is_err_and(|e| is_emfile(&e)), "not exhausted");

    let cpu0 = cpu_time();
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_time() - cpu0;
    assert_eq!(counter.open(), 3, "accepted with no descriptor free?");
    assert!(used < Duration::from_millis(250), "accept loop spun while out of descriptors: {used:?} CPU in 1 s");

    // Free descriptors: the waiting connection is admitted after the backoff, and a new one too.
    drop(fillers);
    wait_open(&counter, 4, Duration::from_secs(3));
    let fresh = TcpStream::connect(addr).unwrap();
    wait_open(&counter, 5, Duration::from_secs(1));
    fresh.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut buf = [0u8; 1];
    let err = std::io::Read::read(&mut &fresh, &mut buf).unwrap_err();
    assert!(matches!(err.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut), "closed: {err}");

    drop((fresh, clients));
    wait_open(&counter, 0, Duration::from_secs(2));

    // raise_fd_limit: back up to the hard limit, never past it, and never down.
    let (old, new) = raise_fd_limit().unwrap();
    assert_eq!(old, 64);
    assert!(new >= old && new <= hard, "raised to {new} (hard {hard})");
    assert_eq!(nofile().0, new);
    let (old2, new2) = raise_fd_limit().unwrap();
    assert_eq!((old2, new2), (new, new), "a second call changes nothing");
    assert!(new >= soft.min(hard), "ended below the starting soft limit {soft}");
    runtime.shutdown_timeout(Duration::from_secs(1));
}
