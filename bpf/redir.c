// SPDX-License-Identifier: GPL-2.0
/*
 * sk_msg verdict: send each message straight to the receive queue of the
 * peer socket when the peer is in sock_ops_map. When it is not (a socket
 * established before the sockops program was attached, say), the message
 * takes the normal TCP path. Messages to a port in deny_ports are dropped:
 * the sender's send() fails with EACCES and the peer gets nothing.
 */
#include "sock_key.h"

/* Destination ports (host order) whose messages are dropped. Empty unless
 * the manifest declares entries (manifests/bypass-policy.toml does). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, __u8);
} deny_ports SEC(".maps");

SEC("sk_msg")
int bpf_redir(struct sk_msg_md *msg)
{
	struct sock_key key = {};
	__u64 len = msg->size;

	/* The peer's key: our remote end is its local end and vice versa. */
	if (msg->family == AF_INET) {
		map_v4(key.sip, msg->remote_ip4);
		map_v4(key.dip, msg->local_ip4);
	} else if (msg->family == AF_INET6) {
		key.sip[0] = msg->remote_ip6[0];
		key.sip[1] = msg->remote_ip6[1];
		key.sip[2] = msg->remote_ip6[2];
		key.sip[3] = msg->remote_ip6[3];
		key.dip[0] = msg->local_ip6[0];
		key.dip[1] = msg->local_ip6[1];
		key.dip[2] = msg->local_ip6[2];
		key.dip[3] = msg->local_ip6[3];
	} else {
		return SK_PASS;
	}
	key.sport = bpf_ntohl(msg->remote_port);
	key.dport = msg->local_port;

	/* key.sport is the peer's port: where this message is going. */
	if (bpf_map_lookup_elem(&deny_ports, &key.sport)) {
		count(STAT_DROPPED, 1);
		return SK_DROP;
	}

	/* A miss returns SK_DROP without setting a redirect target; returning
	 * SK_PASS regardless hands the message to TCP, so a miss loses nothing. */
	if (bpf_msg_redirect_hash(msg, &sock_ops_map, &key, BPF_F_INGRESS) == SK_PASS) {
		count(STAT_REDIRECTED_MSGS, 1);
		count(STAT_REDIRECTED_BYTES, len);
	} else {
		count(STAT_MISSES, 1);
	}
	return SK_PASS;
}

char _license[] SEC("license") = "GPL";
