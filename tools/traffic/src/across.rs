//! One connection carried across a change (a destroy, a replace): both
//! ends write a checked stream while neither reads (the stalled reader, so
//! data queues at the receiver), the caller changes the deployment, then
//! both ends write more and read everything slowly, checking every byte of
//! both phases, in order, in both directions.

use anyhow::{Context, Result, bail};
use serde::Serialize;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::traffic::{fill, first_mismatch, lo_rx_bytes};

/// What the first phase did.
#[derive(Debug, Clone, Serialize)]
pub struct Queued {
    pub event: &'static str,
    pub port: u16,
    /// Bytes each end wrote while the other did not read.
    pub client_sent: u64,
    pub server_sent: u64,
    /// The first write error of each end (a denied port gives EACCES).
    pub client_error: Option<String>,
    pub server_error: Option<String>,
}

/// What the whole run saw.
#[derive(Debug, Clone, Serialize)]
pub struct Across {
    pub event: &'static str,
    pub client_sent: u64,
    pub server_sent: u64,
    pub client_received: u64,
    pub server_received: u64,
    /// The first write error of each end in the second phase.
    pub client_error: Option<String>,
    pub server_error: Option<String>,
    /// Bytes counted on `lo` during the second phase.
    pub lo_bytes_after: u64,
    /// Every byte of both phases arrived once, in order, unchanged, both ways.
    pub intact: bool,
    pub errors: Vec<String>,
}

/// How long the first phase may take: a write that blocks (plain TCP with a
/// stalled reader) counts what it wrote by then.
const PHASE: Duration = Duration::from_secs(3);

/// Bytes per write (`--write-size`): every message size takes the same
/// switching paths, from 1 byte to 1 MiB.
pub static WRITE_SIZE: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(16 * 1024);

/// Write `count` bytes of stream `seed` from `from`, counting into `sent`;
/// the first error ends it.
fn write_stream(
    s: &mut TcpStream,
    seed: u64,
    from: u64,
    count: u64,
    sent: &AtomicU64,
) -> Option<String> {
    let mut buf = vec![0u8; WRITE_SIZE.load(Ordering::Relaxed).max(1)];
    let mut pos = from;
    while pos < from + count {
        let n = buf.len().min((from + count - pos) as usize);
        fill(seed, pos, &mut buf[..n]);
        let mut chunk = &buf[..n];
        while !chunk.is_empty() {
            match s.write(chunk) {
                Ok(0) => return Some("wrote 0 bytes".into()),
                Ok(k) => {
                    chunk = &chunk[k..];
                    pos += k as u64;
                    sent.store(pos, Ordering::SeqCst);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(e) => return Some(e.to_string()),
            }
        }
    }
    None
}

/// Read until end of stream, slowly (small reads, a pause after each), and
/// check every byte against stream `seed`.
fn read_stream(mut s: TcpStream, seed: u64, pause: Duration) -> Result<u64> {
    let mut buf = vec![0u8; 4096];
    let mut pos = 0u64;
    loop {
        let n = match s.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted || e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            Err(e) => return Err(e).context("read"),
        };
        if n == 0 {
            return Ok(pos);
        }
        if let Some(i) = first_mismatch(seed, pos, &buf[..n]) {
            bail!(
                "byte {} differs from what was sent (lost, duplicated or reordered)",
                pos + i as u64
            );
        }
        pos += n as u64;
        if !pause.is_zero() && pos % (256 * 1024) < n as u64 {
            std::thread::sleep(pause);
        }
    }
}

/// One end's first phase, in a thread: write `count` bytes, report.
fn phase_one(
    s: &TcpStream,
    seed: u64,
    count: u64,
) -> Result<(Arc<AtomicU64>, std::thread::JoinHandle<Option<String>>)> {
    let sent = Arc::new(AtomicU64::new(0));
    let mut w = s.try_clone()?;
    let counter = sent.clone();
    let h = std::thread::spawn(move || write_stream(&mut w, seed, 0, count, &counter));
    Ok((sent, h))
}

/// Wait for a phase-one writer at most until `deadline`: its error, or
/// `None` when it is done or still blocked.
fn settle(
    h: std::thread::JoinHandle<Option<String>>,
    deadline: Instant,
) -> (
    Option<String>,
    Option<std::thread::JoinHandle<Option<String>>>,
) {
    while !h.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    if h.is_finished() {
        (h.join().unwrap_or(Some("writer panicked".into())), None)
    } else {
        (None, Some(h))
    }
}

/// Run it: `before` bytes each way unread, `until` (the change), then
/// `after` bytes each way, read slowly and checked.
pub fn across(
    port: u16,
    before: u64,
    after: u64,
    queued: impl FnOnce(&Queued),
    until: impl FnOnce(),
) -> Result<Across> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, port))
        .with_context(|| format!("binding 127.0.0.1:{port}"))?;
    let port = l.local_addr()?.port();
    let client = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    let (server, _) = l.accept()?;
    // Both ends are in the sockhash once accept returns (the sockops
    // callbacks ran); a moment more for the passive side.
    std::thread::sleep(Duration::from_millis(50));
    let (c_seed, s_seed) = (11, 12);
    let deadline = Instant::now() + PHASE;
    let (c_sent, c_w) = phase_one(&client, c_seed, before)?;
    let (s_sent, s_w) = phase_one(&server, s_seed, before)?;
    let (client_error, c_w) = settle(c_w, deadline);
    let (server_error, s_w) = settle(s_w, deadline);
    queued(&Queued {
        event: "queued",
        port,
        client_sent: c_sent.load(Ordering::SeqCst),
        server_sent: s_sent.load(Ordering::SeqCst),
        client_error: client_error.clone(),
        server_error: server_error.clone(),
    });
    until();
    let lo_before = lo_rx_bytes()?;
    // Slow readers from now on; each checks both phases' bytes in order.
    let pause = Duration::from_millis(2);
    let (c_r, s_r) = (client.try_clone()?, server.try_clone()?);
    let c_reader = std::thread::spawn(move || read_stream(c_r, s_seed, pause));
    let s_reader = std::thread::spawn(move || read_stream(s_r, c_seed, pause));
    let mut errors = Vec::new();
    let phase_two = |s: &TcpStream,
                     seed: u64,
                     sent: &Arc<AtomicU64>,
                     blocked: Option<std::thread::JoinHandle<Option<String>>>,
                     failed: &Option<String>|
     -> Option<String> {
        // A phase-one writer still blocked finishes once the reader reads.
        if let Some(h) = blocked
            && let Some(e) = h.join().unwrap_or(Some("writer panicked".into()))
        {
            return Some(e);
        }
        // Bytes a denied send dropped were never sent (`failed`): the stream
        // goes on from what was.
        let _ = failed;
        let mut w = match s.try_clone() {
            Ok(w) => w,
            Err(e) => return Some(e.to_string()),
        };
        let from = sent.load(Ordering::SeqCst);
        let e = write_stream(&mut w, seed, from, after, sent);
        let _ = w.shutdown(std::net::Shutdown::Write);
        e
    };
    let client_error2 = phase_two(&client, c_seed, &c_sent, c_w, &client_error);
    let server_error2 = phase_two(&server, s_seed, &s_sent, s_w, &server_error);
    let mut received = |h: std::thread::JoinHandle<Result<u64>>, who: &str| match h.join() {
        Ok(Ok(n)) => n,
        Ok(Err(e)) => {
            errors.push(format!("{who}: {e:#}"));
            0
        }
        Err(_) => {
            errors.push(format!("{who}: reader panicked"));
            0
        }
    };
    let client_received = received(c_reader, "client");
    let server_received = received(s_reader, "server");
    let (client_sent, server_sent) = (c_sent.load(Ordering::SeqCst), s_sent.load(Ordering::SeqCst));
    if server_received != client_sent {
        errors.push(format!(
            "the client sent {client_sent} bytes, the server read {server_received}"
        ));
    }
    if client_received != server_sent {
        errors.push(format!(
            "the server sent {server_sent} bytes, the client read {client_received}"
        ));
    }
    Ok(Across {
        event: "done",
        client_sent,
        server_sent,
        client_received,
        server_received,
        client_error: client_error2,
        server_error: server_error2,
        lo_bytes_after: lo_rx_bytes()?.saturating_sub(lo_before),
        intact: errors.is_empty(),
        errors,
    })
}

/// What one message on a held connection met.
#[derive(Debug, Clone, Serialize)]
pub struct Said {
    pub event: &'static str,
    /// The error `send()` returned, if any (a policy drop gives EACCES).
    pub send_error: Option<String>,
    /// Bytes the server received within the wait.
    pub received: usize,
    /// Bytes counted on `lo` meanwhile.
    pub lo_bytes: u64,
}

/// Hold one connection to our own server on 127.0.0.1:`port` and, for each
/// line `next` gives, send `size` bytes on it and see what the server gets.
pub fn talk(
    port: u16,
    size: usize,
    ready: impl FnOnce(u16),
    mut next: impl FnMut() -> bool,
    mut said: impl FnMut(&Said),
) -> Result<()> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, port))
        .with_context(|| format!("binding 127.0.0.1:{port}"))?;
    let port = l.local_addr()?.port();
    let mut c = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    let (mut s, _) = l.accept()?;
    s.set_read_timeout(Some(Duration::from_millis(50)))?;
    ready(port);
    let msg = vec![0x5au8; size];
    let mut buf = vec![0u8; size.max(1)];
    while next() {
        let lo = lo_rx_bytes()?;
        let send_error = c.write_all(&msg).err().map(|e| e.to_string());
        let mut received = 0;
        let deadline = Instant::now() + Duration::from_millis(500);
        while received < size && Instant::now() < deadline {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => received += n,
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::Interrupted | ErrorKind::WouldBlock | ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e.into()),
            }
        }
        said(&Said {
            event: "said",
            send_error,
            received,
            lo_bytes: lo_rx_bytes()?.saturating_sub(lo),
        });
    }
    Ok(())
}
