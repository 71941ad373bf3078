// SPDX-License-Identifier: GPL-2.0
/*
 * cgroup_skb egress: count the packets and bytes that leave the sockets of a
 * cgroup. Read the counters with `bpftool map dump pinned PIN`.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} egress_stats SEC(".maps");

enum { STAT_PACKETS = 0, STAT_BYTES = 1 };

SEC("cgroup_skb/egress")
int count_egress(struct __sk_buff *skb)
{
	__u32 key = STAT_PACKETS;
	__u64 *val = bpf_map_lookup_elem(&egress_stats, &key);

	if (val)
		__sync_fetch_and_add(val, 1);
	key = STAT_BYTES;
	val = bpf_map_lookup_elem(&egress_stats, &key);
	if (val)
		__sync_fetch_and_add(val, skb->len);
	return 1; /* allow */
}

char _license[] SEC("license") = "GPL";
