//! The checked manifest: typed, resolved (variables expanded, paths joined to
//! the manifest's directory), and consistent. Built only by `validate`.

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

newtype!(
    /// A path in bpffs where a program is pinned.
    ProgPin
);
newtype!(
    /// A path in bpffs where a map is pinned.
    MapPin
);
newtype!(
    /// A cgroup v2 directory.
    CgroupPath
);
newtype!(
    /// A program's name in the manifest.
    ProgName
);
newtype!(
    /// A map's name, as in the BPF object.
    MapName
);
newtype!(
    /// A network interface name.
    IfaceName
);

/// What a program type can be attached to, and as what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgType {
    /// bpftool's spelling for `prog load ... type T`.
    pub name: &'static str,
    /// The attach types a program of this type accepts.
    pub attach: &'static [&'static str],
}

impl Serialize for ProgType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name)
    }
}

/// Program types bpfplan knows how to attach, as bpftool names them.
pub const PROG_TYPES: &[ProgType] = &[
    ProgType {
        name: "sockops",
        attach: &["sock_ops"],
    },
    ProgType {
        name: "sk_msg",
        attach: &["msg_verdict"],
    },
    ProgType {
        name: "sk_skb",
        attach: &["stream_verdict", "stream_parser", "skb_verdict"],
    },
    ProgType {
        name: "xdp",
        attach: &["xdp"],
    },
    ProgType {
        name: "cgroup/skb",
        attach: &["ingress", "egress"],
    },
    ProgType {
        name: "cgroup/sock",
        attach: &["sock_create", "sock_release", "post_bind4", "post_bind6"],
    },
    ProgType {
        name: "cgroup/dev",
        attach: &["device"],
    },
    ProgType {
        name: "cgroup/sysctl",
        attach: &["sysctl"],
    },
    ProgType {
        name: "cgroup/getsockopt",
        attach: &["getsockopt"],
    },
    ProgType {
        name: "cgroup/setsockopt",
        attach: &["setsockopt"],
    },
    ProgType {
        name: "cgroup/bind4",
        attach: &["bind4"],
    },
    ProgType {
        name: "cgroup/bind6",
        attach: &["bind6"],
    },
    ProgType {
        name: "cgroup/connect4",
        attach: &["connect4"],
    },
    ProgType {
        name: "cgroup/connect6",
        attach: &["connect6"],
    },
    ProgType {
        name: "cgroup/sendmsg4",
        attach: &["sendmsg4"],
    },
    ProgType {
        name: "cgroup/sendmsg6",
        attach: &["sendmsg6"],
    },
    ProgType {
        name: "cgroup/recvmsg4",
        attach: &["recvmsg4"],
    },
    ProgType {
        name: "cgroup/recvmsg6",
        attach: &["recvmsg6"],
    },
    ProgType {
        name: "cgroup/getpeername4",
        attach: &["getpeername4"],
    },
    ProgType {
        name: "cgroup/getpeername6",
        attach: &["getpeername6"],
    },
    ProgType {
        name: "cgroup/getsockname4",
        attach: &["getsockname4"],
    },
    ProgType {
        name: "cgroup/getsockname6",
        attach: &["getsockname6"],
    },
];

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

    /// The target kind of an attach type known to some program type.
    pub fn of(attach_type: &str) -> TargetKind {
        match attach_type {
            "msg_verdict" | "stream_verdict" | "stream_parser" | "skb_verdict" => TargetKind::Map,
            "xdp" => TargetKind::Interface,
            _ => TargetKind::Cgroup,
        }
    }
}

pub fn all_attach_types() -> Vec<&'static str> {
    let mut all: Vec<&'static str> = PROG_TYPES
        .iter()
        .flat_map(|t| t.attach.iter().copied())
        .collect();
    all.sort_unstable();
    all.dedup();
    all
}

/// How an XDP program is attached; bpftool's `net attach` type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Names of a counter array's slots, for `bpfplan status`.
    pub labels: Vec<String>,
}

/// A map entry, encoded as the map stores it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Entry {
    /// The key's bytes.
    #[serde(with = "hex_bytes")]
    pub key: Vec<u8>,
    /// The value's bytes.
    #[serde(with = "hex_bytes")]
    pub value: Vec<u8>,
    /// The key as the manifest wrote it.
    pub key_text: String,
    /// The value as the manifest wrote it.
    pub value_text: String,
}

/// How an entry's key or value is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

    /// Encode a number (native byte order, as the BPF program reads it) or
    /// an address; the error says what was expected.
    pub fn encode(self, v: &crate::manifest::Scalar) -> Result<Vec<u8>, String> {
        use crate::manifest::Scalar;
        let int = |max: u64| -> Result<u64, String> {
            let n = match v {
                Scalar::Int(n) => u64::try_from(*n).map_err(|_| format!("{n} is negative"))?,
                Scalar::Str(s) => s
                    .parse::<u64>()
                    .map_err(|_| format!("`{s}` is not a number"))?,
            };
            if n > max {
                return Err(format!("{n} does not fit (at most {max})"));
            }
            Ok(n)
        };
        Ok(match self {
            ScalarType::U8 => vec![int(u8::MAX.into())? as u8],
            ScalarType::U16 => (int(u16::MAX.into())? as u16).to_ne_bytes().to_vec(),
            ScalarType::U32 => (int(u32::MAX.into())? as u32).to_ne_bytes().to_vec(),
            ScalarType::U64 => int(u64::MAX)?.to_ne_bytes().to_vec(),
            ScalarType::Ip => {
                let Scalar::Str(s) = v else {
                    return Err("an address is a string, like \"198.18.0.1\" or \"::1\"".into());
                };
                match s.parse::<std::net::IpAddr>() {
                    Ok(std::net::IpAddr::V4(a)) => a.to_ipv6_mapped().octets().to_vec(),
                    Ok(std::net::IpAddr::V6(a)) => a.octets().to_vec(),
                    Err(_) => return Err(format!("`{s}` is not an IP address")),
                }
            }
        })
    }
}

/// Bytes as a lower-case hex string in JSON.
mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::state::hex(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        if s.len() % 2 != 0 {
            return Err(serde::de::Error::custom("odd-length hex"));
        }
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(serde::de::Error::custom))
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachPoint {
    Cgroup {
        path: CgroupPath,
        kind: &'static str,
    },
    Map {
        map: MapName,
        kind: &'static str,
    },
    Xdp {
        iface: IfaceName,
        mode: XdpMode,
    },
}

#[derive(Debug, Clone)]
pub struct Attachment {
    pub program: ProgName,
    pub point: AttachPoint,
}

/// A checked manifest, ready to plan.
#[derive(Debug, Clone)]
pub struct Model {
    /// The manifest path, as given.
    pub manifest: PathBuf,
    /// In manifest order.
    pub programs: Vec<Program>,
    pub maps: Vec<MapDef>,
    pub attachments: Vec<Attachment>,
}

impl Model {
    pub fn program(&self, name: &ProgName) -> Option<&Program> {
        self.programs.iter().find(|p| &p.name == name)
    }

    pub fn map(&self, name: &MapName) -> Option<&MapDef> {
        self.maps.iter().find(|m| &m.name == name)
    }
}
