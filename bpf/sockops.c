// SPDX-License-Identifier: GPL-2.0
/*
 * sockops: put every established IPv4 TCP socket of the cgroup into
 * sock_ops_map, keyed by its 4-tuple as seen from that socket.
 */
#include <bpf/bpf_endian.h>
#include "sock_key.h"

SEC("sockops")
int bpf_sockops(struct bpf_sock_ops *skops)
{
	if (skops->family != AF_INET)
		return 0;

	switch (skops->op) {
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB: {
		struct sock_key key = {
			.sip4 = skops->local_ip4,
			.dip4 = skops->remote_ip4,
			.family = 1,
			/* local_port is host order; remote_port is network order
			 * in the high 16 bits of the u32 on this ABI. */
			.sport = bpf_htonl(skops->local_port) >> 16,
			.dport = skops->remote_port >> 16,
		};
		/* BPF_NOEXIST: a 4-tuple is unique while its socket lives. */
		bpf_sock_hash_update(skops, &sock_ops_map, &key, BPF_NOEXIST);
		break;
	}
	default:
		break;
	}
	return 0;
}

char _license[] SEC("license") = "GPL";
