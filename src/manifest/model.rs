//! The checked manifest: typed, resolved (variables expanded, paths joined to
//! the manifest's directory), and consistent. Built only by `validate`; its
//! kinds (program types, attach types, XDP modes) are the vocabulary every
//! later layer speaks.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;

macro_rules! newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
    };
}

/// A name or pin that every entry step of its map repeats: shared, so a
/// million steps hold one copy.
macro_rules! shared_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub std::sync::Arc<str>);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl $name {
            pub fn new(s: impl Into<std::sync::Arc<str>>) -> $name {
                $name(s.into())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
    };
}

newtype!(
    /// A path in bpffs where a program is pinned.
    ProgPin
);
shared_newtype!(
    /// A path in bpffs where a map is pinned.
    MapPin
);
newtype!(
    /// A cgroup v2 directory.
    CgroupPath
);

/// The names a pin takes for a moment besides its own, made and stripped
/// here only. `~` is not allowed in manifest pins, so none of them can be
/// another deployment's pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Staging {
    /// A replace's new object, loaded beside the running one.
    New,
    /// A replace's old object, moved aside before it goes.
    Old,
    /// A program loaded once to learn its tag.
    Probe,
}

impl Staging {
    pub const ALL: [Staging; 3] = [Staging::New, Staging::Old, Staging::Probe];

    pub fn suffix(self) -> &'static str {
        match self {
            Staging::New => "~new",
            Staging::Old => "~old",
            Staging::Probe => "~probe",
        }
    }

    /// `pin` under this name.
    pub fn of(self, pin: &str) -> String {
        format!("{pin}{}", self.suffix())
    }

    /// The pin a staged name stands for (itself when it is not staged).
    pub fn strip(pin: &str) -> &str {
        Staging::ALL
            .iter()
            .find_map(|s| pin.strip_suffix(s.suffix()))
            .unwrap_or(pin)
    }
}

impl ProgPin {
    /// This pin under a staging name.
    pub fn staged(&self, s: Staging) -> ProgPin {
        ProgPin(s.of(&self.0))
    }
}

impl MapPin {
    /// This pin under a staging name.
    pub fn staged(&self, s: Staging) -> MapPin {
        MapPin::new(s.of(&self.0))
    }
}
newtype!(
    /// A program's name in the manifest.
    ProgName
);
shared_newtype!(
    /// A map's name, as in the BPF object.
    MapName
);
newtype!(
    /// A network interface name.
    IfaceName
);

/// An object name as the kernel keeps it: at most 15 bytes (BPF_OBJ_NAME_LEN
/// is 16 with the NUL). Validated names are ASCII, so any cut is a char
/// boundary; anything else is kept whole rather than cut mid-character.
pub fn kernel_name(name: &str) -> &str {
    name.get(..name.len().min(15)).unwrap_or(name)
}

/// What an attach type attaches to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    Cgroup,
    Map,
    Interface,
}

impl TargetKind {
    pub fn describe(self) -> &'static str {
        match self {
            TargetKind::Cgroup => "cgroup",
            TargetKind::Map => "map",
            TargetKind::Interface => "interface",
        }
    }
}

macro_rules! word_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $word:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vdoc])* #[serde(rename = $word)] $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// bpftool's word for it.
            pub fn word(self) -> &'static str {
                match self { $($name::$variant => $word),+ }
            }

            pub fn parse(s: &str) -> Option<$name> {
                match s { $($word => Some($name::$variant),)+ _ => None }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.word())
            }
        }
    };
}

/// An enum of the kernel's (`enum bpf_prog_type`, `enum bpf_map_type`):
/// its number, and the word bpftool prints for it. A number this bpfplan
/// does not know is kept as `Other`, printed `type N`.
macro_rules! kernel_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident = $n:literal $word:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum $name {
            $($variant,)+
            Other(u32),
        }

        impl From<u32> for $name {
            fn from(n: u32) -> Self {
                match n { $($n => $name::$variant,)+ other => $name::Other(other) }
            }
        }

        impl $name {
            /// bpftool's word for it.
            pub fn word(self) -> std::borrow::Cow<'static, str> {
                match self {
                    $($name::$variant => std::borrow::Cow::Borrowed($word),)+
                    $name::Other(n) => std::borrow::Cow::Owned(format!("type {n}")),
                }
            }

            pub fn parse(s: &str) -> Option<$name> {
                match s {
                    $($word => Some($name::$variant),)+
                    other => other.strip_prefix("type ")?.parse().ok().map($name::Other),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.word())
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.word())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let word = String::deserialize(d)?;
                $name::parse(&word)
                    .ok_or_else(|| serde::de::Error::custom(format!("unknown type `{word}`")))
            }
        }
    };
}

kernel_enum!(
    /// A program's type as the kernel reports it.
    KernelProgType {
        Unspec = 0 "unspec",
        SocketFilter = 1 "socket_filter",
        Kprobe = 2 "kprobe",
        SchedCls = 3 "sched_cls",
        SchedAct = 4 "sched_act",
        Tracepoint = 5 "tracepoint",
        Xdp = 6 "xdp",
        PerfEvent = 7 "perf_event",
        CgroupSkb = 8 "cgroup_skb",
        CgroupSock = 9 "cgroup_sock",
        LwtIn = 10 "lwt_in",
        LwtOut = 11 "lwt_out",
        LwtXmit = 12 "lwt_xmit",
        SockOps = 13 "sock_ops",
        SkSkb = 14 "sk_skb",
        CgroupDevice = 15 "cgroup_device",
        SkMsg = 16 "sk_msg",
        RawTracepoint = 17 "raw_tracepoint",
        CgroupSockAddr = 18 "cgroup_sock_addr",
        LwtSeg6local = 19 "lwt_seg6local",
        LircMode2 = 20 "lirc_mode2",
        SkReuseport = 21 "sk_reuseport",
        FlowDissector = 22 "flow_dissector",
        CgroupSysctl = 23 "cgroup_sysctl",
        RawTracepointWritable = 24 "raw_tracepoint_writable",
        CgroupSockopt = 25 "cgroup_sockopt",
    }
);

kernel_enum!(
    /// A map's type as the kernel reports it.
    KernelMapType {
        Unspec = 0 "unspec",
        Hash = 1 "hash",
        Array = 2 "array",
        ProgArray = 3 "prog_array",
        PerfEventArray = 4 "perf_event_array",
        PercpuHash = 5 "percpu_hash",
        PercpuArray = 6 "percpu_array",
        StackTrace = 7 "stack_trace",
        CgroupArray = 8 "cgroup_array",
        LruHash = 9 "lru_hash",
        LruPercpuHash = 10 "lru_percpu_hash",
        LpmTrie = 11 "lpm_trie",
        ArrayOfMaps = 12 "array_of_maps",
        HashOfMaps = 13 "hash_of_maps",
        Devmap = 14 "devmap",
        Sockmap = 15 "sockmap",
        Cpumap = 16 "cpumap",
        Xskmap = 17 "xskmap",
        Sockhash = 18 "sockhash",
    }
);

/// What makes two maps interchangeable: libbpf reuses a pinned map for an
/// object's map only when all of these agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapShape {
    #[serde(rename = "type")]
    pub map_type: KernelMapType,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

impl fmt::Display for MapShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}, key {} B, value {} B, {} entries, flags {:#x}",
            self.map_type, self.key_size, self.value_size, self.max_entries, self.flags
        )
    }
}

impl MapShape {
    /// How two shapes differ, in words (empty when they do not).
    pub fn differences(&self, new: &MapShape) -> Vec<String> {
        let mut out = Vec::new();
        if self.map_type != new.map_type {
            out.push(format!("type {} -> {}", self.map_type, new.map_type));
        }
        if self.key_size != new.key_size {
            out.push(format!("key size {} -> {}", self.key_size, new.key_size));
        }
        if self.value_size != new.value_size {
            out.push(format!(
                "value size {} -> {}",
                self.value_size, new.value_size
            ));
        }
        if self.max_entries != new.max_entries {
            out.push(format!(
                "max_entries {} -> {}",
                self.max_entries, new.max_entries
            ));
        }
        if self.flags != new.flags {
            out.push(format!("flags {:#x} -> {:#x}", self.flags, new.flags));
        }
        out
    }
}

impl KernelMapType {
    /// One value per CPU.
    pub fn per_cpu(self) -> bool {
        matches!(
            self,
            KernelMapType::PercpuHash | KernelMapType::PercpuArray | KernelMapType::LruPercpuHash
        )
    }

    /// Every slot always exists (it cannot be deleted).
    pub fn is_array(self) -> bool {
        matches!(self, KernelMapType::Array | KernelMapType::PercpuArray)
    }

    /// Holds sockets.
    pub fn is_sockmap(self) -> bool {
        matches!(self, KernelMapType::Sockmap | KernelMapType::Sockhash)
    }
}

word_enum!(
    /// An attach type, spelled as bpftool's `attach` commands spell it.
    AttachKind {
        SockOps = "sock_ops",
        MsgVerdict = "msg_verdict",
        StreamVerdict = "stream_verdict",
        StreamParser = "stream_parser",
        SkbVerdict = "skb_verdict",
        Xdp = "xdp",
        Ingress = "ingress",
        Egress = "egress",
        SockCreate = "sock_create",
        SockRelease = "sock_release",
        PostBind4 = "post_bind4",
        PostBind6 = "post_bind6",
        Device = "device",
        Sysctl = "sysctl",
        Getsockopt = "getsockopt",
        Setsockopt = "setsockopt",
        Bind4 = "bind4",
        Bind6 = "bind6",
        Connect4 = "connect4",
        Connect6 = "connect6",
        Sendmsg4 = "sendmsg4",
        Sendmsg6 = "sendmsg6",
        Recvmsg4 = "recvmsg4",
        Recvmsg6 = "recvmsg6",
        Getpeername4 = "getpeername4",
        Getpeername6 = "getpeername6",
        Getsockname4 = "getsockname4",
        Getsockname6 = "getsockname6",
    }
);

impl AttachKind {
    /// What this attach type attaches to.
    pub fn target(self) -> TargetKind {
        match self {
            AttachKind::MsgVerdict
            | AttachKind::StreamVerdict
            | AttachKind::StreamParser
            | AttachKind::SkbVerdict => TargetKind::Map,
            AttachKind::Xdp => TargetKind::Interface,
            _ => TargetKind::Cgroup,
        }
    }

    /// `enum bpf_attach_type` of a map attach type, for BPF_PROG_QUERY.
    pub fn map_attach_type(self) -> Option<u32> {
        Some(match self {
            AttachKind::StreamParser => 4,
            AttachKind::StreamVerdict => 5,
            AttachKind::MsgVerdict => 7,
            AttachKind::SkbVerdict => 38,
            _ => return None,
        })
    }
}

word_enum!(
    /// A program type, spelled as `bpftool prog load ... type T` spells it.
    ProgType {
        SockOps = "sockops",
        SkMsg = "sk_msg",
        SkSkb = "sk_skb",
        Xdp = "xdp",
        CgroupSkb = "cgroup/skb",
        CgroupSock = "cgroup/sock",
        CgroupSockRelease = "cgroup/sock_release",
        CgroupPostBind4 = "cgroup/post_bind4",
        CgroupPostBind6 = "cgroup/post_bind6",
        CgroupDev = "cgroup/dev",
        CgroupSysctl = "cgroup/sysctl",
        CgroupGetsockopt = "cgroup/getsockopt",
        CgroupSetsockopt = "cgroup/setsockopt",
        CgroupBind4 = "cgroup/bind4",
        CgroupBind6 = "cgroup/bind6",
        CgroupConnect4 = "cgroup/connect4",
        CgroupConnect6 = "cgroup/connect6",
        CgroupSendmsg4 = "cgroup/sendmsg4",
        CgroupSendmsg6 = "cgroup/sendmsg6",
        CgroupRecvmsg4 = "cgroup/recvmsg4",
        CgroupRecvmsg6 = "cgroup/recvmsg6",
        CgroupGetpeername4 = "cgroup/getpeername4",
        CgroupGetpeername6 = "cgroup/getpeername6",
        CgroupGetsockname4 = "cgroup/getsockname4",
        CgroupGetsockname6 = "cgroup/getsockname6",
    }
);

impl ProgType {
    /// The attach types a program of this type accepts.
    pub fn attach_kinds(self) -> &'static [AttachKind] {
        use AttachKind as A;
        match self {
            ProgType::SockOps => &[A::SockOps],
            ProgType::SkMsg => &[A::MsgVerdict],
            ProgType::SkSkb => &[A::StreamVerdict, A::StreamParser, A::SkbVerdict],
            ProgType::Xdp => &[A::Xdp],
            ProgType::CgroupSkb => &[A::Ingress, A::Egress],
            // The kernel fixes a cgroup/sock program's attach type when it
            // loads it (`cgroup/sock` is sock_create): each has its own type.
            ProgType::CgroupSock => &[A::SockCreate],
            ProgType::CgroupSockRelease => &[A::SockRelease],
            ProgType::CgroupPostBind4 => &[A::PostBind4],
            ProgType::CgroupPostBind6 => &[A::PostBind6],
            ProgType::CgroupDev => &[A::Device],
            ProgType::CgroupSysctl => &[A::Sysctl],
            ProgType::CgroupGetsockopt => &[A::Getsockopt],
            ProgType::CgroupSetsockopt => &[A::Setsockopt],
            ProgType::CgroupBind4 => &[A::Bind4],
            ProgType::CgroupBind6 => &[A::Bind6],
            ProgType::CgroupConnect4 => &[A::Connect4],
            ProgType::CgroupConnect6 => &[A::Connect6],
            ProgType::CgroupSendmsg4 => &[A::Sendmsg4],
            ProgType::CgroupSendmsg6 => &[A::Sendmsg6],
            ProgType::CgroupRecvmsg4 => &[A::Recvmsg4],
            ProgType::CgroupRecvmsg6 => &[A::Recvmsg6],
            ProgType::CgroupGetpeername4 => &[A::Getpeername4],
            ProgType::CgroupGetpeername6 => &[A::Getpeername6],
            ProgType::CgroupGetsockname4 => &[A::Getsockname4],
            ProgType::CgroupGetsockname6 => &[A::Getsockname6],
        }
    }

    /// The type the kernel reports for a program loaded as this.
    pub fn kernel_type(self) -> KernelProgType {
        match self {
            ProgType::SockOps => KernelProgType::SockOps,
            ProgType::SkMsg => KernelProgType::SkMsg,
            ProgType::SkSkb => KernelProgType::SkSkb,
            ProgType::Xdp => KernelProgType::Xdp,
            ProgType::CgroupSkb => KernelProgType::CgroupSkb,
            ProgType::CgroupSock
            | ProgType::CgroupSockRelease
            | ProgType::CgroupPostBind4
            | ProgType::CgroupPostBind6 => KernelProgType::CgroupSock,
            ProgType::CgroupDev => KernelProgType::CgroupDevice,
            ProgType::CgroupSysctl => KernelProgType::CgroupSysctl,
            ProgType::CgroupGetsockopt | ProgType::CgroupSetsockopt => {
                KernelProgType::CgroupSockopt
            }
            _ => KernelProgType::CgroupSockAddr,
        }
    }
}

/// How an XDP program is attached; bpftool's `net attach` type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum XdpMode {
    /// Let the kernel choose (native if the driver supports it).
    Auto,
    /// SKB mode, works on every interface.
    Generic,
    /// In the driver.
    Native,
    /// On the NIC.
    Offload,
}

impl XdpMode {
    pub fn parse(s: &str) -> Option<XdpMode> {
        Some(match s {
            "auto" => XdpMode::Auto,
            "generic" => XdpMode::Generic,
            "native" => XdpMode::Native,
            "offload" => XdpMode::Offload,
            _ => return None,
        })
    }

    /// The manifest's word for this mode.
    pub fn name(self) -> &'static str {
        match self {
            XdpMode::Auto => "auto",
            XdpMode::Generic => "generic",
            XdpMode::Native => "native",
            XdpMode::Offload => "offload",
        }
    }

    /// bpftool's attach type word for this mode.
    pub fn bpftool_word(self) -> &'static str {
        match self {
            XdpMode::Auto => "xdp",
            XdpMode::Generic => "xdpgeneric",
            XdpMode::Native => "xdpdrv",
            XdpMode::Offload => "xdpoffload",
        }
    }
}

/// Where the program's object comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Code {
    /// C source compiled by the plan.
    Source(PathBuf),
    /// A prebuilt object used as is.
    Object(PathBuf),
}

#[derive(Debug, Clone)]
pub struct Program {
    pub name: ProgName,
    pub code: Code,
    pub prog_type: ProgType,
    pub pin: ProgPin,
    /// Maps of this manifest the object reuses (already pinned when it loads).
    pub reuse: Vec<MapName>,
}

#[derive(Debug, Clone)]
pub struct MapDef {
    pub name: MapName,
    /// The program whose object creates this map.
    pub owner: ProgName,
    pub pin: MapPin,
    /// The exact contents apply keeps, when the manifest declares them.
    pub entries: Option<Vec<Entry>>,
    /// Entries destroy writes first, before it detaches anything.
    pub on_destroy: Option<Vec<Entry>>,
    /// Names of a counter array's slots, for `bpfplan status`.
    pub labels: Vec<String>,
}

/// A map entry, encoded as the map stores it: the key's bytes then the
/// value's, in one buffer that holds up to 24 bytes without an allocation
/// (an address key and a u64 value fit), and how each is shown. A map of a
/// million entries holds a million of these, so the text a plan shows is
/// made when it is shown, from the bytes and their types, never stored.
#[derive(Debug, Clone)]
pub struct Entry {
    bytes: smallvec::SmallVec<[u8; 24]>,
    key_len: u32,
    /// How the key and value are shown (none: hex), as the manifest typed
    /// them.
    shown: (Option<ScalarType>, Option<ScalarType>),
}

impl Entry {
    pub fn new(key: &[u8], value: &[u8], shown: (Option<ScalarType>, Option<ScalarType>)) -> Entry {
        let mut bytes = smallvec::SmallVec::with_capacity(key.len() + value.len());
        bytes.extend_from_slice(key);
        bytes.extend_from_slice(value);
        Entry {
            bytes,
            // A key longer than 4 GiB is not a map key.
            key_len: u32::try_from(key.len()).unwrap_or(u32::MAX),
            shown,
        }
    }

    /// The key's bytes.
    pub fn key(&self) -> &[u8] {
        &self.bytes[..self.key_len as usize]
    }

    /// The value's bytes.
    pub fn value(&self) -> &[u8] {
        &self.bytes[self.key_len as usize..]
    }

    /// How the key and value are shown.
    pub fn shown(&self) -> (Option<ScalarType>, Option<ScalarType>) {
        self.shown
    }

    /// The key as the manifest writes it (`198.18.0.1`, `443`), or hex.
    pub fn key_text(&self) -> String {
        ScalarType::show(self.shown.0, self.key())
    }

    /// The value as the manifest writes it, or hex.
    pub fn value_text(&self) -> String {
        ScalarType::show(self.shown.1, self.value())
    }
}

/// Entries are the same when their bytes are: how they are shown is not
/// what the map holds.
impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.key_len == other.key_len && self.bytes == other.bytes
    }
}

impl Eq for Entry {}

impl std::hash::Hash for Entry {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.key_len.hash(h);
        self.bytes.hash(h);
    }
}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.key(), self.value()).cmp(&(other.key(), other.value()))
    }
}

/// One entry in JSON (a plan's step, a record's op): its bytes in hex, its
/// text, and the types the text came from.
#[derive(Serialize, Deserialize)]
struct EntryJson {
    key: String,
    value: String,
    #[serde(default)]
    key_text: String,
    #[serde(default)]
    value_text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key_type: Option<ScalarType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value_type: Option<ScalarType>,
}

impl Serialize for Entry {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        EntryJson {
            key: crate::util::hex(self.key()),
            value: crate::util::hex(self.value()),
            key_text: self.key_text(),
            value_text: self.value_text(),
            key_type: self.shown.0,
            value_type: self.shown.1,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Entry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let j = EntryJson::deserialize(d)?;
        let bytes = |s: &str| {
            crate::util::unhex(s)
                .ok_or_else(|| serde::de::Error::custom(format!("`{s}` is not hex")))
        };
        Ok(Entry::new(
            &bytes(&j.key)?,
            &bytes(&j.value)?,
            (j.key_type, j.value_type),
        ))
    }
}

/// A map's entries as records and saved plans keep them: the types once,
/// then one `KEY:VALUE` hex string per entry (a million entries are a
/// million short strings, not a million objects). The object form of
/// earlier records is read too.
pub mod entry_list {
    use super::{Entry, ScalarType};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Deserialize)]
    struct Packed {
        #[serde(default)]
        key_type: Option<ScalarType>,
        #[serde(default)]
        value_type: Option<ScalarType>,
        hex: Vec<PackedEntry>,
    }

    /// `KEY:VALUE` in hex, decoded straight into an entry.
    struct PackedEntry(Entry);

    impl<'de> Deserialize<'de> for PackedEntry {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
            let bad = || serde::de::Error::custom(format!("`{s}` is not KEY:VALUE in hex"));
            let (k, v) = s.split_once(':').ok_or_else(bad)?;
            let mut bytes = smallvec::SmallVec::with_capacity((k.len() + v.len()) / 2);
            let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
            for half in [k, v] {
                let h = half.as_bytes();
                if !h.len().is_multiple_of(2) {
                    return Err(bad());
                }
                for pair in h.chunks_exact(2) {
                    match (digit(pair[0]), digit(pair[1])) {
                        (Some(a), Some(b)) => bytes.push(a << 4 | b),
                        _ => return Err(bad()),
                    }
                }
            }
            Ok(PackedEntry(Entry {
                bytes,
                key_len: (k.len() / 2) as u32,
                shown: (None, None),
            }))
        }
    }

    pub fn serialize<S: Serializer>(entries: &Option<Vec<Entry>>, s: S) -> Result<S::Ok, S::Error> {
        let Some(entries) = entries else {
            return s.serialize_none();
        };
        let shown = entries.first().map(Entry::shown).unwrap_or_default();
        struct Seq<'a>(&'a [Entry]);
        impl Serialize for Seq<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq(self.0.iter().map(Packed))
            }
        }
        /// One entry as `KEY:VALUE` in hex, made in a buffer on the stack
        /// (a record or a plan hash encodes a million of these).
        struct Packed<'a>(&'a Entry);
        impl Serialize for Packed<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let (key, value) = (self.0.key(), self.0.value());
                let n = 2 * (key.len() + value.len()) + 1;
                let mut stack = [0u8; 96];
                let mut heap = Vec::new();
                let text: &mut [u8] = if n <= stack.len() {
                    &mut stack[..n]
                } else {
                    heap.resize(n, 0);
                    &mut heap
                };
                let (k, v) = text.split_at_mut(2 * key.len());
                crate::util::hex_to(key, k);
                v[0] = b':';
                crate::util::hex_to(value, &mut v[1..]);
                let text = std::str::from_utf8(text).map_err(serde::ser::Error::custom)?;
                s.serialize_str(text)
            }
        }
        #[derive(Serialize)]
        struct Out<'a> {
            key_type: Option<ScalarType>,
            value_type: Option<ScalarType>,
            hex: Seq<'a>,
        }
        s.serialize_some(&Out {
            key_type: shown.0,
            value_type: shown.1,
            hex: Seq(entries),
        })
    }

    /// Packed (an object) or as earlier records wrote them (a list of
    /// objects), told apart by what the JSON holds, not by buffering it.
    struct Stored;

    impl<'de> serde::de::Visitor<'de> for Stored {
        type Value = Option<Vec<Entry>>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("map entries")
        }

        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
            Vec::<Entry>::deserialize(serde::de::value::SeqAccessDeserializer::new(seq)).map(Some)
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            let p = Packed::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
            let shown = (p.key_type, p.value_type);
            Ok(Some(
                p.hex
                    .into_iter()
                    .map(|PackedEntry(mut e)| {
                        e.shown = shown;
                        e
                    })
                    .collect(),
            ))
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Entry>>, D::Error> {
        d.deserialize_option(Stored)
    }
}

/// How an entry's key or value is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScalarType {
    U8,
    U16,
    U32,
    U64,
    /// 16 bytes: an IPv6 address, or an IPv4 one mapped (::ffff:a.b.c.d).
    Ip,
}

impl ScalarType {
    pub fn parse(s: &str) -> Option<ScalarType> {
        Some(match s {
            "u8" => ScalarType::U8,
            "u16" => ScalarType::U16,
            "u32" => ScalarType::U32,
            "u64" => ScalarType::U64,
            "ip" => ScalarType::Ip,
            _ => return None,
        })
    }

    /// How many bytes a value of this type takes.
    pub fn size(self) -> usize {
        match self {
            ScalarType::U8 => 1,
            ScalarType::U16 => 2,
            ScalarType::U32 => 4,
            ScalarType::U64 => 8,
            ScalarType::Ip => 16,
        }
    }

    /// Bytes as the manifest writes a value of this type: a number, an
    /// address (an IPv4-mapped one as IPv4), or `0x` hex when the type is
    /// unknown or the bytes are not of its size.
    pub fn show(ty: Option<ScalarType>, b: &[u8]) -> String {
        let number = |b: &[u8]| {
            let mut n = [0u8; 8];
            if cfg!(target_endian = "big") {
                n[8 - b.len()..].copy_from_slice(b);
            } else {
                n[..b.len()].copy_from_slice(b);
            }
            u64::from_ne_bytes(n).to_string()
        };
        match ty {
            Some(t) if t.size() == b.len() && t != ScalarType::Ip => number(b),
            Some(ScalarType::Ip) if b.len() == 16 => {
                let mut o = [0u8; 16];
                o.copy_from_slice(b);
                let a = std::net::Ipv6Addr::from(o);
                match a.to_ipv4_mapped() {
                    Some(v4) => v4.to_string(),
                    None => a.to_string(),
                }
            }
            _ => format!("0x{}", crate::util::hex(b)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachPoint {
    Cgroup { path: CgroupPath, kind: AttachKind },
    Map { map: MapName, kind: AttachKind },
    Xdp { iface: IfaceName, mode: XdpMode },
}

#[derive(Debug, Clone)]
pub struct Attachment {
    pub program: ProgName,
    pub point: AttachPoint,
}

/// A checked manifest, ready to plan.
#[derive(Debug, Clone)]
pub struct Model {
    /// The manifest path.
    pub manifest: PathBuf,
    /// In manifest order.
    pub programs: Vec<Program>,
    pub maps: Vec<MapDef>,
    pub attachments: Vec<Attachment>,
}
