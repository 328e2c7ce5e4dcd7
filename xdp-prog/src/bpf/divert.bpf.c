// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * xdpmesh_divert: the XDP program in front of the xdpmesh dataplane.
 *
 * It diverts into the AF_XDP socket of the ingress interface's receive queue
 * (`ports`, `xsks`) mesh TCP segments, every connection to a captured workload
 * of this gateway whatever its source (so none reaches it around its peer
 * authentication and policies), and the SYNs of unknown sources when the
 * configuration asks (see xm_workload.flags in abi.h). Everything else goes to
 * the kernel untouched, including a captured workload's own connections to
 * destinations outside the mesh (passthrough). Malformed IP/TCP headers of
 * diverted traffic are dropped here so the userspace stack never sees them;
 * malformed other traffic is the kernel's business, but broken L2/L3 framing is
 * dropped for all traffic.
 * Checksums are not verified here: the dataplane verifies them in userspace.
 *
 * Every frame increments exactly one `counters` slot (enum xm_reason, see
 * abi.h). Background: Documentation/networking/af_xdp.rst (XSKMAP and
 * bpf_redirect_map), Documentation/bpf/map_xskmap.rst, and
 * Documentation/bpf/redirect.rst.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "abi.h"
#include "parsing.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Every map is pinned by name under the loader's pin root, so a restarted
 * dataplane and the control process share the same maps
 * (tools/lib/bpf/libbpf.c, LIBBPF_PIN_BY_NAME). */

/* (port slot * XM_MAX_QUEUES + rx queue index) -> AF_XDP socket fd
 * (Documentation/bpf/map_xskmap.rst): the program runs on several
 * interfaces, each with its own socket per queue. */
struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, XM_MAX_PORTS * XM_MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} xsks SEC(".maps");

/* ingress ifindex -> port slot, written by the dataplane per attached
 * interface. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, XM_MAX_PORTS);
	__type(key, __u32);
	__type(value, struct xm_port);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ports SEC(".maps");

/* Workload addresses known to this gateway, written by the control process. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, XM_MAX_WORKLOADS);
	__type(key, struct xm_addr);
	__type(value, struct xm_workload);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} workloads SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct xm_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} config SEC(".maps");

/* Per-CPU, so the hot path increments without atomics; userspace sums the
 * CPUs (Documentation/bpf/map_array.rst). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, XM_REASON_MAX);
	__type(key, __u32);
	__type(value, struct xm_counter);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} counters SEC(".maps");

/* (ingress ifindex, IP) -> MAC, snooped from ARP and NDP; the dataplane uses
 * it to address frames it emits itself. LRU so that a busy segment cannot
 * fill it for good. Entries are as trustworthy as the kernel's own
 * neighbour cache: whoever can send ARP on the link can change them. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, XM_MAX_NEIGHBORS);
	__type(key, struct xm_neigh_key);
	__type(value, struct xm_neigh);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} neighbors SEC(".maps");

/* Connections from outside the mesh to a captured workload (struct
 * xm_inbound_key): made by their SYN, so that the rest of the connection, both
 * ways, follows it to the dataplane. LRU: bounded, and an entry of a live
 * connection is refreshed by each of its segments' lookups. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, XM_MAX_INBOUND);
	__type(key, struct xm_inbound_key);
	__type(value, struct xm_inbound);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} inbound SEC(".maps");

/* The pod ranges (struct xm_cidr_key), written by the control process. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, XM_MAX_POD_CIDRS);
	__type(key, struct xm_cidr_key);
	__type(value, struct xm_cidr);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pod_cidrs SEC(".maps");

/* SYNs of unknown sources to mesh workloads (struct xm_unknown), read by the
 * dataplane to log them. LRU: a flood of sources cannot fill it for good. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, XM_MAX_UNKNOWN_SOURCES);
	__type(key, struct xm_addr);
	__type(value, struct xm_unknown);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} unknown_sources SEC(".maps");

static __always_inline int xm_count(int action, __u32 reason, __u64 bytes)
{
	struct xm_counter *c = bpf_map_lookup_elem(&counters, &reason);

	if (c) {
		/* Per-CPU slot, and XDP does not run nested on one CPU. */
		c->packets += 1;
		c->bytes += bytes;
	}
	return action;
}

static __always_inline int xm_enabled(void)
{
	__u32 zero = 0;
	struct xm_config *cfg = bpf_map_lookup_elem(&config, &zero);

	return cfg && (cfg->flags & XM_CFG_ENABLED);
}

/* Bytes of the whole frame (linear part and fragments) from the cursor on. */
static __always_inline __u32 xm_packet_remaining(struct xdp_md *ctx, const struct xm_cursor *c,
						 __u64 bytes)
{
	__u64 off = (__u64)(c->pos - (void *)(long)ctx->data);

	return off < bytes ? (__u32)(bytes - off) : 0;
}

/* XM_WL_* flags of `addr`; 0 for an address outside the mesh. */
static __always_inline __u32 xm_wl_flags(const struct xm_addr *addr)
{
	struct xm_workload *wl = bpf_map_lookup_elem(&workloads, addr);

	return wl ? wl->flags : 0;
}

/* How the addresses classify a TCP segment (abi.h, xm_workload.flags; and
 * docs/ARCHITECTURE.md, "BPF map ABI"). Each address is looked up at most once
 * in `workloads`, and `pod_cidrs` only for a source that is no workload sending
 * to a mesh workload of another node. */
enum xm_class {
	XM_NOT_MESH = 0,     /* the kernel's */
	XM_MESH = 1,	     /* mesh traffic: every segment diverted */
	XM_TO_LOCAL = 2,     /* to a workload served here from outside the mesh */
	XM_FROM_LOCAL = 3,   /* from a workload served here to outside the mesh */
	XM_UNKNOWN_PASS = 4, /* from an unknown source to a mesh workload: passed */
	XM_UNKNOWN_DIVERT = 5, /* the same, with its SYNs diverted (reject, hold) */
};

static __always_inline enum xm_class xm_classify(const struct xm_addr *src, const struct xm_addr *dst)
{
	__u32 dst_flags = xm_wl_flags(dst);
	__u32 src_flags = xm_wl_flags(src);
	struct xm_cidr_key key = { .prefixlen = 128 };
	struct xm_cidr *cidr;

	if (dst_flags & XM_WL_LOCAL)
		return (src_flags & (XM_WL_LOCAL | XM_WL_MESH)) ? XM_MESH : XM_TO_LOCAL;
	if (src_flags & XM_WL_LOCAL)
		return (dst_flags & XM_WL_MESH) ? XM_MESH : XM_FROM_LOCAL;
	if (!(dst_flags & XM_WL_MESH) || (src_flags & XM_WL_MESH))
		return XM_NOT_MESH;
	__builtin_memcpy(key.addr, src->addr, sizeof(key.addr));
	cidr = bpf_map_lookup_elem(&pod_cidrs, &key);
	if (!cidr)
		return XM_NOT_MESH;
	return (cidr->flags & XM_CIDR_DIVERT_UNKNOWN) ? XM_UNKNOWN_DIVERT : XM_UNKNOWN_PASS;
}

/* Classes whose segments the dataplane may own even when malformed, fragmented or
 * with options: dropped then, never passed, so nothing reaches a captured workload
 * around the dataplane. */
static __always_inline int xm_strict_class(enum xm_class class)
{
	return class == XM_MESH || class == XM_TO_LOCAL;
}

/* The reason a segment of `class` that the dataplane cannot take is passed with. */
static __always_inline __u32 xm_pass_reason(enum xm_class class)
{
	return class == XM_UNKNOWN_PASS || class == XM_UNKNOWN_DIVERT ? XM_REASON_PASS_UNKNOWN_SOURCE
								       : XM_REASON_PASS_NOT_MESH;
}

static __always_inline void xm_v4_mapped(struct xm_addr *out, const void *v4)
{
	__builtin_memset(out->addr, 0, 10);
	out->addr[10] = 0xff;
	out->addr[11] = 0xff;
	__builtin_memcpy(&out->addr[12], v4, 4);
}

static __always_inline void xm_learn(__u32 ifindex, const struct xm_addr *addr, const __u8 *mac)
{
	struct xm_neigh_key key = { .ifindex = ifindex };
	struct xm_neigh val = {};

	__builtin_memcpy(key.addr, addr->addr, sizeof(key.addr));
	__builtin_memcpy(val.mac, mac, ETH_ALEN);
	val.updated_ns = bpf_ktime_get_ns();
	bpf_map_update_elem(&neighbors, &key, &val, BPF_ANY);
}

/* RFC 826: both requests and replies carry the sender's binding. */
static __always_inline void xm_snoop_arp(struct xm_cursor *c, __u32 ifindex)
{
	struct xm_arp_eth_ipv4 *arp = xm_parse_arp(c);
	struct xm_addr addr;

	if (!arp)
		return;
	if (arp->htype != bpf_htons(XM_ARPHRD_ETHER) || arp->ptype != bpf_htons(ETH_P_IP) ||
	    arp->hlen != ETH_ALEN || arp->plen != 4)
		return;
	if (arp->oper != bpf_htons(XM_ARPOP_REQUEST) && arp->oper != bpf_htons(XM_ARPOP_REPLY))
		return;
	/* ARP probes (RFC 5227) come from 0.0.0.0 and announce nothing. */
	if ((arp->spa[0] | arp->spa[1] | arp->spa[2] | arp->spa[3]) == 0)
		return;
	if (!xm_mac_is_unicast(arp->sha))
		return;
	xm_v4_mapped(&addr, arp->spa);
	xm_learn(ifindex, &addr, arp->sha);
}

/*
 * RFC 4861: a solicitation's source link-layer option binds the IPv6 source
 * (unless it is :: during duplicate address detection), an advertisement's
 * target link-layer option binds the target. Only hop limit 255 is valid
 * (section 7.1), which keeps off-link senders out.
 */
static __always_inline void xm_snoop_ndp(struct ipv6hdr *ip6, void *data_end, __u32 plen,
					 __u32 ifindex)
{
	struct xm_nd_msg *nd = (void *)(ip6 + 1);
	struct xm_addr addr;
	__u8 want;
	__u32 off;

	if ((void *)(nd + 1) > data_end || plen < sizeof(*nd))
		return;
	if (ip6->hop_limit != 255 || nd->code != 0)
		return;
	if (nd->type == XM_ND_NEIGHBOR_SOLICIT) {
		want = XM_ND_OPT_SOURCE_LL_ADDR;
		__builtin_memcpy(addr.addr, &ip6->saddr, sizeof(addr.addr));
	} else {
		want = XM_ND_OPT_TARGET_LL_ADDR;
		__builtin_memcpy(addr.addr, nd->target, sizeof(addr.addr));
	}
	/* :: (DAD) and multicast (ff00::/8) addresses name no neighbour. */
	if (addr.addr[0] == 0xff)
		return;
	if ((addr.addr[0] | addr.addr[1] | addr.addr[2] | addr.addr[3] | addr.addr[4] |
	     addr.addr[5] | addr.addr[6] | addr.addr[7] | addr.addr[8] | addr.addr[9] |
	     addr.addr[10] | addr.addr[11] | addr.addr[12] | addr.addr[13] | addr.addr[14] |
	     addr.addr[15]) == 0)
		return;

	off = sizeof(*nd);
#pragma unroll
	for (int i = 0; i < XM_ND_MAX_OPTIONS; i++) {
		struct xm_nd_opt_lladdr *opt = (void *)nd + off;

		if ((void *)(opt + 1) > data_end || off + sizeof(*opt) > plen)
			return;
		/* Section 4.6: a zero-length option invalidates the message. */
		if (opt->len == 0)
			return;
		if (opt->type == want) {
			if (opt->len == 1 && xm_mac_is_unicast(opt->addr))
				xm_learn(ifindex, &addr, opt->addr);
			return;
		}
		off += (__u32)opt->len * 8;
	}
}

/* The common tail for a mesh TCP segment that passed validation: the
 * socket of (ingress interface's port, rx queue). An interface without a
 * port, a queue or port beyond the map, or an empty slot all mean XDP_PASS
 * (`pass_no_socket`): fail open. */
static __always_inline int xm_redirect(struct xdp_md *ctx, __u64 bytes, __u32 reason)
{
	__u32 ifindex = ctx->ingress_ifindex;
	__u32 queue = ctx->rx_queue_index;
	struct xm_port *port = bpf_map_lookup_elem(&ports, &ifindex);
	long action;

	if (!port || port->slot >= XM_MAX_PORTS || queue >= XM_MAX_QUEUES)
		return xm_count(XDP_PASS, XM_REASON_PASS_NO_SOCKET, bytes);
	/* Falls back to XDP_PASS when the slot has no socket (lower bits of
	 * flags, Documentation/bpf/redirect.rst). */
	action = bpf_redirect_map(&xsks, port->slot * XM_MAX_QUEUES + queue, XDP_PASS);

	if (action == XDP_REDIRECT)
		return xm_count(XDP_REDIRECT, reason, bytes);
	return xm_count((int)action, XM_REASON_PASS_NO_SOCKET, bytes);
}

static __always_inline void xm_inbound_key(struct xm_inbound_key *key, const struct xm_addr *remote,
					   const struct xm_addr *local, __be16 port)
{
	__builtin_memcpy(key->remote, remote->addr, sizeof(key->remote));
	__builtin_memcpy(key->local, local->addr, sizeof(key->local));
	key->port = port;
	key->_pad = 0;
}

static __always_inline int xm_is_syn(const struct tcphdr *tcp)
{
	return tcp->syn && !tcp->ack;
}

/* To a captured workload from outside the mesh: its HBONE port, every SYN (which
 * makes an `inbound` entry) and the segments of known `inbound` connections go to
 * the dataplane; the rest are replies to the workload's own passthrough
 * connections, the kernel's. */
static __always_inline int xm_to_local(struct xdp_md *ctx, const struct tcphdr *tcp,
				       const struct xm_addr *src, const struct xm_addr *dst,
				       __u64 bytes)
{
	struct xm_inbound_key key;

	if (tcp->dest == bpf_htons(XM_HBONE_PORT))
		return xm_redirect(ctx, bytes, XM_REASON_REDIRECT_MESH);
	xm_inbound_key(&key, src, dst, tcp->dest);
	if (xm_is_syn(tcp)) {
		struct xm_inbound val = { .created_ns = bpf_ktime_get_ns() };

		/* Best effort: should the update fail, the dataplane still gets this
		 * SYN, and the client retransmits it. */
		bpf_map_update_elem(&inbound, &key, &val, BPF_ANY);
		return xm_redirect(ctx, bytes, XM_REASON_REDIRECT_PLAINTEXT);
	}
	if (bpf_map_lookup_elem(&inbound, &key))
		return xm_redirect(ctx, bytes, XM_REASON_REDIRECT_PLAINTEXT);
	return xm_count(XDP_PASS, XM_REASON_PASS_NOT_MESH, bytes);
}

/* An unknown source's SYN is recorded (for the dataplane's log) and, when its
 * range says so, diverted; everything else of it is the kernel's. */
static __always_inline int xm_unknown(struct xdp_md *ctx, const struct tcphdr *tcp,
				      const struct xm_addr *src, __u64 bytes, enum xm_class class)
{
	struct xm_unknown *seen;
	__u64 now;

	if (!xm_is_syn(tcp))
		return xm_count(XDP_PASS, XM_REASON_PASS_UNKNOWN_SOURCE, bytes);
	now = bpf_ktime_get_ns();
	seen = bpf_map_lookup_elem(&unknown_sources, src);
	if (seen) {
		/* Racy across CPUs, and only ever read as an approximate count. */
		seen->last_ns = now;
		seen->syns += 1;
	} else {
		struct xm_unknown first = { .first_ns = now, .last_ns = now, .syns = 1 };

		bpf_map_update_elem(&unknown_sources, src, &first, BPF_NOEXIST);
	}
	if (class == XM_UNKNOWN_DIVERT)
		return xm_redirect(ctx, bytes, XM_REASON_REDIRECT_UNKNOWN_SOURCE);
	return xm_count(XDP_PASS, XM_REASON_PASS_UNKNOWN_SOURCE, bytes);
}

/* RFC 9293 section 3.1: data offset in 32-bit words, at least 5. Malformed
 * segments of the strict classes are dropped, the others' are the kernel's. */
static __always_inline int xm_tcp(struct xdp_md *ctx, struct xm_cursor *c, __u32 l4len,
				  __u64 bytes, enum xm_class class, const struct xm_addr *src,
				  const struct xm_addr *dst)
{
	struct xm_inbound_key key;
	struct tcphdr *tcp;

	if (l4len < sizeof(struct tcphdr))
		goto truncated;
	tcp = xm_parse_tcp(c);
	if (!tcp)
		goto truncated;
	if (tcp->doff < 5 || (__u32)tcp->doff * 4 > l4len) {
		if (xm_strict_class(class))
			return xm_count(XDP_DROP, XM_REASON_DROP_BAD_TCP_HEADER, bytes);
		return xm_count(XDP_PASS, xm_pass_reason(class), bytes);
	}
	switch (class) {
	case XM_MESH:
		return xm_redirect(ctx, bytes, XM_REASON_REDIRECT_MESH);
	case XM_TO_LOCAL:
		return xm_to_local(ctx, tcp, src, dst, bytes);
	case XM_FROM_LOCAL:
		xm_inbound_key(&key, dst, src, tcp->source);
		if (bpf_map_lookup_elem(&inbound, &key))
			return xm_redirect(ctx, bytes, XM_REASON_REDIRECT_PLAINTEXT);
		return xm_count(XDP_PASS, XM_REASON_PASS_NOT_MESH, bytes);
	case XM_UNKNOWN_PASS:
	case XM_UNKNOWN_DIVERT:
		return xm_unknown(ctx, tcp, src, bytes, class);
	default:
		return xm_count(XDP_PASS, XM_REASON_PASS_NOT_MESH, bytes);
	}
truncated:
	if (xm_strict_class(class))
		return xm_count(XDP_DROP, XM_REASON_DROP_TRUNCATED_TCP, bytes);
	return xm_count(XDP_PASS, xm_pass_reason(class), bytes);
}

/* RFC 791 header checks; options and fragments are refused only for mesh
 * traffic, because the userspace TCP stack handles neither. */
static __always_inline int xm_ipv4(struct xdp_md *ctx, struct xm_cursor *c, __u64 bytes)
{
	struct iphdr *iph;
	struct xm_addr src, dst;
	enum xm_class class;
	__u32 avail, hlen, tot;

	avail = xm_packet_remaining(ctx, c, bytes);
	iph = xm_parse_ipv4(c);
	if (!iph)
		return xm_count(XDP_DROP, XM_REASON_DROP_TRUNCATED_IP, bytes);
	hlen = (__u32)iph->ihl * 4;
	tot = bpf_ntohs(iph->tot_len);
	if (iph->version != 4 || iph->ihl < 5 || tot < hlen || tot > avail)
		return xm_count(XDP_DROP, XM_REASON_DROP_BAD_IP_HEADER, bytes);

	if (iph->protocol != IPPROTO_TCP)
		return xm_count(XDP_PASS, XM_REASON_PASS_NON_TCP, bytes);

	xm_v4_mapped(&src, &iph->saddr);
	xm_v4_mapped(&dst, &iph->daddr);
	class = xm_classify(&src, &dst);
	if (class == XM_NOT_MESH)
		return xm_count(XDP_PASS, XM_REASON_PASS_NOT_MESH, bytes);

	/* The userspace stack takes neither fragments nor options. To a captured
	 * workload they are dropped whatever the source: passed, the kernel would
	 * deliver them around the dataplane (a fragment's ports and flags are not
	 * even known). */
	if (iph->frag_off & bpf_htons(XM_IP_MF | XM_IP_OFFSET))
		return xm_strict_class(class)
			       ? xm_count(XDP_DROP, XM_REASON_DROP_MESH_FRAGMENT, bytes)
			       : xm_count(XDP_PASS, xm_pass_reason(class), bytes);
	if (iph->ihl != 5)
		return xm_strict_class(class)
			       ? xm_count(XDP_DROP, XM_REASON_DROP_IP_OPTIONS, bytes)
			       : xm_count(XDP_PASS, xm_pass_reason(class), bytes);
	/* ihl == 5: the cursor already sits on the TCP header. */
	return xm_tcp(ctx, c, tot - hlen, bytes, class, &src, &dst);
}

/* RFC 8200 header checks. */
static __always_inline int xm_ipv6(struct xdp_md *ctx, struct xm_cursor *c, __u64 bytes)
{
	struct ipv6hdr *ip6;
	struct xm_addr src, dst;
	enum xm_class class;
	__u32 plen;
	__u8 nh;

	ip6 = xm_parse_ipv6(c);
	if (!ip6)
		return xm_count(XDP_DROP, XM_REASON_DROP_TRUNCATED_IP, bytes);
	plen = bpf_ntohs(ip6->payload_len);
	if (ip6->version != 6 || plen > xm_packet_remaining(ctx, c, bytes))
		return xm_count(XDP_DROP, XM_REASON_DROP_BAD_IP_HEADER, bytes);

	nh = ip6->nexthdr;
	if (nh == IPPROTO_ICMPV6) {
		struct xm_nd_msg *nd = c->pos;

		if ((void *)(nd + 1) <= c->end &&
		    (nd->type == XM_ND_NEIGHBOR_SOLICIT || nd->type == XM_ND_NEIGHBOR_ADVERT)) {
			xm_snoop_ndp(ip6, c->end, plen, ctx->ingress_ifindex);
			return xm_count(XDP_PASS, XM_REASON_PASS_NDP, bytes);
		}
		return xm_count(XDP_PASS, XM_REASON_PASS_NON_TCP, bytes);
	}
	if (nh != IPPROTO_TCP && !xm_is_ipv6_ext(nh))
		return xm_count(XDP_PASS, XM_REASON_PASS_NON_TCP, bytes);

	__builtin_memcpy(src.addr, &ip6->saddr, sizeof(src.addr));
	__builtin_memcpy(dst.addr, &ip6->daddr, sizeof(dst.addr));
	class = xm_classify(&src, &dst);
	if (class == XM_NOT_MESH)
		return xm_count(XDP_PASS, XM_REASON_PASS_NOT_MESH, bytes);
	/* The userspace stack takes TCP directly after the fixed header only. */
	if (nh != IPPROTO_TCP)
		return xm_strict_class(class) ? xm_count(XDP_DROP, XM_REASON_DROP_IPV6_EXT, bytes)
					      : xm_count(XDP_PASS, xm_pass_reason(class), bytes);
	return xm_tcp(ctx, c, plen, bytes, class, &src, &dst);
}

/* "xdp.frags" (BPF_F_XDP_HAS_FRAGS): the program takes multi-buffer frames, so
 * it attaches to links of any MTU up to 64 KiB (a veth refuses a program without
 * it above about 3.5 KB) and the AF_XDP sockets receive jumbo frames whole
 * (XDP_USE_SG). The headers it reads are in the linear part, which holds at least
 * the first ~3.5 KB of a frame on veth and on drivers that build multi-buffer
 * frames; lengths are of the whole frame (bpf_xdp_get_buff_len), so a
 * jumbo packet's IP length is checked against all of it. */
SEC("xdp.frags")
int xdpmesh_divert(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct xm_cursor c = { .pos = data, .end = data_end };
	__u64 bytes = data_end - data;
	struct ethhdr *eth;
	__be16 proto;

	/* A frame shorter than its Ethernet header is counted at its linear length:
	 * only BPF_PROG_TEST_RUN makes one with a fragment (it pads test input to
	 * ETH_HLEN), and real ones have none. */
	if (bytes >= ETH_HLEN)
		bytes = bpf_xdp_get_buff_len(ctx);

	/* Disabled means a counted no-op: not even malformed frames are
	 * dropped, so turning the dataplane off can never cost traffic. */
	if (!xm_enabled())
		return xm_count(XDP_PASS, XM_REASON_PASS_DISABLED, bytes);

	eth = xm_parse_eth(&c);
	if (!eth)
		return xm_count(XDP_DROP, XM_REASON_DROP_TRUNCATED_ETH, bytes);
	proto = eth->h_proto;
	if (xm_is_vlan(proto))
		return xm_count(XDP_PASS, XM_REASON_PASS_VLAN, bytes);
	if (proto == bpf_htons(ETH_P_ARP)) {
		xm_snoop_arp(&c, ctx->ingress_ifindex);
		return xm_count(XDP_PASS, XM_REASON_PASS_ARP, bytes);
	}
	if (proto == bpf_htons(ETH_P_IP))
		return xm_ipv4(ctx, &c, bytes);
	if (proto == bpf_htons(ETH_P_IPV6))
		return xm_ipv6(ctx, &c, bytes);
	return xm_count(XDP_PASS, XM_REASON_PASS_NON_IP, bytes);
}
