// SPDX-License-Identifier: GPL-2.0
/*
 * sockops: put each established TCP socket (IPv4, IPv6, IPv4-mapped) whose
 * peer is on this host into sock_ops_map, keyed by its connection as seen
 * from that socket. Connections to other hosts gain nothing from the
 * redirect, so they are left out and never pay for the sk_msg hook.
 */
#include "sock_key.h"

/* Extra addresses of this host (IPv6 form, IPv4 mapped) whose connections
 * count as local; loopback always does. Seeded by the manifest. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u32[4]);
	__type(value, __u8);
} local_addrs SEC(".maps");

/* Connection selection, read when a connection is established (so
 * changing these entries reloads nothing, and established connections keep
 * their decision). Ports are in host order; a connection is judged by both
 * of its ports, so its two ends decide alike.
 *
 * skip_ports: a connection with either port listed is never bypassed.
 * only_ports: when it holds any entry, only connections with a port listed
 * are bypassed. Telling an empty hash map from another takes a walk of its
 * buckets, at every connection setup (never per message): only_ports is
 * kept short, 32 ports, so the walk stays cheap (see README). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, __u8);
} skip_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 32);
	__type(key, __u32);
	__type(value, __u8);
} only_ports SEC(".maps");

static long found_one(void *map, __u32 *key, __u8 *value, int *any)
{
	*any = 1;
	return 1; /* stop at the first entry */
}

/* Whether the selection lets a connection between these ports in. */
static __always_inline int selected(__u32 a, __u32 b)
{
	int any = 0;

	if (bpf_map_lookup_elem(&skip_ports, &a) || bpf_map_lookup_elem(&skip_ports, &b))
		return 0;
	if (bpf_map_lookup_elem(&only_ports, &a) || bpf_map_lookup_elem(&only_ports, &b))
		return 1;
	/* Neither port is listed: in, unless only_ports lists anything. Only
	 * connection setup pays for this look, never a message. */
	bpf_for_each_map_elem(&only_ports, found_one, &any, 0);
	return !any;
}

static __always_inline int is_local(__u32 ip[4])
{
	/* ::1 */
	if (!ip[0] && !ip[1] && !ip[2] && ip[3] == bpf_htonl(1))
		return 1;
	/* ::ffff:127.0.0.0/104 */
	if (!ip[0] && !ip[1] && ip[2] == bpf_htonl(0xffff) &&
	    (bpf_ntohl(ip[3]) >> 24) == 127)
		return 1;
	return bpf_map_lookup_elem(&local_addrs, ip) != NULL;
}

SEC("sockops")
int bpf_sockops(struct bpf_sock_ops *skops)
{
	struct sock_key key = {};
	__u32 op = skops->op;

	if (op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB &&
	    op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB)
		return 0;
	if (bypass_off())
		return 0;

	if (skops->family == AF_INET) {
		map_v4(key.sip, skops->local_ip4);
		map_v4(key.dip, skops->remote_ip4);
	} else if (skops->family == AF_INET6) {
		key.sip[0] = skops->local_ip6[0];
		key.sip[1] = skops->local_ip6[1];
		key.sip[2] = skops->local_ip6[2];
		key.sip[3] = skops->local_ip6[3];
		key.dip[0] = skops->remote_ip6[0];
		key.dip[1] = skops->remote_ip6[1];
		key.dip[2] = skops->remote_ip6[2];
		key.dip[3] = skops->remote_ip6[3];
	} else {
		return 0;
	}
	/* local_port is in host order; remote_port is in network order. */
	key.sport = skops->local_port;
	key.dport = bpf_ntohl(skops->remote_port);

	if (!is_local(key.dip)) {
		count(STAT_SKIPPED_REMOTE, 1);
		return 0;
	}
	if (!selected(key.sport, key.dport)) {
		count(STAT_SKIPPED_SELECTION, 1);
		return 0;
	}
	/* BPF_NOEXIST: a connection's key is unique while its socket lives. A
	 * failure (a full sockhash) leaves the connection on plain TCP: counted,
	 * so `bpfplan status` can say so. */
	if (bpf_sock_hash_update(skops, &sock_ops_map, &key, BPF_NOEXIST) == 0)
		count(STAT_INSERTED, 1);
	else
		count(STAT_INSERT_FAILED, 1);
	return 0;
}

char _license[] SEC("license") = "GPL";
