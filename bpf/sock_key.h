/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What sockops.c (which fills the sockhash) and redir.c (which redirects
 * through it) share. Both objects define the same maps so that the second
 * one can be loaded with `bpftool prog load ... map name NAME pinned PIN`,
 * which makes libbpf reuse the pinned maps instead of creating new ones.
 */
#ifndef BPFPLAN_SOCK_KEY_H
#define BPFPLAN_SOCK_KEY_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define AF_INET 2
#define AF_INET6 10

/*
 * A TCP connection seen from one of its sockets. Addresses are in IPv6 form,
 * IPv4 ones mapped (::ffff:a.b.c.d), so an IPv4 socket and a dual-stack IPv6
 * socket on the two ends of one connection build matching keys. Ports are
 * in host byte order, which reads naturally in `bpftool map dump`.
 */
struct sock_key {
	__u32 sip[4]; /* this socket's address */
	__u32 dip[4]; /* the peer's address */
	__u32 sport;
	__u32 dport;
};

/* How many sockets the bypass holds at once; a full sockhash is counted
 * (STAT_INSERT_FAILED), and those connections take plain TCP. Tests build
 * a small one to fill it. */
#ifndef BPFPLAN_SOCKHASH_MAX
#define BPFPLAN_SOCKHASH_MAX 65535
#endif

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, BPFPLAN_SOCKHASH_MAX);
	__type(key, struct sock_key);
	/* 8 bytes: a user-space lookup of a sockhash returns the socket cookie,
	 * and fails with ENOSPC for a smaller value. */
	__type(value, __u64);
} sock_ops_map SEC(".maps");

/* Per-CPU counters; `bpfplan status` sums them over the CPUs. */
enum bypass_stat {
	STAT_INSERTED = 0,	  /* sockets put into the sockhash */
	STAT_SKIPPED_REMOTE = 1,  /* established sockets whose peer is not local */
	STAT_REDIRECTED_MSGS = 2, /* messages redirected to the peer */
	STAT_REDIRECTED_BYTES = 3,
	STAT_MISSES = 4,	  /* peer not in the sockhash: passed to TCP */
	STAT_DROPPED = 5,	  /* messages dropped by the port policy */
	STAT_SKIPPED_SELECTION = 6, /* sockets left out by skip_ports/only_ports */
	STAT_INSERT_FAILED = 7,	  /* sockhash inserts that failed (full, say) */
	STAT_DEMOTED_BACKPRESSURE = 8, /* connections sent back to TCP: peer full */
	STAT_DEMOTED_BULK = 9,	  /* connections sent back to TCP: bulk */
	STAT_MAX = 10,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} bypass_stats SEC(".maps");

static __always_inline void count(__u32 stat, __u64 n)
{
#ifndef BPFPLAN_NO_COUNTERS /* scripts/stream-experiments.sh: their cost */
	__u64 *v = bpf_map_lookup_elem(&bypass_stats, &stat);

	if (v)
		*v += n; /* per-CPU: no other writer */
#endif
}

/*
 * One switch both programs read, for good once set: 0 (as created)
 * redirects; 1, which `bpfplan destroy` writes before it detaches anything
 * (the map's `on_destroy`), makes sockops insert no socket and the verdict
 * pass every message to TCP. A connection made during the bypass keeps these
 * programs (and this map) until it closes, so this is what makes it behave
 * as plain TCP for everything it sends after destroy. Data already queued at
 * the receiver is read first, then the TCP queue: nothing is lost or
 * reordered, which deleting the socket from the sockhash would not ensure.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} bypass_ctl SEC(".maps");

static __always_inline int bypass_off(void)
{
	__u32 zero = 0;
	__u32 *off = bpf_map_lookup_elem(&bypass_ctl, &zero);

	return off && *off;
}

/* ::ffff:a.b.c.d from an IPv4 address in network order. */
static __always_inline void map_v4(__u32 out[4], __u32 v4)
{
	out[0] = 0;
	out[1] = 0;
	out[2] = bpf_htonl(0xffff);
	out[3] = v4;
}

#endif
