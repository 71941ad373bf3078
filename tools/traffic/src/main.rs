//! Same-host TCP traffic for bpfplan's tests, demo and benchmarks. Joins a
//! cgroup first (so its sockets are the cgroup's), then prints one JSON line
//! per event and one with the result.

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

mod across;
mod compat;
mod traffic;

use traffic::{Length, Transport, Workload};

#[derive(Parser)]
#[command(
    name = "bpfplan-traffic",
    about = "Checked same-host TCP traffic on 127.0.0.1"
)]
struct Cli {
    /// Join this cgroup v2 directory before making any socket.
    #[arg(long, global = true)]
    cgroup: Option<PathBuf>,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Send BYTES per connection, checked byte for byte.
    Stream {
        #[arg(long, default_value_t = 1)]
        conns: usize,
        #[arg(long)]
        bytes: u64,
        /// The server sends everything back; the client checks it too.
        #[arg(long)]
        echo: bool,
        /// The address the server binds (`::1` for IPv6, `::` for dual-stack).
        #[arg(long, default_value = "127.0.0.1")]
        bind: IpAddr,
        /// The address clients dial (default: the bound one), e.g.
        /// `::ffff:127.0.0.1` for an IPv4-mapped connection.
        #[arg(long)]
        connect: Option<IpAddr>,
        /// The server's port (default: any free one).
        #[arg(long, default_value_t = 0)]
        port: u16,
    },
    /// Stream for SECONDS; prints `flowing` once every connection moves data.
    Flow {
        #[arg(long, default_value_t = 1)]
        conns: usize,
        #[arg(long)]
        seconds: f64,
        #[arg(long)]
        echo: bool,
    },
    /// Round-trip latency of SIZE-byte requests and responses.
    Rr {
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long, default_value_t = 10000)]
        count: usize,
    },
    /// One connection carried across a change: both ends write BEFORE
    /// bytes unread (prints `queued`), then wait for a line on stdin (the
    /// change), then write AFTER bytes more while both read slowly; prints
    /// `done` with whether every byte of both phases arrived in order.
    Across {
        /// The server's port on 127.0.0.1 (0: any free one).
        #[arg(long, default_value_t = 0)]
        port: u16,
        #[arg(long, default_value_t = 8 << 20)]
        before: u64,
        #[arg(long, default_value_t = 8 << 20)]
        after: u64,
        /// Bytes per write, 1 to 16 MiB.
        #[arg(long, default_value_t = 16 * 1024)]
        write_size: usize,
    },
    /// Hold one connection to our own server on 127.0.0.1:PORT; for each
    /// line on stdin, send SIZE bytes on it and print what the server got.
    Talk {
        #[arg(long, default_value_t = 0)]
        port: u16,
        #[arg(long, default_value_t = 1024)]
        size: usize,
    },
    /// Try socket semantics applications rely on (MSG_OOB, MSG_WAITALL,
    /// SO_RCVLOWAT, EINTR, splice, TCP_INFO, half-close, MSG_PEEK,
    /// FIONREAD), each on a fresh connection; print what each receiver saw.
    Compat,
    /// Keep one connection open until stdin closes; prints its ports.
    Hold {
        /// The address our own server binds.
        #[arg(long, default_value = "127.0.0.1")]
        bind: IpAddr,
        /// Dial this server instead of one of our own.
        #[arg(long)]
        connect: Option<SocketAddr>,
    },
    /// Echo server on ADDR until stdin closes; prints its port.
    Listen {
        #[arg(long)]
        bind: SocketAddr,
        /// Discard what clients send instead of echoing it.
        #[arg(long)]
        sink: bool,
    },
    /// Send one message to a server on 127.0.0.1:PORT; report the send
    /// error, if any, and what the server received.
    SendOnce {
        #[arg(long)]
        port: u16,
        #[arg(long, default_value_t = 1024)]
        size: usize,
        /// How long the server waits for the message, in milliseconds.
        #[arg(long, default_value_t = 300)]
        wait_ms: u64,
    },
    /// One benchmark measurement (see `bpfplan bench`).
    Measure {
        #[arg(long, value_enum)]
        transport: traffic::Transport,
        #[arg(long, value_enum)]
        workload: traffic::Workload,
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long, default_value_t = 0.5)]
        seconds: f64,
        #[arg(long, default_value_t = 5000)]
        count: usize,
        /// stream only: write to this `listen --sink` server instead.
        #[arg(long)]
        connect: Option<SocketAddr>,
        /// stream only: the receiver's bytes per read.
        #[arg(long, default_value_t = 65536)]
        read_size: usize,
        /// stream only: the receiver's SO_RCVLOWAT.
        #[arg(long)]
        rcvlowat: Option<usize>,
        /// stream only: the receiver's SO_RCVBUF.
        #[arg(long)]
        rcvbuf: Option<usize>,
    },
    /// One row for the demo: bytes on `lo` for a 64 MiB stream, and the
    /// round-trip latency of 64-byte requests.
    Compare {
        /// The row's label.
        #[arg(long)]
        label: String,
        /// Print the table header first.
        #[arg(long)]
        header: bool,
    },
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn wait_for_stdin_eof() {
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
}

fn event(json: serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{json}");
    let _ = out.flush();
}

/// One line of the demo's table: a 64 MiB stream and 20,000 round trips
/// of 64 bytes, with the bytes they put on `lo`.
fn compare(label: &str, header: bool) -> Result<()> {
    if header {
        println!(
            "{:<18} {:>12} {:>14} {:>12} {:>12} {:>10}",
            "", "payload", "bytes on lo", "rr p50", "rr p99", "stream"
        );
    }
    let s = traffic::stream(1, Length::Bytes(64 << 20), false, || {})?;
    let rr = traffic::measure(
        Transport::Tcp,
        Workload::Rr,
        64,
        0.0,
        20_000,
        None,
        traffic::Receiver::default(),
    )?;
    if !s.intact {
        anyhow::bail!("stream corrupted: {:?}", s.errors);
    }
    println!(
        "{:<18} {:>12} {:>14} {:>9.1} us {:>9.1} us {:>5.1} GB/s",
        label,
        "64 MiB",
        s.lo_bytes,
        rr.value,
        rr.p99.unwrap_or(f64::NAN),
        s.payload_bytes as f64 / s.seconds / 1e9
    );
    Ok(())
}

/// `across`: phases split by a line on stdin.
fn across_cmd(port: u16, before: u64, after: u64) -> Result<()> {
    let r = across::across(
        port,
        before,
        after,
        |q| event(serde_json::to_value(q).unwrap_or_default()),
        || {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
        },
    )?;
    event(serde_json::to_value(&r)?);
    Ok(())
}

/// `talk`: one message per line on stdin.
fn talk_cmd(port: u16, size: usize) -> Result<()> {
    across::talk(
        port,
        size,
        |port| event(serde_json::json!({"event": "talking", "port": port})),
        || {
            let mut line = String::new();
            matches!(std::io::stdin().read_line(&mut line), Ok(n) if n > 0)
        },
        |s| event(serde_json::to_value(s).unwrap_or_default()),
    )
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    if let Some(cg) = &cli.cgroup {
        traffic::join_cgroup(cg)?;
    }
    match cli.mode {
        Mode::Stream {
            conns,
            bytes,
            echo,
            bind,
            connect,
            port,
        } => {
            let connect = connect.unwrap_or(bind);
            let r = traffic::stream_at(
                bind,
                connect,
                port,
                conns,
                Length::Bytes(bytes),
                echo,
                || {},
            )?;
            event(serde_json::to_value(&r)?);
        }
        Mode::Listen { bind, sink } => traffic::echo_server(bind, sink, |port| {
            event(serde_json::json!({"event": "listening", "port": port}));
            wait_for_stdin_eof();
        })?,
        Mode::SendOnce {
            port,
            size,
            wait_ms,
        } => {
            let r = traffic::send_once(port, size, std::time::Duration::from_millis(wait_ms))?;
            event(serde_json::to_value(&r)?);
        }
        Mode::Flow {
            conns,
            seconds,
            echo,
        } => {
            let r = traffic::stream(conns, Length::Seconds(seconds), echo, || {
                event(serde_json::json!({"event": "flowing"}))
            })?;
            event(serde_json::to_value(&r)?);
        }
        Mode::Rr { size, count } => {
            let r = traffic::measure(
                Transport::Tcp,
                Workload::Rr,
                size,
                0.0,
                count,
                None,
                traffic::Receiver::default(),
            )?;
            event(serde_json::to_value(&r)?);
        }
        Mode::Compare { label, header } => compare(&label, header)?,
        Mode::Measure {
            transport,
            workload,
            size,
            seconds,
            count,
            connect,
            read_size,
            rcvlowat,
            rcvbuf,
        } => {
            let receiver = traffic::Receiver {
                read_size,
                rcvlowat,
                rcvbuf,
            };
            let m = traffic::measure(transport, workload, size, seconds, count, connect, receiver)?;
            event(serde_json::to_value(&m)?);
        }
        Mode::Across {
            port,
            before,
            after,
            write_size,
        } => {
            if !(1..=16 << 20).contains(&write_size) {
                anyhow::bail!("--write-size must be 1 byte to 16 MiB, not {write_size}");
            }
            across::WRITE_SIZE.store(write_size, std::sync::atomic::Ordering::Relaxed);
            across_cmd(port, before, after)?
        }
        Mode::Talk { port, size } => talk_cmd(port, size)?,
        Mode::Compat => event(serde_json::json!({"event": "compat", "probes": compat::compat()?})),
        Mode::Hold { bind, connect } => {
            traffic::hold(bind, connect, |server_port, client_port| {
                event(serde_json::json!({
                    "event": "holding", "server_port": server_port, "client_port": client_port
                }));
                wait_for_stdin_eof();
            })?
        }
    }
    Ok(())
}
