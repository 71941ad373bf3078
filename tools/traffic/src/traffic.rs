//! Same-host TCP traffic for tests, the demo and benchmarks: streams of
//! pseudo-random bytes checked byte for byte, echo, request/response
//! latency, all inside a cgroup of the caller's choosing, with the bytes that
//! crossed `lo` counted from `/proc/net/dev`.

use anyhow::{Context, Result, bail};
use serde::Serialize;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

/// Move this whole process into a cgroup v2 directory, before any socket is
/// made: a socket belongs to the cgroup of the task that created it.
pub fn join_cgroup(cgroup: &Path) -> Result<()> {
    std::fs::write(cgroup.join("cgroup.procs"), std::process::id().to_string())
        .with_context(|| format!("moving process into cgroup {}", cgroup.display()))
}

/// Bytes received on `lo` so far (loopback counts each byte once per side).
pub fn lo_rx_bytes() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/net/dev").context("reading /proc/net/dev")?;
    for line in text.lines() {
        if let Some((name, rest)) = line.split_once(':')
            && name.trim() == "lo"
        {
            return rest
                .split_whitespace()
                .next()
                .context("no rx bytes for lo")?
                .parse()
                .context("parsing lo rx bytes");
        }
    }
    bail!("no `lo` in /proc/net/dev")
}

/// The byte at `pos` of the pseudo-random stream `seed`; any chunking of a
/// stream gives the same bytes, so a receiver can check every one.
fn pattern_word(seed: u64, word: u64) -> u64 {
    // splitmix64
    let mut z = seed
        .wrapping_add(word.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub fn fill(seed: u64, pos: u64, buf: &mut [u8]) {
    let mut i = 0;
    // Unaligned head, byte by byte; then whole words; then the tail.
    while i < buf.len() && !(pos + i as u64).is_multiple_of(8) {
        let p = pos + i as u64;
        buf[i] = (pattern_word(seed, p / 8) >> ((p % 8) * 8)) as u8;
        i += 1;
    }
    let mut word = (pos + i as u64) / 8;
    let mut chunks = buf[i..].chunks_exact_mut(8);
    for c in &mut chunks {
        c.copy_from_slice(&pattern_word(seed, word).to_le_bytes());
        word += 1;
    }
    let tail = chunks.into_remainder();
    let w = pattern_word(seed, word).to_le_bytes();
    let n = tail.len();
    tail.copy_from_slice(&w[..n]);
}

/// Index of the first byte of `buf` that differs from the stream at `pos`.
pub fn first_mismatch(seed: u64, pos: u64, buf: &[u8]) -> Option<usize> {
    let mut expected = vec![0u8; buf.len()];
    fill(seed, pos, &mut expected);
    if expected == buf {
        return None;
    }
    buf.iter().zip(&expected).position(|(a, b)| a != b)
}

/// Blocking read that retries the spurious EAGAIN a socket with an sk_msg
/// redirect can return (tcp_bpf_recvmsg gives up after one wake-up).
fn read_retry(s: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match s.read(buf) {
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                std::thread::yield_now();
            }
            r => return r,
        }
    }
}

fn write_all_retry(s: &mut impl Write, mut buf: &[u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        match s.write(buf) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                std::thread::yield_now();
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn read_exact_retry(s: &mut impl Read, mut buf: &mut [u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        let n = read_retry(s, buf)?;
        if n == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        buf = &mut buf[n..];
    }
    Ok(())
}

const CHUNK: usize = 64 * 1024;

/// What a stream run saw.
#[derive(Debug, Clone, Serialize)]
pub struct StreamReport {
    pub conns: usize,
    /// Bytes each connection sent (and, with echo, received back).
    pub bytes_per_conn: u64,
    /// All payload bytes that crossed a socket, both directions.
    pub payload_bytes: u64,
    /// Bytes counted on `lo` during the run.
    pub lo_bytes: u64,
    /// Every byte arrived, in order, unchanged.
    pub intact: bool,
    pub errors: Vec<String>,
    pub seconds: f64,
}

/// How long a stream lasts: a byte count, or a time (for destroy-while-streaming).
#[derive(Debug, Clone, Copy)]
pub enum Length {
    Bytes(u64),
    Seconds(f64),
}

/// Listen on loopback; the caller's cgroup applies to the accepted sockets.
fn listen() -> Result<(TcpListener, SocketAddr)> {
    listen_on(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

fn listen_on(ip: IpAddr) -> Result<(TcpListener, SocketAddr)> {
    listen_at(ip, 0)
}

/// Listen on `ip:port` (0: any free port).
fn listen_at(ip: IpAddr, port: u16) -> Result<(TcpListener, SocketAddr)> {
    let l = TcpListener::bind((ip, port)).with_context(|| format!("binding {ip}:{port}"))?;
    let addr = l.local_addr()?;
    Ok((l, addr))
}

/// `conns` connections each send a checked pseudo-random stream; with
/// `echo` the server sends it back and the client checks it too. `on_flowing`
/// runs once every connection has moved data.
pub fn stream(
    conns: usize,
    length: Length,
    echo: bool,
    on_flowing: impl FnOnce(),
) -> Result<StreamReport> {
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    stream_at(lo, lo, 0, conns, length, echo, on_flowing)
}

/// `stream`, with the server bound to `bind` and clients dialing `connect`
/// (`::` and `::ffff:127.0.0.1` make a dual-stack, IPv4-mapped connection).
pub fn stream_at(
    bind: IpAddr,
    connect: IpAddr,
    port: u16,
    conns: usize,
    length: Length,
    echo: bool,
    on_flowing: impl FnOnce(),
) -> Result<StreamReport> {
    if let Length::Seconds(s) = length {
        check_seconds(s)?;
    }
    let (listener, bound) = listen_at(bind, port)?;
    let addr = SocketAddr::new(connect, bound.port());
    let lo_before = lo_rx_bytes()?;
    let start = Instant::now();
    let deadline = match length {
        Length::Seconds(s) => Some(start + Duration::from_secs_f64(s)),
        Length::Bytes(_) => None,
    };
    let limit = match length {
        Length::Bytes(b) => b,
        Length::Seconds(_) => u64::MAX,
    };

    let server = std::thread::spawn(move || -> Vec<Result<u64>> {
        let mut handles = Vec::new();
        for i in 0..conns {
            let (s, _) = match listener.accept() {
                Ok(x) => x,
                Err(e) => return vec![Err(e.into())],
            };
            handles.push(std::thread::spawn(move || serve(s, i as u64, echo)));
        }
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("server thread panicked")))
            })
            .collect()
    });

    let (flow_tx, flow_rx) = std::sync::mpsc::channel::<()>();
    let mut clients = Vec::new();
    for i in 0..conns {
        let s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
        let tx = flow_tx.clone();
        clients.push(std::thread::spawn(move || {
            client(s, i as u64, limit, deadline, echo, tx)
        }));
    }
    drop(flow_tx);
    for _ in 0..conns {
        if flow_rx.recv().is_err() {
            break;
        }
    }
    on_flowing();

    let mut errors = Vec::new();
    let mut sent_total = 0u64;
    for (i, c) in clients.into_iter().enumerate() {
        match c.join() {
            Ok(Ok(sent)) => sent_total += sent,
            Ok(Err(e)) => errors.push(format!("client {i}: {e:#}")),
            Err(_) => errors.push(format!("client {i}: panicked")),
        }
    }
    let served = server
        .join()
        .unwrap_or_else(|_| vec![Err(anyhow::anyhow!("server panicked"))]);
    let mut received_total = 0u64;
    for (i, r) in served.into_iter().enumerate() {
        match r {
            Ok(n) => received_total += n,
            Err(e) => errors.push(format!("server {i}: {e:#}")),
        }
    }
    if errors.is_empty() && received_total != sent_total {
        errors.push(format!(
            "sent {sent_total} bytes, the server got {received_total}"
        ));
    }
    let seconds = start.elapsed().as_secs_f64();
    let lo_bytes = lo_rx_bytes()?.saturating_sub(lo_before);
    Ok(StreamReport {
        conns,
        bytes_per_conn: if conns > 0 {
            sent_total / conns as u64
        } else {
            0
        },
        payload_bytes: sent_total * if echo { 2 } else { 1 },
        lo_bytes,
        intact: errors.is_empty(),
        errors,
        seconds,
    })
}

/// Server side: check every byte against the stream, echo it if asked.
/// The byte a stream server sends first. By the time `accept` returns, both
/// ends of the connection have been through the sockops callbacks, so a
/// client that waits for this byte never races its own first message past a
/// sockhash that does not hold the peer yet (which would send it over TCP).
const READY: u8 = 0x06;

fn serve(mut s: TcpStream, seed: u64, echo: bool) -> Result<u64> {
    write_all_retry(&mut s, &[READY]).context("server ready")?;
    let mut buf = vec![0u8; CHUNK];
    let mut pos = 0u64;
    loop {
        let n = read_retry(&mut s, &mut buf).context("server read")?;
        if n == 0 {
            return Ok(pos);
        }
        if let Some(i) = first_mismatch(seed, pos, &buf[..n]) {
            bail!("server: byte {} differs from what was sent", pos + i as u64);
        }
        if echo {
            write_all_retry(&mut s, &buf[..n]).context("server echo")?;
        }
        pos += n as u64;
    }
}

/// Client side: send the stream (from a second thread when echoing, so
/// neither side blocks on full buffers) and check the echo.
fn client(
    s: TcpStream,
    seed: u64,
    limit: u64,
    deadline: Option<Instant>,
    echo: bool,
    flowing: std::sync::mpsc::Sender<()>,
) -> Result<u64> {
    s.set_nodelay(true)?;
    let mut s = s;
    let mut ready = [0u8; 1];
    read_exact_retry(&mut s, &mut ready).context("waiting for the server")?;
    if ready[0] != READY {
        bail!(
            "the server's first byte is {:#x}, not the ready byte",
            ready[0]
        );
    }
    let mut w = s.try_clone()?;
    let writer = std::thread::spawn(move || -> Result<u64> {
        let mut buf = vec![0u8; CHUNK];
        let mut pos = 0u64;
        let mut told = false;
        while pos < limit && deadline.is_none_or(|d| Instant::now() < d) {
            let n = CHUNK.min((limit - pos) as usize);
            fill(seed, pos, &mut buf[..n]);
            if let Err(e) = write_all_retry(&mut w, &buf[..n]) {
                // The reader must not wait for an echo that cannot come: a
                // failed write (ENOMEM under TCP memory pressure, say) ends
                // the connection both ways, so the run fails instead of
                // hanging.
                let _ = w.shutdown(std::net::Shutdown::Both);
                return Err(e).context("client write");
            }
            pos += n as u64;
            if !told {
                let _ = flowing.send(());
                told = true;
            }
        }
        if !told {
            let _ = flowing.send(());
        }
        w.shutdown(std::net::Shutdown::Write)?;
        Ok(pos)
    });
    let mut r = s;
    let mut echoed = 0u64;
    if echo {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = read_retry(&mut r, &mut buf).context("client read")?;
            if n == 0 {
                break;
            }
            if let Some(i) = first_mismatch(seed, echoed, &buf[..n]) {
                bail!(
                    "client: echoed byte {} differs from what was sent",
                    echoed + i as u64
                );
            }
            echoed += n as u64;
        }
    }
    let sent = writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer thread panicked"))??;
    if echo && echoed != sent {
        bail!("sent {sent} bytes but {echoed} came back");
    }
    Ok(sent)
}

/// Open one connection and keep it until `until` returns; reports the ports.
/// With `to`, dial that server (in another network namespace, say) instead
/// of one of our own.
pub fn hold(bind: IpAddr, to: Option<SocketAddr>, until: impl FnOnce(u16, u16)) -> Result<()> {
    if let Some(to) = to {
        let c = TcpStream::connect(to).with_context(|| format!("connecting to {to}"))?;
        until(to.port(), c.local_addr()?.port());
        drop(c);
        return Ok(());
    }
    let (listener, addr) = listen_on(bind)?;
    let c = TcpStream::connect(addr)?;
    let (s, peer) = listener.accept()?;
    until(addr.port(), peer.port());
    drop((c, s));
    Ok(())
}

/// Accept connections on `bind` and echo each one (or, with `sink`, discard
/// what it sends) until it closes; runs until `ready` returns (it gets the
/// port).
pub fn echo_server(bind: SocketAddr, sink: bool, ready: impl FnOnce(u16)) -> Result<()> {
    let l = TcpListener::bind(bind).with_context(|| format!("binding {bind}"))?;
    let port = l.local_addr()?.port();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let mut buf = vec![0u8; CHUNK];
                while let Ok(n) = read_retry(&mut s, &mut buf) {
                    if n == 0 || (!sink && write_all_retry(&mut s, &buf[..n]).is_err()) {
                        break;
                    }
                }
            });
        }
    });
    ready(port);
    Ok(())
}

/// What one message to a given port met.
#[derive(Debug, Clone, Serialize)]
pub struct SendOnce {
    pub port: u16,
    /// The error `send()` returned, if any (a policy drop gives EACCES).
    pub send_error: Option<String>,
    /// Bytes the server received within the wait.
    pub received: usize,
}

/// Listen on 127.0.0.1:`port`, connect, send `size` bytes once, and see what
/// the server gets within `wait`.
pub fn send_once(port: u16, size: usize, wait: Duration) -> Result<SendOnce> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, port))
        .with_context(|| format!("binding 127.0.0.1:{port}"))?;
    let mut c = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    let (mut s, _) = l.accept()?;
    let msg = vec![0x42u8; size];
    let send_error = c.write_all(&msg).err().map(|e| e.to_string());
    s.set_read_timeout(Some(wait))?;
    let mut received = 0;
    let mut buf = vec![0u8; size.max(1)];
    let deadline = Instant::now() + wait;
    while received < size && Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => received += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // A timeout, or EAGAIN from the redirect path: look again until
            // the deadline.
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(SendOnce {
        port,
        send_error,
        received,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_chunking_independent() {
        let mut whole = vec![0u8; 100];
        fill(3, 0, &mut whole);
        for cut in [1, 7, 8, 9, 13, 64, 99] {
            let mut parts = vec![0u8; 100];
            fill(3, 0, &mut parts[..cut]);
            fill(3, cut as u64, &mut parts[cut..]);
            assert_eq!(whole, parts, "cut at {cut}");
        }
        assert_eq!(first_mismatch(3, 0, &whole), None);
        whole[42] ^= 1;
        assert_eq!(first_mismatch(3, 0, &whole), Some(42));
        let mut other = vec![0u8; 100];
        fill(4, 0, &mut other);
        assert_ne!(whole, other);
    }
}

/// The socket kind a benchmark workload runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// TCP over 127.0.0.1 with TCP_NODELAY.
    Tcp,
    /// A Unix domain stream socket: the floor for same-host stream sockets.
    Unix,
}

/// What a benchmark workload measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Workload {
    /// Request/response round trips of SIZE bytes each way.
    Rr,
    /// One-way stream of SIZE-byte writes.
    Stream,
    /// Connect, one 64-byte exchange, close.
    Connect,
}

/// One measurement of one workload.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Measurement {
    /// p50 round trip (rr), bytes per second (stream) or connections per
    /// second (connect).
    pub value: f64,
    /// p99 round trip, for rr.
    pub p99: Option<f64>,
    pub unit: String,
}

trait Conn: Read + Write + Send + std::os::fd::AsRawFd + 'static {}
impl Conn for TcpStream {}
impl Conn for std::os::unix::net::UnixStream {}

/// A listening endpoint of either transport, and a way to dial it.
enum Endpoint {
    Tcp(TcpListener, SocketAddr),
    /// The temporary directory lives as long as the socket file in it.
    Unix(
        std::os::unix::net::UnixListener,
        std::path::PathBuf,
        #[allow(dead_code)] tempfile::TempDir,
    ),
}

impl Endpoint {
    fn new(t: Transport) -> Result<Endpoint> {
        Ok(match t {
            Transport::Tcp => {
                let (l, a) = listen()?;
                Endpoint::Tcp(l, a)
            }
            Transport::Unix => {
                let dir = tempfile::tempdir()?;
                let path = dir.path().join("s");
                let l = std::os::unix::net::UnixListener::bind(&path)?;
                Endpoint::Unix(l, path, dir)
            }
        })
    }

    fn dialer(&self) -> Dialer {
        match self {
            Endpoint::Tcp(_, a) => Dialer::Tcp(*a),
            Endpoint::Unix(_, p, _) => Dialer::Unix(p.clone()),
        }
    }

    fn accept(&self) -> Result<Box<dyn ConnObj>> {
        Ok(match self {
            Endpoint::Tcp(l, _) => {
                let (s, _) = l.accept()?;
                s.set_nodelay(true)?;
                Box::new(s)
            }
            Endpoint::Unix(l, _, _) => Box::new(l.accept()?.0),
        })
    }
}

#[derive(Clone)]
enum Dialer {
    Tcp(SocketAddr),
    Unix(std::path::PathBuf),
}

impl Dialer {
    fn dial(&self) -> Result<Box<dyn ConnObj>> {
        Ok(match self {
            Dialer::Tcp(a) => {
                let s = TcpStream::connect(a)?;
                s.set_nodelay(true)?;
                Box::new(s)
            }
            Dialer::Unix(p) => Box::new(std::os::unix::net::UnixStream::connect(p)?),
        })
    }
}

/// A connection of either transport, as a trait object.
trait ConnObj: Read + Write + Send {
    fn fd(&self) -> std::os::fd::RawFd;
}
impl<T: Conn> ConnObj for T {
    fn fd(&self) -> std::os::fd::RawFd {
        self.as_raw_fd()
    }
}

/// How a stream's receiver reads: the knobs the stream-loss experiments
/// turn (scripts/stream-experiments.sh).
#[derive(Debug, Clone, Copy)]
pub struct Receiver {
    /// Bytes per read.
    pub read_size: usize,
    /// SO_RCVLOWAT: wake the reader only when this much is queued.
    pub rcvlowat: Option<usize>,
    /// SO_RCVBUF.
    pub rcvbuf: Option<usize>,
}

impl Default for Receiver {
    fn default() -> Self {
        Receiver {
            // 64 KiB reads, as applications commonly do. The read size
            // matters to the bypass: tcp_bpf_recvmsg holds the socket lock
            // for a whole read, and the sender needs that lock to queue each
            // message, so very large reads stall the sender (see README).
            read_size: 64 * 1024,
            rcvlowat: None,
            rcvbuf: None,
        }
    }
}

fn set_int_opt(fd: std::os::fd::RawFd, opt: libc::c_int, v: usize) -> Result<()> {
    let v = libc::c_int::try_from(v).context("socket option out of range")?;
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from `&v`, alive
    // for the call; `fd` is an open socket of ours.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("setsockopt");
    }
    Ok(())
}

/// Run one benchmark workload for about `seconds` (rr: `count` round trips).
pub fn measure(
    t: Transport,
    workload: Workload,
    size: usize,
    seconds: f64,
    count: usize,
    remote: Option<SocketAddr>,
    receiver: Receiver,
) -> Result<Measurement> {
    if size == 0 || count == 0 {
        bail!("--size and --count must be at least 1");
    }
    if workload != Workload::Rr {
        check_seconds(seconds)?;
    }
    if let (Workload::Stream, Some(to)) = (workload, remote) {
        return remote_stream(to, size, seconds);
    }
    let ep = Endpoint::new(t)?;
    match workload {
        Workload::Rr => measure_rr(ep, size, count),
        Workload::Stream => measure_stream(ep, size, seconds, receiver),
        Workload::Connect => measure_connect(ep, seconds),
    }
}

/// Round trips of SIZE bytes: p50 and p99 in microseconds.
fn measure_rr(ep: Endpoint, size: usize, count: usize) -> Result<Measurement> {
    let dialer = ep.dialer();
    let server = std::thread::spawn(move || -> Result<()> {
        let mut s = ep.accept()?;
        let mut buf = vec![0u8; size];
        loop {
            match read_exact_retry(&mut s, &mut buf) {
                Ok(()) => write_all_retry(&mut s, &buf)?,
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
    });
    let mut c = dialer.dial()?;
    let req = vec![0x5a_u8; size];
    let mut resp = vec![0u8; size];
    let warmup = (count / 10).max(10);
    let mut samples = Vec::with_capacity(count);
    for i in 0..warmup + count {
        let t0 = Instant::now();
        write_all_retry(&mut c, &req)?;
        read_exact_retry(&mut c, &mut resp)?;
        if i >= warmup {
            samples.push(t0.elapsed().as_secs_f64() * 1e6);
        }
    }
    drop(c);
    server
        .join()
        .map_err(|_| anyhow::anyhow!("server panicked"))??;
    samples.sort_by(f64::total_cmp);
    let pct = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize];
    Ok(Measurement {
        value: pct(0.5),
        p99: Some(pct(0.99)),
        unit: "us".into(),
    })
}

/// One-way throughput of SIZE-byte writes for SECONDS.
fn measure_stream(
    ep: Endpoint,
    size: usize,
    seconds: f64,
    receiver: Receiver,
) -> Result<Measurement> {
    let dialer = ep.dialer();
    let server = std::thread::spawn(move || -> Result<u64> {
        let mut s = ep.accept()?;
        if let Some(v) = receiver.rcvlowat {
            set_int_opt(s.fd(), libc::SO_RCVLOWAT, v)?;
        }
        if let Some(v) = receiver.rcvbuf {
            set_int_opt(s.fd(), libc::SO_RCVBUF, v)?;
        }
        let mut buf = vec![0u8; receiver.read_size.max(1)];
        let mut total = 0u64;
        loop {
            match s.read(&mut buf) {
                Ok(0) => return Ok(total),
                Ok(n) => total += n as u64,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
                Err(e) => return Err(e.into()),
            }
        }
    });
    let mut c = dialer.dial()?;
    let (sent, secs) = write_for(&mut c, size, seconds)?;
    drop(c);
    let got = server
        .join()
        .map_err(|_| anyhow::anyhow!("server panicked"))??;
    if got != sent {
        bail!("sent {sent} bytes, received {got}");
    }
    Ok(Measurement {
        value: got as f64 / secs,
        p99: None,
        unit: "B/s".into(),
    })
}

/// Connect, one 64-byte exchange, close, for SECONDS: connections per second.
fn measure_connect(ep: Endpoint, seconds: f64) -> Result<Measurement> {
    let dialer = ep.dialer();
    let server = std::thread::spawn(move || -> Result<u64> {
        let mut n = 0u64;
        let mut buf = [0u8; 64];
        loop {
            let mut s = ep.accept()?;
            match read_exact_retry(&mut s, &mut buf) {
                Ok(()) => write_all_retry(&mut s, &buf)?,
                // The client's final, empty connection says stop.
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(n),
                Err(e) => return Err(e.into()),
            }
            n += 1;
        }
    });
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(seconds);
    let mut done = 0u64;
    let msg = [1u8; 64];
    let mut back = [0u8; 64];
    while Instant::now() < end {
        let mut c = dialer.dial()?;
        write_all_retry(&mut c, &msg)?;
        read_exact_retry(&mut c, &mut back)?;
        done += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    drop(dialer.dial()?);
    let served = server
        .join()
        .map_err(|_| anyhow::anyhow!("server panicked"))??;
    if served != done {
        bail!("made {done} exchanges, the server saw {served}");
    }
    Ok(Measurement {
        value: done as f64 / secs,
        p99: None,
        unit: "conn/s".into(),
    })
}

/// Write SIZE-byte chunks for SECONDS to a `listen --sink` server elsewhere
/// (in another network namespace, say); the figure is what was written.
fn remote_stream(to: SocketAddr, size: usize, seconds: f64) -> Result<Measurement> {
    let mut c = TcpStream::connect(to).with_context(|| format!("connecting to {to}"))?;
    c.set_nodelay(true)?;
    let (sent, secs) = write_for(&mut c, size, seconds)?;
    Ok(Measurement {
        value: sent as f64 / secs,
        p99: None,
        unit: "B/s".into(),
    })
}

/// Write SIZE-byte chunks for about SECONDS; the bytes written and the time.
fn write_for(c: &mut impl Write, size: usize, seconds: f64) -> Result<(u64, f64)> {
    let buf = vec![0xa5_u8; size];
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(seconds);
    let mut sent = 0u64;
    while Instant::now() < end {
        for _ in 0..64 {
            write_all_retry(c, &buf)?;
        }
        sent += 64 * size as u64;
    }
    Ok((sent, start.elapsed().as_secs_f64()))
}

/// A duration in seconds a run can last: positive, finite, under a day.
fn check_seconds(s: f64) -> Result<()> {
    if !(s > 0.0 && s < 86_400.0) {
        bail!("seconds must be positive and under a day, not {s}");
    }
    Ok(())
}
