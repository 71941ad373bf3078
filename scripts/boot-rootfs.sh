#!/usr/bin/env bash
# The Debian bookworm root file system the boot tests boot, under
# systemd-nspawn on the host's kernel (tests/boot) and under qemu on its own
# (tests/vm): systemd as PID 1, bpftool, clang and libbpf's headers (so the
# unit's first apply can compile), Debian's kernel (linux-image-amd64, 6.1)
# with its initramfs, and what the kernel tests run in the guest call
# (setpriv, useradd). Made with mmdebstrap and cached under target/boot of
# this checkout while its package list is unchanged. Prints the directory.
#
#   bash scripts/boot-rootfs.sh      # -> .../target/boot/rootfs
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=$root/target/boot
packages="systemd,systemd-sysv,dbus,bpftool,clang,libbpf-dev,linux-libc-dev,iproute2,procps"
packages="$packages,linux-image-amd64,initramfs-tools,udev,util-linux,passwd"
want="bookworm $packages"
if [ -f "$dir/rootfs/usr/lib/systemd/systemd" ] && [ "$(cat "$dir/stamp" 2>/dev/null)" = "$want" ]; then
    echo "$dir/rootfs"
    exit 0
fi
command -v mmdebstrap >/dev/null || { echo "boot-rootfs: mmdebstrap is not installed (make deps)" >&2; exit 1; }
rm -rf "$dir/rootfs.new" "$dir/rootfs"
mkdir -p "$dir"
mmdebstrap --quiet --variant=minbase --include="$packages" bookworm "$dir/rootfs.new" >&2
# A machine id of its own (the journal's directory is named by it).
systemd-machine-id-setup --root="$dir/rootfs.new" >/dev/null 2>&1 || true
mv "$dir/rootfs.new" "$dir/rootfs"
echo "$want" > "$dir/stamp"
echo "$dir/rootfs"
