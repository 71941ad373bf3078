//! Socket semantics an application may rely on, each tried on a fresh
//! connection of its own on 127.0.0.1: what the receiver sees. Run once in
//! a plain cgroup and once in a bypassed one, the two answers say whether
//! the bypass changes it (`bpfplan doctor --compat`).

use anyhow::{Context, Result, bail};
use serde::Serialize;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

/// One probe's answer.
#[derive(Debug, Clone, Serialize)]
pub struct Answer {
    pub probe: &'static str,
    /// What the receiver saw, in words; the same words mean the same.
    pub result: String,
}

/// A connected pair: (client, server side), both ends settled in whatever
/// the cgroup's programs do at establishment.
fn pair() -> Result<(TcpStream, TcpStream)> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding 127.0.0.1")?;
    let c = TcpStream::connect(l.local_addr()?)?;
    let (s, _) = l.accept()?;
    std::thread::sleep(Duration::from_millis(30));
    Ok((c, s))
}

fn errno_word(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EAGAIN) => "EAGAIN".into(),
        Some(libc::EINTR) => "EINTR".into(),
        Some(libc::EINVAL) => "EINVAL".into(),
        Some(n) => format!("errno {n}"),
        None => e.to_string(),
    }
}

/// recv(2) with flags; the bytes or the errno.
fn recv(s: &TcpStream, len: usize, flags: i32) -> std::result::Result<Vec<u8>, String> {
    let mut buf = vec![0u8; len];
    // SAFETY: recv writes at most `len` bytes into `buf`.
    let n = unsafe { libc::recv(s.as_raw_fd(), buf.as_mut_ptr().cast(), len, flags) };
    if n < 0 {
        return Err(errno_word(&std::io::Error::last_os_error()));
    }
    buf.truncate(n as usize);
    Ok(buf)
}

fn show(r: std::result::Result<Vec<u8>, String>) -> String {
    match r {
        Ok(b) => format!("{:?}", String::from_utf8_lossy(&b)),
        Err(e) => e,
    }
}

/// MSG_OOB: an urgent byte between ordinary ones.
fn msg_oob() -> Result<String> {
    let (c, s) = pair()?;
    (&c).write_all(b"ab")?;
    // SAFETY: send reads one byte of a static buffer.
    let sent = unsafe { libc::send(c.as_raw_fd(), b"!".as_ptr().cast(), 1, libc::MSG_OOB) };
    if sent < 0 {
        return Ok(format!(
            "send(MSG_OOB): {}",
            errno_word(&std::io::Error::last_os_error())
        ));
    }
    (&c).write_all(b"cd")?;
    std::thread::sleep(Duration::from_millis(50));
    let oob = show(recv(&s, 1, libc::MSG_OOB | libc::MSG_DONTWAIT));
    let inline = show(recv(&s, 16, libc::MSG_DONTWAIT));
    Ok(format!("recv(MSG_OOB) {oob}, then {inline}"))
}

/// MSG_WAITALL: 20 bytes asked for, sent as 10 and 10 a moment apart.
fn msg_waitall() -> Result<String> {
    let (c, s) = pair()?;
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        (&c).write_all(&[1u8; 10])?;
        std::thread::sleep(Duration::from_millis(100));
        (&c).write_all(&[2u8; 10])
    });
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let got = recv(&s, 20, libc::MSG_WAITALL).map(|b| b.len());
    let _ = writer.join();
    Ok(match got {
        Ok(n) => format!("returned {n} of 20 bytes"),
        Err(e) => e,
    })
}

/// SO_RCVLOWAT 100 with 10 bytes waiting: does poll say readable?
fn so_rcvlowat() -> Result<String> {
    let (c, s) = pair()?;
    let lowat: libc::c_int = 100;
    // SAFETY: setsockopt reads one int.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&lowat as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        bail!(
            "setsockopt(SO_RCVLOWAT): {}",
            std::io::Error::last_os_error()
        );
    }
    (&c).write_all(&[7u8; 10])?;
    std::thread::sleep(Duration::from_millis(50));
    let mut fds = [libc::pollfd {
        fd: s.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    // SAFETY: poll reads and writes one pollfd.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, 100) };
    Ok(if n > 0 {
        "poll says readable below the low-water mark".into()
    } else {
        "poll waits for the low-water mark".into()
    })
}

extern "C" fn on_signal(_: libc::c_int) {}

/// A signal during a blocking recv with nothing to read.
fn eintr() -> Result<String> {
    let (_c, s) = pair()?;
    // SAFETY: a handler that does nothing, installed without SA_RESTART so
    // the interrupted recv returns.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut());
    }
    // SAFETY: pthread_self has no preconditions.
    let me = unsafe { libc::pthread_self() };
    let kicker = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        // SAFETY: `me` is this process's thread, alive until the join below.
        unsafe { libc::pthread_kill(me, libc::SIGUSR1) };
    });
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let r = recv(&s, 16, 0);
    let _ = kicker.join();
    Ok(match r {
        Ok(b) => format!("returned {} bytes", b.len()),
        Err(e) => format!("blocking recv interrupted: {e}"),
    })
}

/// splice(2) from the socket into a pipe, 100 bytes waiting (the socket
/// non-blocking: splice does not see what the bypass queued and would wait
/// for good).
fn splice() -> Result<String> {
    let (c, s) = pair()?;
    (&c).write_all(&[3u8; 100])?;
    std::thread::sleep(Duration::from_millis(50));
    s.set_nonblocking(true)?;
    let mut p = [0i32; 2];
    // SAFETY: pipe writes two fds.
    if unsafe { libc::pipe(p.as_mut_ptr()) } != 0 {
        bail!("pipe: {}", std::io::Error::last_os_error());
    }
    // SAFETY: splice between the socket and the pipe we own.
    let n = unsafe {
        libc::splice(
            s.as_raw_fd(),
            std::ptr::null_mut(),
            p[1],
            std::ptr::null_mut(),
            100,
            libc::SPLICE_F_NONBLOCK,
        )
    };
    let r = if n < 0 {
        format!("splice: {}", errno_word(&std::io::Error::last_os_error()))
    } else {
        format!("spliced {n} bytes")
    };
    // SAFETY: closing the pipe we made.
    unsafe {
        libc::close(p[0]);
        libc::close(p[1]);
    }
    Ok(r)
}

/// TCP_INFO's byte counter after 100 bytes were read.
fn tcp_info() -> Result<String> {
    let (c, mut s) = pair()?;
    (&c).write_all(&[4u8; 100])?;
    let mut buf = [0u8; 100];
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut got = 0;
    while got < 100 {
        match s.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if matches!(e.kind(), ErrorKind::Interrupted | ErrorKind::WouldBlock) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let mut info = [0u8; 256];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 || len < 136 {
        bail!("getsockopt(TCP_INFO): {}", std::io::Error::last_os_error());
    }
    // struct tcp_info: tcpi_bytes_received (u64) at byte 128.
    let mut b = [0u8; 8];
    b.copy_from_slice(&info[128..136]);
    let received = u64::from_ne_bytes(b);
    Ok(if received >= 100 {
        "tcpi_bytes_received counts what was read".into()
    } else {
        format!("tcpi_bytes_received is {received} after 100 bytes were read")
    })
}

/// A half-close: the peer reads the data, then end of stream.
fn half_close() -> Result<String> {
    let (c, mut s) = pair()?;
    (&c).write_all(b"hello")?;
    c.shutdown(std::net::Shutdown::Write)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut all = Vec::new();
    match s.read_to_end(&mut all) {
        Ok(_) => Ok(format!(
            "read {:?} then end of stream",
            String::from_utf8_lossy(&all)
        )),
        Err(e) => Ok(format!("read {} bytes then {}", all.len(), errno_word(&e))),
    }
}

/// MSG_PEEK, then a read.
fn msg_peek() -> Result<String> {
    let (c, s) = pair()?;
    (&c).write_all(b"peek!")?;
    std::thread::sleep(Duration::from_millis(50));
    let peeked = show(recv(&s, 16, libc::MSG_PEEK | libc::MSG_DONTWAIT));
    let read = show(recv(&s, 16, libc::MSG_DONTWAIT));
    Ok(format!("peek {peeked}, then read {read}"))
}

/// FIONREAD with 7 bytes waiting.
fn fionread() -> Result<String> {
    let (c, s) = pair()?;
    (&c).write_all(b"seven!!")?;
    std::thread::sleep(Duration::from_millis(50));
    let mut n: libc::c_int = -1;
    // SAFETY: FIONREAD writes one int.
    let rc = unsafe { libc::ioctl(s.as_raw_fd(), libc::FIONREAD, &mut n) };
    if rc != 0 {
        bail!("ioctl(FIONREAD): {}", std::io::Error::last_os_error());
    }
    Ok(format!("{n} bytes waiting"))
}

/// A probe: what its receiver saw.
type Try = fn() -> Result<String>;

/// Every probe, in order.
pub fn compat() -> Result<Vec<Answer>> {
    let probes: [(&'static str, Try); 9] = [
        ("msg_oob", msg_oob),
        ("msg_waitall", msg_waitall),
        ("so_rcvlowat", so_rcvlowat),
        ("eintr", eintr),
        ("splice", splice),
        ("tcp_info", tcp_info),
        ("half_close", half_close),
        ("msg_peek", msg_peek),
        ("fionread", fionread),
    ];
    probes
        .iter()
        .map(|(probe, run)| {
            let result = run().with_context(|| format!("probe {probe}"))?;
            Ok(Answer { probe, result })
        })
        .collect()
}
