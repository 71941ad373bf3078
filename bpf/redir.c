// SPDX-License-Identifier: GPL-2.0
/*
 * sk_msg verdict: send each message straight to the receive queue of the peer
 * socket when the peer is in sock_ops_map. When it is not (the peer lives on
 * another host, or was established before the sockops program was attached),
 * the message takes the normal TCP path.
 */
#include <bpf/bpf_endian.h>
#include "sock_key.h"

SEC("sk_msg")
int bpf_redir(struct sk_msg_md *msg)
{
	if (msg->family != AF_INET)
		return SK_PASS;

	/* The peer's key: our remote end is its local end and vice versa. */
	struct sock_key key = {
		.sip4 = msg->remote_ip4,
		.dip4 = msg->local_ip4,
		.family = 1,
		.sport = msg->remote_port >> 16,
		.dport = bpf_htonl(msg->local_port) >> 16,
	};

	/* A miss returns SK_DROP without setting a redirect target; returning
	 * SK_PASS regardless hands the message to TCP, so a miss never loses
	 * data. */
	bpf_msg_redirect_hash(msg, &sock_ops_map, &key, BPF_F_INGRESS);
	return SK_PASS;
}

char _license[] SEC("license") = "GPL";
