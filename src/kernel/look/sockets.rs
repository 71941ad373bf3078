//! TCP sockets as the kernel's sock_diag reports them (what `ss` reads):
//! cookie, ports, state and memory. A sockhash holds socket cookies, so
//! this is how bpfplan names the connections that still hold a deployment's
//! programs, and sees a receiver whose queue grows. Reads only.

use anyhow::{Context, Result, bail};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// `INET_DIAG_SKMEMINFO`: the socket's memory, as `ss -m` shows it.
const INET_DIAG_SKMEMINFO: u16 = 7;

/// One TCP socket.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Socket {
    pub cookie: u64,
    pub local_port: u16,
    pub remote_port: u16,
    /// The TCP state (1 established, ...).
    pub state: u8,
    /// Bytes charged to its receive side (`skmem r`), queued data included.
    pub rmem_alloc: u32,
    /// Its receive buffer (`skmem rb`).
    pub rcvbuf: u32,
    /// Bytes charged to its send side (`skmem t`).
    pub wmem_alloc: u32,
}

fn u16_be(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn u32_ne(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Every TCP socket of this network namespace, IPv4 and IPv6.
pub fn tcp() -> Result<Vec<Socket>> {
    let mut out = dump(libc::AF_INET as u8)?;
    out.extend(dump(libc::AF_INET6 as u8)?);
    Ok(out)
}

/// The sockets of these cookies that still exist.
pub fn by_cookie(cookies: &[u64]) -> Result<Vec<Socket>> {
    let want: std::collections::BTreeSet<u64> = cookies.iter().copied().collect();
    Ok(tcp()?
        .into_iter()
        .filter(|s| want.contains(&s.cookie))
        .collect())
}

/// One `SOCK_DIAG_BY_FAMILY` dump of a family's TCP sockets.
fn dump(family: u8) -> Result<Vec<Socket>> {
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("opening a sock_diag socket");
    }
    // SAFETY: the kernel just gave us this fd.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // nlmsghdr (16) + inet_diag_req_v2 (8 + inet_diag_sockid 48).
    let mut req = [0u8; 72];
    req[0..4].copy_from_slice(&72u32.to_ne_bytes());
    req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req[16] = family;
    req[17] = libc::IPPROTO_TCP as u8;
    req[18] = 1 << (INET_DIAG_SKMEMINFO - 1);
    // Every state.
    req[20..24].copy_from_slice(&0xfffu32.to_ne_bytes());
    // SAFETY: send(2) reads `req.len()` bytes of `req`.
    let sent = unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if sent < 0 {
        return Err(std::io::Error::last_os_error()).context("asking sock_diag");
    }
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: recv(2) writes at most `buf.len()` bytes into `buf`.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error()).context("reading sock_diag");
        }
        if n == 0 {
            return Ok(out);
        }
        let mut msgs = &buf[..n as usize];
        while msgs.len() >= 16 {
            let len = u32_ne(msgs, 0) as usize;
            let kind = u16::from_ne_bytes([msgs[4], msgs[5]]);
            if len < 16 || len > msgs.len() {
                bail!("sock_diag sent a malformed message");
            }
            match kind {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    let errno = msgs
                        .get(16..20)
                        .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                    bail!("sock_diag: {}", std::io::Error::from_raw_os_error(-errno));
                }
                SOCK_DIAG_BY_FAMILY => {
                    if let Some(s) = parse(&msgs[16..len]) {
                        out.push(s);
                    }
                }
                _ => {}
            }
            msgs = &msgs[len.next_multiple_of(4).min(msgs.len())..];
        }
    }
}

/// An `inet_diag_msg` and its attributes.
fn parse(m: &[u8]) -> Option<Socket> {
    // family, state, timer, retrans (4), inet_diag_sockid (48), expires,
    // rqueue, wqueue, uid, inode (20).
    if m.len() < 72 {
        return None;
    }
    let cookie = u64::from(u32_ne(m, 4 + 40)) | (u64::from(u32_ne(m, 4 + 44)) << 32);
    let mut s = Socket {
        cookie,
        local_port: u16_be(m, 4),
        remote_port: u16_be(m, 6),
        state: m[1],
        rmem_alloc: 0,
        rcvbuf: 0,
        wmem_alloc: 0,
    };
    let mut attrs = &m[72..];
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]);
        if len < 4 || len > attrs.len() {
            break;
        }
        if kind == INET_DIAG_SKMEMINFO && len >= 4 + 16 {
            let v = &attrs[4..len];
            s.rmem_alloc = u32_ne(v, 0);
            s.rcvbuf = u32_ne(v, 4);
            s.wmem_alloc = u32_ne(v, 8);
        }
        attrs = &attrs[len.next_multiple_of(4).min(attrs.len())..];
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket of our own shows up, with its ports and an established
    /// state (sock_diag needs no privilege for this).
    #[test]
    fn finds_a_socket_of_our_own() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (_s, _) = l.accept().unwrap();
        let local = c.local_addr().unwrap().port();
        let all = tcp().unwrap();
        let mine = all
            .iter()
            .find(|s| s.local_port == local && s.remote_port == port)
            .expect("the client socket");
        assert_eq!(mine.state, 1, "established");
        assert_ne!(mine.cookie, 0);
        assert!(mine.rcvbuf > 0, "{mine:?}");
        assert_eq!(by_cookie(&[mine.cookie]).unwrap(), vec![mine.clone()]);
    }
}
