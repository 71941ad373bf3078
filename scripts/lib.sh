# Shared by the demo and benchmark scripts (sourced, not run).

# mount_of FSTYPE: the mount points of a file system type, from mountinfo
# (the type is the field after the " - " separator).
mount_of() {
    awk -v t="$1" '{ for (i = 1; i <= NF; i++) if ($i == "-") { if ($(i + 1) == t) print $5; break } }' /proc/self/mountinfo
}

# The cgroup v2 mount (/sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts).
cgroup2_mount() {
    mount_of cgroup2 | head -n 1
}

# Mount bpffs at /sys/fs/bpf unless one is there already (a second mount
# would be a fresh, empty instance hiding the pins).
ensure_bpffs() {
    if ! mount_of bpf | grep -qx /sys/fs/bpf; then
        echo "mounting bpffs at /sys/fs/bpf"
        mount -t bpf bpf /sys/fs/bpf
    fi
}
