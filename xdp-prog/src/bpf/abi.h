/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * xdpmesh map ABI: the single source of truth for every BPF map layout that
 * the XDP program and userspace share. The Rust mirrors live in
 * xdp-prog/src/abi.rs and assert the same sizes at compile time; change both
 * together and bump XM_ABI_VERSION.
 *
 * Rules: fixed-size types only, explicit padding fields (zeroed by writers),
 * natural alignment, no implicit tail padding. Map keys in particular must
 * have no hole, because the kernel hashes every key byte.
 */
#ifndef XDPMESH_ABI_H
#define XDPMESH_ABI_H

#include <linux/types.h>

#define XM_ABI_VERSION 3

/* Map sizes. `xsks` has XM_MAX_PORTS * XM_MAX_QUEUES slots: one per
 * (port, rx queue), at slot * XM_MAX_QUEUES + rx_queue_index. */
#define XM_MAX_QUEUES 64
#define XM_MAX_PORTS 8
#define XM_MAX_WORKLOADS 65536
#define XM_MAX_NEIGHBORS 4096
#define XM_MAX_INBOUND 65536
#define XM_MAX_POD_CIDRS 256
#define XM_MAX_UNKNOWN_SOURCES 1024

/* HBONE inbound port (docs/ARCHITECTURE.md, "Ports and names"): diverted for a
 * local workload from any source. */
#define XM_HBONE_PORT 15008

/* Key of `workloads` and address part of `neighbors`: an IPv6 address in
 * network byte order; IPv4 is stored v4-mapped (::ffff:a.b.c.d, RFC 4291
 * section 2.5.5.2). */
struct xm_addr {
	__u8 addr[16];
};

/*
 * xm_workload.flags. How a TCP segment is classified (divert.bpf.c, xm_classify):
 * - src LOCAL|MESH to dst LOCAL, or src LOCAL to dst MESH: mesh traffic, diverted;
 * - any other source to dst LOCAL: every SYN is diverted (and its connection
 *   remembered in `inbound`), so no connection reaches a captured pod around its
 *   peer authentication and policies; later segments are diverted when they
 *   belong to such a connection, else passed (replies to the pod's own
 *   connections to destinations outside the mesh);
 * - src LOCAL to a destination outside the mesh: diverted when it belongs to an
 *   `inbound` connection (the pod's side of it), else passed (passthrough);
 * - a source in `pod_cidrs` that is no workload, to dst MESH: an unknown source;
 *   its SYN is diverted when the range says XM_CIDR_DIVERT_UNKNOWN, else passed;
 * - the rest is passed.
 * An address with neither flag counts as outside the mesh.
 */
#define XM_WL_LOCAL 1u /* captured workload served by this gateway */
#define XM_WL_MESH 2u /* mesh workload served by another gateway */

struct xm_workload {
	__u32 flags;
	__u32 _pad;
};

/* Key of `inbound`: a connection from outside the mesh to a captured workload,
 * without the remote port (the dataplane's leg to the pod uses a port of its own,
 * and the pod's replies must match too). */
struct xm_inbound_key {
	__u8 remote[16]; /* as struct xm_addr */
	__u8 local[16];	 /* the workload's address, as struct xm_addr */
	__u16 port;	 /* the workload's port, network byte order */
	__u16 _pad;
};

struct xm_inbound {
	__u64 created_ns; /* bpf_ktime_get_ns() of the SYN that made it */
};

/* Key of the `pod_cidrs` LPM trie: prefixlen counts bits of the 128-bit address
 * (96 + the IPv4 prefix for a v4-mapped range). */
struct xm_cidr_key {
	__u32 prefixlen;
	__u8 addr[16];
};

#define XM_CIDR_DIVERT_UNKNOWN 1u /* divert unknown sources' SYNs (reject or hold) */

struct xm_cidr {
	__u32 flags;
	__u32 _pad;
};

/* Value of `unknown_sources` (key: struct xm_addr): SYNs from an unknown source
 * to mesh destinations, seen by this program. */
struct xm_unknown {
	__u64 first_ns;
	__u64 last_ns;
	__u64 syns;
};

/* Value of `ports` (key: __u32 ingress ifindex): the interface's port
 * number, which selects its block of XM_MAX_QUEUES slots in `xsks`.
 * slot < XM_MAX_PORTS. */
struct xm_port {
	__u32 slot;
	__u32 _pad;
};

/* xm_config.flags */
#define XM_CFG_ENABLED 1u /* divert mesh traffic; when clear, every frame is XDP_PASS */

struct xm_config {
	__u32 flags;
	__u32 _pad;
};

/* One slot of the per-CPU `counters` array: frames and bytes (whole frame,
 * from the Ethernet header on) per verdict reason. */
struct xm_counter {
	__u64 packets;
	__u64 bytes;
};

struct xm_neigh_key {
	__u32 ifindex; /* ingress ifindex the advertisement was seen on */
	__u8 addr[16]; /* as struct xm_addr */
};

/* No `_pad2` word between `_pad` and `updated_ns`: mac + _pad already end on
 * an 8-byte boundary, and a u32 there would leave a hidden 4-byte hole. */
struct xm_neigh {
	__u8 mac[6];
	__u16 _pad;
	__u64 updated_ns; /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) of the last sighting */
};

/*
 * Why a frame got its verdict. Every frame increments exactly one reason.
 * The numeric values index `counters` and are ABI: append new reasons
 * before XM_REASON_MAX, never renumber. Names (Rust `Reason::name`) are the
 * snake_case of the suffix and become metric labels.
 */
enum xm_reason {
	XM_REASON_REDIRECT_MESH = 0,
	XM_REASON_PASS_NO_SOCKET = 1,
	XM_REASON_PASS_DISABLED = 2,
	XM_REASON_PASS_VLAN = 3,
	XM_REASON_PASS_ARP = 4,
	XM_REASON_PASS_NON_IP = 5,
	XM_REASON_PASS_NON_TCP = 6,
	XM_REASON_PASS_NOT_MESH = 7,
	XM_REASON_PASS_NDP = 8,
	XM_REASON_DROP_TRUNCATED_ETH = 9,
	XM_REASON_DROP_TRUNCATED_IP = 10,
	XM_REASON_DROP_BAD_IP_HEADER = 11,
	XM_REASON_DROP_MESH_FRAGMENT = 12,
	XM_REASON_DROP_IP_OPTIONS = 13,
	XM_REASON_DROP_IPV6_EXT = 14,
	XM_REASON_DROP_TRUNCATED_TCP = 15,
	XM_REASON_DROP_BAD_TCP_HEADER = 16,
	XM_REASON_REDIRECT_PLAINTEXT = 17,
	XM_REASON_PASS_UNKNOWN_SOURCE = 18,
	XM_REASON_REDIRECT_UNKNOWN_SOURCE = 19,
	XM_REASON_MAX = 20,
};

_Static_assert(sizeof(struct xm_addr) == 16, "xm_addr ABI");
_Static_assert(sizeof(struct xm_workload) == 8, "xm_workload ABI");
_Static_assert(sizeof(struct xm_port) == 8, "xm_port ABI");
_Static_assert(sizeof(struct xm_config) == 8, "xm_config ABI");
_Static_assert(sizeof(struct xm_counter) == 16, "xm_counter ABI");
_Static_assert(sizeof(struct xm_neigh_key) == 20, "xm_neigh_key ABI");
_Static_assert(sizeof(struct xm_neigh) == 16, "xm_neigh ABI");
_Static_assert(sizeof(struct xm_inbound_key) == 36, "xm_inbound_key ABI");
_Static_assert(sizeof(struct xm_inbound) == 8, "xm_inbound ABI");
_Static_assert(sizeof(struct xm_cidr_key) == 20, "xm_cidr_key ABI");
_Static_assert(sizeof(struct xm_cidr) == 8, "xm_cidr ABI");
_Static_assert(sizeof(struct xm_unknown) == 24, "xm_unknown ABI");

#endif /* XDPMESH_ABI_H */
