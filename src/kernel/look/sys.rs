//! The few bpf(2) reads bpfplan makes itself instead of starting a bpftool:
//! open a pin or an id, ask what it is (`BPF_OBJ_GET_INFO_BY_FD`), and which
//! programs a sockmap has (`BPF_PROG_QUERY`, which bpftool 7.1 cannot ask).
//! Only reads: every change is a bpftool command a reviewer can read.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::kernel::look::inspect::Bytes;
use crate::manifest::model::{KernelMapType, KernelProgType, MapShape};

/// What the kernel says of one program (the fields bpfplan uses).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProgInfo {
    pub id: u32,
    pub tag: String,
    #[serde(rename = "type")]
    pub prog_type: KernelProgType,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub map_ids: Vec<u32>,
}

/// What the kernel says of one map (the fields bpfplan uses).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MapInfo {
    pub id: u32,
    #[serde(rename = "type")]
    pub map_type: KernelMapType,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub key_size: u32,
    #[serde(default)]
    pub value_size: u32,
    #[serde(default)]
    pub max_entries: u32,
    #[serde(default)]
    pub flags: u32,
}

impl MapInfo {
    /// What a reuse of this map is judged by.
    pub fn shape(&self) -> MapShape {
        MapShape {
            map_type: self.map_type,
            key_size: self.key_size,
            value_size: self.value_size,
            max_entries: self.max_entries,
            flags: self.flags,
        }
    }
}

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_MAP_GET_FD_BY_ID: libc::c_long = 14;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_ENABLE_STATS: libc::c_long = 32;

/// `union bpf_attr`, as bytes: large enough for every command used here.
type Attr = [u8; 128];

fn put_u32(attr: &mut [u8], at: usize, v: u32) {
    attr[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put_u64(attr: &mut [u8], at: usize, v: u64) {
    attr[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}

fn get_u32(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_ne_bytes(x)
}

/// bpf(2); the result, or the errno as an io::Error.
fn bpf(cmd: libc::c_long, attr: &mut Attr) -> std::io::Result<libc::c_long> {
    // SAFETY: bpf(2) reads and writes at most `attr.len()` bytes of `attr`,
    // and any buffer it points to, all alive for the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn owned(fd: libc::c_long) -> Result<OwnedFd> {
    let fd = i32::try_from(fd).context("bpf(2) returned an fd out of range")?;
    // SAFETY: the kernel just returned this fd to us; we own it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Open what is pinned at `path`.
pub(crate) fn obj_get(path: &str) -> std::io::Result<OwnedFd> {
    let c = std::ffi::CString::new(path)
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let mut attr: Attr = [0; 128];
    // BPF_OBJ_GET: pathname (u64) at 0.
    put_u64(&mut attr, 0, c.as_ptr() as u64);
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    owned(fd).map_err(std::io::Error::other)
}

/// What kind of BPF object a file descriptor holds.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Prog,
    Map,
    Other,
}

/// Tell a program from a map by what the kernel calls the fd's file.
pub(crate) fn kind(fd: &OwnedFd) -> Kind {
    match std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())) {
        Ok(target) => match target.to_string_lossy().as_ref() {
            "anon_inode:bpf-prog" => Kind::Prog,
            "anon_inode:bpf-map" => Kind::Map,
            _ => Kind::Other,
        },
        Err(_) => Kind::Other,
    }
}

/// `BPF_OBJ_GET_INFO_BY_FD` into `info`.
fn info_by_fd(fd: &OwnedFd, info: &mut [u8]) -> Result<()> {
    let mut attr: Attr = [0; 128];
    // bpf_fd (u32) at 0, info_len (u32) at 4, info (u64) at 8.
    put_u32(&mut attr, 0, fd.as_raw_fd() as u32);
    put_u32(&mut attr, 4, info.len() as u32);
    put_u64(&mut attr, 8, info.as_mut_ptr() as u64);
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).context("BPF_OBJ_GET_INFO_BY_FD")?;
    Ok(())
}

/// A C string of a fixed-size name field.
fn name(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// A program's id, type, name, tag and maps (`struct bpf_prog_info`).
pub(crate) fn prog_info(fd: &OwnedFd) -> Result<ProgInfo> {
    let mut map_ids = vec![0u32; 64];
    let mut info = [0u8; 256];
    // nr_map_ids (u32) at 52 and map_ids (u64) at 56 say where the map ids go.
    put_u32(&mut info, 52, map_ids.len() as u32);
    put_u64(&mut info, 56, map_ids.as_mut_ptr() as u64);
    info_by_fd(fd, &mut info)?;
    let count = (get_u32(&info, 52) as usize).min(map_ids.len());
    map_ids.truncate(count);
    Ok(ProgInfo {
        // type (u32) at 0, id at 4, tag (8 bytes) at 8, name (16) at 64.
        id: get_u32(&info, 4),
        tag: crate::util::hex(&info[8..16]),
        prog_type: KernelProgType::from(get_u32(&info, 0)),
        name: name(&info[64..80]),
        map_ids,
    })
}

/// A map's id, type and name (`struct bpf_map_info`).
pub(crate) fn map_info(fd: &OwnedFd) -> Result<MapInfo> {
    let mut info = [0u8; 128];
    info_by_fd(fd, &mut info)?;
    Ok(MapInfo {
        // type (u32) at 0, id at 4, key_size at 8, value_size at 12,
        // max_entries at 16, map_flags at 20, name (16 bytes) at 24.
        id: get_u32(&info, 4),
        map_type: KernelMapType::from(get_u32(&info, 0)),
        name: name(&info[24..40]),
        key_size: get_u32(&info, 8),
        value_size: get_u32(&info, 12),
        max_entries: get_u32(&info, 16),
        flags: get_u32(&info, 20),
    })
}

/// Key size, value size and max entries of the map behind `fd`.
fn map_sizes(fd: &OwnedFd) -> Result<(usize, usize, usize)> {
    let mut info = [0u8; 128];
    info_by_fd(fd, &mut info)?;
    // key_size at 8, value_size at 12, max_entries at 16.
    Ok((
        get_u32(&info, 8) as usize,
        get_u32(&info, 12) as usize,
        get_u32(&info, 16) as usize,
    ))
}

/// How many CPUs a per-CPU map keeps a value for.
fn possible_cpus() -> Result<usize> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .context("reading /sys/devices/system/cpu/possible")?;
    let mut n = 0;
    for part in text.trim().split(',') {
        n += match part.split_once('-') {
            Some((a, b)) => b.parse::<usize>()? - a.parse::<usize>()? + 1,
            None => 1,
        };
    }
    Ok(n)
}

/// A map entry: its key, and its value (one per CPU for per-CPU maps).
pub(crate) type Entry = (Bytes, smallvec::SmallVec<[Bytes; 1]>);

/// Every entry of a hash or array map (key, and one value per CPU for
/// per-CPU maps), read with `BPF_MAP_LOOKUP_BATCH`. `None` when the map
/// type cannot be read so (sockmaps, say): the caller asks bpftool.
pub(crate) fn map_entries(fd: &OwnedFd, per_cpu: bool) -> Result<Option<Vec<Entry>>> {
    let (key_size, value_size, max) = map_sizes(fd)?;
    let (cpus, stride) = if per_cpu {
        (possible_cpus()?, value_size.div_ceil(8) * 8)
    } else {
        (1, value_size)
    };
    let value_len = stride * cpus;
    let mut chunk = max.clamp(1, 4096);
    let mut out = Vec::new();
    let mut token = vec![0u8; key_size.max(8)];
    let mut first = true;
    loop {
        let mut keys = vec![0u8; key_size * chunk];
        let mut values = vec![0u8; value_len * chunk];
        let mut next = vec![0u8; token.len()];
        let mut attr: Attr = [0; 128];
        // in_batch at 0 (null the first time), out_batch at 8, keys at 16,
        // values at 24, count (u32, in and out) at 32, map_fd (u32) at 36.
        if !first {
            put_u64(&mut attr, 0, token.as_mut_ptr() as u64);
        }
        put_u64(&mut attr, 8, next.as_mut_ptr() as u64);
        put_u64(&mut attr, 16, keys.as_mut_ptr() as u64);
        put_u64(&mut attr, 24, values.as_mut_ptr() as u64);
        put_u32(&mut attr, 32, chunk as u32);
        put_u32(&mut attr, 36, fd.as_raw_fd() as u32);
        let result = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let count = (get_u32(&attr, 32) as usize).min(chunk);
        let done = result.is_err();
        match result {
            Ok(_) => {}
            // The end: `count` entries came with it.
            Err(ref e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            // One hash bucket holds more than `chunk` entries: ask for more.
            Err(ref e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                chunk *= 2;
                continue;
            }
            // ENOTSUPP (524) is the kernel's own "no batch ops for this type".
            Err(ref e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINVAL) | Some(524) | Some(libc::EOPNOTSUPP)
                ) && first =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e).context("BPF_MAP_LOOKUP_BATCH"),
        }
        for i in 0..count {
            let key = Bytes::from_slice(&keys[i * key_size..(i + 1) * key_size]);
            let v = &values[i * value_len..(i + 1) * value_len];
            let per = (0..cpus)
                .map(|c| Bytes::from_slice(&v[c * stride..c * stride + value_size]))
                .collect();
            out.push((key, per));
        }
        if done {
            return Ok(Some(out));
        }
        token = next;
        first = false;
    }
}

/// The program with this id, if it exists.
pub(crate) fn prog_by_id(id: u32) -> Option<ProgInfo> {
    let mut attr: Attr = [0; 128];
    put_u32(&mut attr, 0, id);
    let fd = owned(bpf(BPF_PROG_GET_FD_BY_ID, &mut attr).ok()?).ok()?;
    prog_info(&fd).ok()
}

/// What a program has run, as the kernel counts it while BPF run
/// statistics are on (`run_time_ns` and `run_cnt` of `bpf_prog_info`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RunStats {
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

fn get_u64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_ne_bytes(x)
}

/// The run statistics of the program with this id, if it exists.
pub(crate) fn prog_run_stats(id: u32) -> Option<RunStats> {
    let mut attr: Attr = [0; 128];
    put_u32(&mut attr, 0, id);
    let fd = owned(bpf(BPF_PROG_GET_FD_BY_ID, &mut attr).ok()?).ok()?;
    let mut info = [0u8; 256];
    info_by_fd(&fd, &mut info).ok()?;
    // run_time_ns (u64) at 192, run_cnt (u64) at 200.
    Some(RunStats {
        run_time_ns: get_u64(&info, 192),
        run_cnt: get_u64(&info, 200),
    })
}

/// Turn the kernel's BPF run statistics on for as long as the returned fd
/// is open (`BPF_ENABLE_STATS`, `BPF_STATS_RUN_TIME`; Linux 5.8). The
/// host-wide sysctl `kernel.bpf_stats_enabled` is never written: when the
/// fd closes (this process ends, even killed), the statistics stop.
pub(crate) fn enable_run_stats() -> Result<OwnedFd> {
    // enable_stats.type (u32) at 0: BPF_STATS_RUN_TIME is 0.
    let mut attr: Attr = [0; 128];
    let fd = bpf(BPF_ENABLE_STATS, &mut attr).map_err(|e| {
        let why = match e.raw_os_error() {
            Some(libc::EINVAL) => "this kernel has no BPF_ENABLE_STATS (Linux 5.8 and later do)",
            Some(libc::EPERM) => "it needs CAP_SYS_ADMIN",
            _ => "",
        };
        anyhow::anyhow!("turning BPF run statistics on: {e} {why}")
    })?;
    owned(fd)
}

/// The map with this id, if it exists.
pub(crate) fn map_by_id(id: u32) -> Option<MapInfo> {
    map_info(&map_fd_by_id(id)?).ok()
}

/// An fd of the map with this id, if it exists.
pub(crate) fn map_fd_by_id(id: u32) -> Option<OwnedFd> {
    let mut attr: Attr = [0; 128];
    put_u32(&mut attr, 0, id);
    owned(bpf(BPF_MAP_GET_FD_BY_ID, &mut attr).ok()?).ok()
}

/// The ids of the programs attached to the map behind `fd` as
/// `attach_type` (kernel 5.19+ answers this for sockmaps).
pub(crate) fn query(fd: &OwnedFd, attach_type: u32, what: &str) -> Result<Vec<u32>> {
    let mut ids = [0u32; 64];
    let mut attr: Attr = [0; 128];
    // target_fd (u32) at 0, attach_type (u32) at 4, prog_ids (u64) at 16,
    // prog_cnt (u32, in and out) at 24.
    put_u32(&mut attr, 0, fd.as_raw_fd() as u32);
    put_u32(&mut attr, 4, attach_type);
    put_u64(&mut attr, 16, ids.as_mut_ptr() as u64);
    put_u32(&mut attr, 24, ids.len() as u32);
    if let Err(e) = bpf(BPF_PROG_QUERY, &mut attr) {
        bail!("querying the programs attached to {what}: {e}");
    }
    let count = (get_u32(&attr, 24) as usize).min(ids.len());
    Ok(ids[..count].to_vec())
}
