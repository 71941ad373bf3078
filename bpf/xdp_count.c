// SPDX-License-Identifier: GPL-2.0
/*
 * XDP: count the packets that arrive on an interface, then pass them on.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} xdp_packets SEC(".maps");

SEC("xdp")
int xdp_count(struct xdp_md *ctx)
{
	__u32 key = 0;
	__u64 *val = bpf_map_lookup_elem(&xdp_packets, &key);

	if (val)
		*val += 1;
	return XDP_PASS;
}

char _license[] SEC("license") = "GPL";
