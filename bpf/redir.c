// SPDX-License-Identifier: GPL-2.0
/*
 * sk_msg verdict: send each message straight to the receive queue of the
 * peer socket when the peer is in sock_ops_map. When it is not (a socket
 * established before the sockops program was attached, say), the message
 * takes the normal TCP path. Messages to a port in deny_ports are dropped:
 * the sender's send() fails with EACCES and the peer gets nothing.
 */
#include "sock_key.h"
#include <bpf/bpf_core_read.h>

/*
 * Backpressure. The bypass queues each message at its receiver and checks no
 * receive-buffer limit, so a reader that stalls would let its sender queue
 * until the host's TCP memory runs out. So after each redirect the verdict
 * looks at what the receiver now holds (the kernel's own `struct sk_msg`
 * names the receiver, `sk_redir`, once bpf_msg_redirect_hash chose it), and
 * when that is more than the receiver's buffer (or the manifest's bound),
 * the connection leaves the redirect for good: its next messages take TCP,
 * whose flow control then holds the sender back. The receiver reads what
 * was redirected before what came by TCP, so no byte is reordered.
 *
 * The kernel's structs, only the fields read (CO-RE: libbpf finds their
 * offsets in the running kernel's BTF). The verdict's context is the
 * kernel's `struct sk_msg` itself (`struct sk_msg_md` is its view), so
 * these are read with bpf_probe_read_kernel from the context's address
 * (BPF_CORE_READ). That helper is in Linux 5.5; the kfunc
 * bpf_cast_to_kern_ctx, which would allow plain loads, only in 6.2, and
 * Debian 12's kernel is 6.1. The receiver's rmem_alloc counts redirected
 * messages since "tcp_bpf: Charge receive socket buffer in
 * bpf_tcp_ingress()" (6.1.123 in the 6.1 series): tested on 6.1.192 and
 * 6.18 (tests/vm, tests/live.rs).
 */
typedef struct {
	int counter;
} bpfplan_atomic_t;

struct sock___bpfplan {
	struct {
		bpfplan_atomic_t rmem_alloc;
	} sk_backlog;
	int sk_rcvbuf;
} __attribute__((preserve_access_index));

struct sk_msg___bpfplan {
	struct sock___bpfplan *sk_redir;
} __attribute__((preserve_access_index));

/* What the verdict keeps per connection, on its sending socket. */
struct conn {
	__u32 demoted; /* why it left the redirect, for good (DEMOTED_*) */
	__u32 pad;
	__u64 redirected; /* bytes redirected so far */
};

#define DEMOTED_BACKPRESSURE 1
#define DEMOTED_BULK 2

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct conn);
} conns SEC(".maps");

/*
 * Bulk. A connection is a bulk transfer when its receiver has taken
 * `bulk_bytes` in a row without sending anything back: a download, a copy.
 * Request/response restarts the run at every answer, so a long-lived
 * connection of small exchanges (a Redis or database client) is never taken
 * for one, however much it moves in all. The run is kept per receiving
 * socket, keyed like the sockhash, because the answer is seen by the other
 * socket's verdict. LRU: a connection the map forgot restarts its count,
 * which only delays its demotion.
 */
#ifndef BPFPLAN_RUNS_MAX
#define BPFPLAN_RUNS_MAX 16384
#endif

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, BPFPLAN_RUNS_MAX);
	__type(key, struct sock_key);
	__type(value, __u64);
} runs SEC(".maps");

/* The sender answers: the run it was receiving (keyed by the peer key
 * `to`, swapped) ends. Called on every message while bulk is bounded, also
 * once its own connection left the redirect, so that its peer's answers
 * are not taken for a run. */
static __always_inline void answered(const struct sock_key *to)
{
	struct sock_key from = {
		.sip = { to->dip[0], to->dip[1], to->dip[2], to->dip[3] },
		.dip = { to->sip[0], to->sip[1], to->sip[2], to->sip[3] },
		.sport = to->dport,
		.dport = to->sport,
	};
	__u64 *mine = bpf_map_lookup_elem(&runs, &from);

	if (mine && *mine)
		*mine = 0;
}

/* Bytes `to` has received in a row, this message included. */
static __always_inline __u64 received(const struct sock_key *to, __u64 len)
{
	__u64 *theirs = bpf_map_lookup_elem(&runs, to);

	if (theirs) {
		*theirs += len; /* one sender per direction: no other writer */
		return *theirs;
	}
	bpf_map_update_elem(&runs, to, &len, BPF_ANY);
	return len;
}

/* The bounds, set by the manifest (0: the default). [0] bytes a receiver may
 * hold before its sender leaves the redirect (default: its receive buffer);
 * [1] bytes a receiver may take in a row, unanswered, before the connection
 * counts as a bulk transfer and its sender leaves (default 0: never). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} bypass_bounds SEC(".maps");

static __always_inline __u64 bound(__u32 which)
{
	__u64 *v = bpf_map_lookup_elem(&bypass_bounds, &which);

	return v ? *v : 0;
}

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

	/* Destroyed: every message takes TCP, no policy applies. */
	if (bypass_off())
		return SK_PASS;

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

	__u64 bulk = bound(1);

	if (bulk)
		answered(&key);

	struct conn *c = bpf_sk_storage_get(&conns, msg->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);

	/* Demoted: TCP from now on (and its flow control). */
	if (c && c->demoted)
		return SK_PASS;

	/* A miss returns SK_DROP without setting a redirect target; returning
	 * SK_PASS regardless hands the message to TCP, so a miss loses nothing. */
	if (bpf_msg_redirect_hash(msg, &sock_ops_map, &key, BPF_F_INGRESS) != SK_PASS) {
		count(STAT_MISSES, 1);
		return SK_PASS;
	}
	count(STAT_REDIRECTED_MSGS, 1);
	count(STAT_REDIRECTED_BYTES, len);
	if (!c)
		return SK_PASS;
	c->redirected += len;

	struct sk_msg___bpfplan *kmsg = (void *)msg;
	struct sock___bpfplan *peer = BPF_CORE_READ(kmsg, sk_redir);
	__s64 held = BPF_CORE_READ(peer, sk_backlog.rmem_alloc.counter);
	__s64 limit = bound(0) ? (__s64)bound(0) : BPF_CORE_READ(peer, sk_rcvbuf);

	if (held + (__s64)len > limit) {
		c->demoted = DEMOTED_BACKPRESSURE;
		count(STAT_DEMOTED_BACKPRESSURE, 1);
	} else if (bulk && received(&key, len) > bulk) {
		c->demoted = DEMOTED_BULK;
		count(STAT_DEMOTED_BULK, 1);
	}
	return SK_PASS;
}

char _license[] SEC("license") = "GPL";
