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
