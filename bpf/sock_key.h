/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The sockhash shared by sockops.c (which fills it) and redir.c (which
 * redirects through it). Both objects define the same map so that the second
 * one can be loaded with `bpftool prog load ... map name sock_ops_map pinned
 * PIN`, which makes libbpf reuse the pinned map instead of creating a new one.
 */
#ifndef BPFPLAN_SOCK_KEY_H
#define BPFPLAN_SOCK_KEY_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

/*
 * An IPv4 connection seen from one of its sockets. Ports are kept in network
 * byte order in the low 16 bits so both programs build identical keys.
 */
struct sock_key {
	__u32 sip4;
	__u32 dip4;
	__u8 family;
	__u8 pad1;
	__u16 pad2;
	__u32 pad3;
	__u32 sport;
	__u32 dport;
} __attribute__((packed));

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 65535);
	__type(key, struct sock_key);
	__type(value, __u64); /* 8 bytes: a user-space lookup returns the socket cookie */
} sock_ops_map SEC(".maps");

#define AF_INET 2

#endif
