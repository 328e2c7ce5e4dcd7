/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Bounds-checked header parsing for XDP.
 *
 * Every accessor takes a cursor and returns NULL unless the whole header lies
 * below data_end; the verifier rejects any packet access it cannot prove to
 * be in bounds (Documentation/bpf/verifier.rst, "Direct packet access"), so
 * each helper compares `pos + sizeof(header)` with `end` before returning a
 * pointer. Callers must not read through a pointer they got as NULL.
 */
#ifndef XDPMESH_PARSING_H
#define XDPMESH_PARSING_H

#include <linux/types.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef ETH_P_8021AD
#define ETH_P_8021AD 0x88A8
#endif

/* IPv4 frag_off field (RFC 791): flags in the top 3 bits, offset in 8-byte units. */
#define XM_IP_MF 0x2000
#define XM_IP_OFFSET 0x1FFF

/* ARP for Ethernet/IPv4 (RFC 826); <linux/if_arp.h> leaves the addresses out. */
struct xm_arp_eth_ipv4 {
	__be16 htype;
	__be16 ptype;
	__u8 hlen;
	__u8 plen;
	__be16 oper;
	__u8 sha[ETH_ALEN];
	__u8 spa[4];
	__u8 tha[ETH_ALEN];
	__u8 tpa[4];
} __attribute__((packed));

#define XM_ARPHRD_ETHER 1
#define XM_ARPOP_REQUEST 1
#define XM_ARPOP_REPLY 2

/* ICMPv6 neighbour discovery (RFC 4861 sections 4.3 and 4.4): the common
 * layout of neighbour solicitation and advertisement. */
struct xm_nd_msg {
	__u8 type;
	__u8 code;
	__be16 checksum;
	__be32 flags_reserved;
	__u8 target[16];
};

/* RFC 4861 section 4.6: option header, lengths in units of 8 bytes. */
struct xm_nd_opt_lladdr {
	__u8 type;
	__u8 len;
	__u8 addr[ETH_ALEN];
};

#define XM_ND_NEIGHBOR_SOLICIT 135
#define XM_ND_NEIGHBOR_ADVERT 136
#define XM_ND_OPT_SOURCE_LL_ADDR 1
#define XM_ND_OPT_TARGET_LL_ADDR 2
#define XM_ND_MAX_OPTIONS 4

struct xm_cursor {
	void *pos;
	void *end;
};

/* Returns a pointer to `len` bytes at the cursor and advances past them, or
 * NULL (cursor unchanged) when fewer than `len` bytes remain. */
static __always_inline void *xm_pull(struct xm_cursor *c, __u32 len)
{
	void *p = c->pos;

	if (p + len > c->end)
		return NULL;
	c->pos = p + len;
	return p;
}

static __always_inline struct ethhdr *xm_parse_eth(struct xm_cursor *c)
{
	return xm_pull(c, sizeof(struct ethhdr));
}

static __always_inline struct iphdr *xm_parse_ipv4(struct xm_cursor *c)
{
	return xm_pull(c, sizeof(struct iphdr));
}

static __always_inline struct ipv6hdr *xm_parse_ipv6(struct xm_cursor *c)
{
	return xm_pull(c, sizeof(struct ipv6hdr));
}

static __always_inline struct tcphdr *xm_parse_tcp(struct xm_cursor *c)
{
	return xm_pull(c, sizeof(struct tcphdr));
}

static __always_inline struct xm_arp_eth_ipv4 *xm_parse_arp(struct xm_cursor *c)
{
	return xm_pull(c, sizeof(struct xm_arp_eth_ipv4));
}

/* Bytes between the cursor and data_end (0 when the cursor is past it). */
static __always_inline __u32 xm_remaining(const struct xm_cursor *c)
{
	if (c->pos > c->end)
		return 0;
	return (__u32)(c->end - c->pos);
}

static __always_inline int xm_is_vlan(__be16 proto)
{
	return proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD);
}

/* True when `mac` can name a neighbour: not zero, not group (multicast/broadcast). */
static __always_inline int xm_mac_is_unicast(const __u8 *mac)
{
	if (mac[0] & 1)
		return 0;
	return (mac[0] | mac[1] | mac[2] | mac[3] | mac[4] | mac[5]) != 0;
}

/* IPv6 extension headers that may precede the upper-layer header (RFC 8200
 * section 4 and the IANA "IPv6 Extension Header Types" registry). ESP (50) is
 * left out: nothing after it is readable, so it is treated as a terminal
 * non-TCP payload. */
static __always_inline int xm_is_ipv6_ext(__u8 nexthdr)
{
	switch (nexthdr) {
	case 0:   /* Hop-by-Hop Options */
	case 43:  /* Routing */
	case 44:  /* Fragment */
	case 51:  /* Authentication Header */
	case 60:  /* Destination Options */
	case 135: /* Mobility */
	case 139: /* HIP */
	case 140: /* Shim6 */
	case 253: /* experimental */
	case 254: /* experimental */
		return 1;
	default:
		return 0;
	}
}

#endif /* XDPMESH_PARSING_H */
