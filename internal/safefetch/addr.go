package safefetch

import (
	"fmt"
	"net/netip"
	"strings"
)

// addrClass is what classify says about an IP address.
type addrClass int

const (
	// classPublic is an address that may be dialled.
	classPublic addrClass = iota
	// classLoopback is a loopback address, dialled only with AllowLoopback.
	classLoopback
	// classForbidden is an address that is never dialled.
	classForbidden
)

func (c addrClass) String() string {
	switch c {
	case classPublic:
		return "public"
	case classLoopback:
		return "loopback"
	default:
		return "forbidden"
	}
}

// forbiddenV4 lists the IPv4 ranges that must not be reached from a URL an
// outsider chose. 127.0.0.0/8 is absent because it is classLoopback.
var forbiddenV4 = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),       // "this network", includes unspecified (RFC 791)
	netip.MustParsePrefix("10.0.0.0/8"),      // private (RFC 1918)
	netip.MustParsePrefix("100.64.0.0/10"),   // shared address space, CGNAT (RFC 6598)
	netip.MustParsePrefix("169.254.0.0/16"),  // link-local, cloud metadata (RFC 3927)
	netip.MustParsePrefix("172.16.0.0/12"),   // private (RFC 1918)
	netip.MustParsePrefix("192.0.0.0/24"),    // IETF protocol assignments (RFC 6890)
	netip.MustParsePrefix("192.0.2.0/24"),    // documentation, TEST-NET-1 (RFC 5737)
	netip.MustParsePrefix("192.88.99.0/24"),  // 6to4 relay anycast, deprecated (RFC 7526)
	netip.MustParsePrefix("192.168.0.0/16"),  // private (RFC 1918)
	netip.MustParsePrefix("198.18.0.0/15"),   // benchmarking (RFC 2544)
	netip.MustParsePrefix("198.51.100.0/24"), // documentation, TEST-NET-2 (RFC 5737)
	netip.MustParsePrefix("203.0.113.0/24"),  // documentation, TEST-NET-3 (RFC 5737)
	netip.MustParsePrefix("224.0.0.0/4"),     // multicast (RFC 5771)
	netip.MustParsePrefix("240.0.0.0/4"),     // reserved, includes limited broadcast 255.255.255.255 (RFC 1112, RFC 919)
}

// forbiddenV6 lists the IPv6 ranges that must not be reached. The loopback
// and unspecified addresses and the forms that embed an IPv4 address are
// handled separately by classify.
var forbiddenV6 = []netip.Prefix{
	netip.MustParsePrefix("64:ff9b:1::/48"), // local-use IPv4/IPv6 translation (RFC 8215)
	netip.MustParsePrefix("100::/64"),       // discard-only (RFC 6666)
	netip.MustParsePrefix("2001::/32"),      // Teredo; embeds an obfuscated IPv4 address (RFC 4380)
	netip.MustParsePrefix("2001:db8::/32"),  // documentation (RFC 3849)
	netip.MustParsePrefix("fc00::/7"),       // unique local (RFC 4193)
	netip.MustParsePrefix("fe80::/10"),      // link-local (RFC 4291)
	netip.MustParsePrefix("fec0::/10"),      // site-local, deprecated (RFC 3879)
	netip.MustParsePrefix("ff00::/8"),       // multicast (RFC 4291)
}

var (
	// v4Compatible is ::/96, IPv4-compatible IPv6 (deprecated, RFC 4291 §2.5.5.1).
	v4Compatible = netip.MustParsePrefix("::/96")
	// v4Translated is ::ffff:0:0:0/96, IPv4-translated (RFC 2765 §2.1).
	v4Translated = netip.MustParsePrefix("::ffff:0:0:0/96")
	// nat64 is the well-known NAT64 prefix (RFC 6052 §2.1).
	nat64 = netip.MustParsePrefix("64:ff9b::/96")
	// sixToFour is 6to4 (RFC 3056), which embeds an IPv4 address in bits 16–47.
	sixToFour = netip.MustParsePrefix("2002::/16")
)

// classify reports whether a may be dialled. IPv4-mapped addresses are
// classified as the IPv4 address they map. Other IPv6 forms that embed an
// IPv4 address (IPv4-compatible, IPv4-translated, NAT64, 6to4) are public only
// when the embedded address is public; an embedded loopback address is
// forbidden, not loopback, because such a form does not reach the local host.
// The zone, if any, is ignored. The invalid Addr is forbidden.
func classify(a netip.Addr) addrClass {
	if !a.IsValid() {
		return classForbidden
	}
	a = a.WithZone("").Unmap()
	if a.Is4() {
		return classify4(a)
	}
	switch a {
	case netip.IPv6Loopback():
		return classLoopback
	case netip.IPv6Unspecified():
		return classForbidden
	}
	if v4, ok := embeddedV4(a); ok && classify4(v4) != classPublic {
		return classForbidden
	}
	for _, p := range forbiddenV6 {
		if p.Contains(a) {
			return classForbidden
		}
	}
	return classPublic
}

// classify4 classifies an IPv4 address.
func classify4(a netip.Addr) addrClass {
	if a.IsLoopback() {
		return classLoopback
	}
	for _, p := range forbiddenV4 {
		if p.Contains(a) {
			return classForbidden
		}
	}
	return classPublic
}

// embeddedV4 extracts the IPv4 address from the IPv6 forms that carry one in
// clear (other than IPv4-mapped, which Unmap handles).
func embeddedV4(a netip.Addr) (netip.Addr, bool) {
	b := a.As16()
	switch {
	case v4Compatible.Contains(a), v4Translated.Contains(a), nat64.Contains(a):
		return netip.AddrFrom4([4]byte(b[12:16])), true
	case sixToFour.Contains(a):
		return netip.AddrFrom4([4]byte(b[2:6])), true
	}
	return netip.Addr{}, false
}

// checkAddr returns nil when a may be dialled by a Fetcher whose
// AllowLoopback is allowLoopback. When loopbackOnly is set (a plain http
// request) only loopback addresses pass.
func checkAddr(a netip.Addr, allowLoopback, loopbackOnly bool) error {
	switch classify(a) {
	case classPublic:
		if loopbackOnly {
			return fmt.Errorf("%w: plain http to non-loopback address %s", ErrInsecureScheme, a)
		}
		return nil
	case classLoopback:
		if allowLoopback {
			return nil
		}
	}
	return fmt.Errorf("%w: %s", ErrForbiddenAddress, a)
}

// isLoopbackName reports whether host (lower case, without a trailing dot)
// is "localhost" or a name under it, which RFC 6761 §6.3 reserves for
// loopback. Such names are never sent to a resolver.
func isLoopbackName(host string) bool {
	return host == "localhost" || strings.HasSuffix(host, ".localhost")
}
