package safefetch

import (
	"errors"
	"net/netip"
	"testing"
)

func TestClassify(t *testing.T) {
	tests := []struct {
		addr string
		want addrClass
	}{
		// Public.
		{"8.8.8.8", classPublic},
		{"1.1.1.1", classPublic},
		{"11.0.0.1", classPublic},
		{"100.63.255.255", classPublic},
		{"100.128.0.0", classPublic},
		{"126.255.255.255", classPublic},
		{"128.0.0.0", classPublic},
		{"169.253.255.255", classPublic},
		{"169.255.0.0", classPublic},
		{"172.15.255.255", classPublic},
		{"172.32.0.0", classPublic},
		{"192.0.1.1", classPublic},
		{"192.167.255.255", classPublic},
		{"192.169.0.0", classPublic},
		{"198.17.255.255", classPublic},
		{"198.20.0.0", classPublic},
		{"223.255.255.255", classPublic},
		{"2606:4700:4700::1111", classPublic},
		{"2a00:1450:4001:81c::200e", classPublic},
		{"::ffff:8.8.8.8", classPublic},
		{"::8.8.8.8", classPublic},             // IPv4-compatible, public inside
		{"64:ff9b::808:808", classPublic},      // NAT64 of 8.8.8.8
		{"2002:808:808::1", classPublic},       // 6to4 of 8.8.8.8
		{"::ffff:0:808:808", classPublic},      // IPv4-translated 8.8.8.8
		{"2001:4860:4860::8888", classPublic},  // not Teredo (2001:0::/32)
		{"fbff:ffff:ffff::1", classPublic},     // just below fc00::/7
		{"fe00::1", classPublic},               // between fc00::/7 and fe80::/10
		{"feff:ffff::1", classForbidden},       // fec0::/10
		{"2001:db7:ffff:ffff::1", classPublic}, // just below documentation

		// Loopback.
		{"127.0.0.1", classLoopback},
		{"127.1.2.3", classLoopback},
		{"127.255.255.255", classLoopback},
		{"::1", classLoopback},
		{"::ffff:127.0.0.1", classLoopback},

		// Forbidden IPv4.
		{"0.0.0.0", classForbidden},
		{"0.1.2.3", classForbidden},
		{"10.0.0.1", classForbidden},
		{"10.255.255.255", classForbidden},
		{"100.64.0.1", classForbidden},
		{"100.127.255.255", classForbidden},
		{"169.254.169.254", classForbidden},
		{"172.16.0.1", classForbidden},
		{"172.31.255.255", classForbidden},
		{"192.0.0.8", classForbidden},
		{"192.0.2.1", classForbidden},
		{"192.168.0.1", classForbidden},
		{"192.168.255.255", classForbidden},
		{"198.18.0.1", classForbidden},
		{"198.19.255.255", classForbidden},
		{"198.51.100.7", classForbidden},
		{"203.0.113.9", classForbidden},
		{"224.0.0.1", classForbidden},
		{"239.255.255.250", classForbidden},
		{"240.0.0.1", classForbidden},
		{"255.255.255.255", classForbidden},

		// Forbidden IPv6.
		{"::", classForbidden},
		{"fc00::1", classForbidden},
		{"fd12:3456:789a::1", classForbidden},
		{"fe80::1", classForbidden},
		{"fe80::1%eth0", classForbidden},
		{"febf:ffff::1", classForbidden},
		{"fec0::1", classForbidden},
		{"ff02::1", classForbidden},
		{"ff05::1:3", classForbidden},
		{"100::1", classForbidden},
		{"2001:db8::1", classForbidden},
		{"2001:0:4136:e378:8000:63bf:3fff:fdd2", classForbidden}, // Teredo
		{"64:ff9b:1::a00:1", classForbidden},

		// Mapped and embedded forms of forbidden or loopback IPv4.
		{"::ffff:0.0.0.0", classForbidden},
		{"::ffff:10.0.0.1", classForbidden},
		{"::ffff:169.254.169.254", classForbidden},
		{"::ffff:192.168.1.1", classForbidden},
		{"::ffff:100.64.0.1", classForbidden},
		{"::ffff:255.255.255.255", classForbidden},
		{"::10.0.0.1", classForbidden},
		{"::127.0.0.1", classForbidden}, // IPv4-compatible loopback does not reach the host
		{"::169.254.169.254", classForbidden},
		{"::0.0.0.2", classForbidden},
		{"::ffff:0:10.0.0.1", classForbidden},
		{"::ffff:0:127.0.0.1", classForbidden},
		{"64:ff9b::a00:1", classForbidden},
		{"64:ff9b::7f00:1", classForbidden},
		{"64:ff9b::a9fe:a9fe", classForbidden},
		{"2002:a00:1::1", classForbidden},
		{"2002:7f00:1::", classForbidden},
		{"2002:a9fe:a9fe::1", classForbidden},
	}
	for _, tt := range tests {
		a := netip.MustParseAddr(tt.addr)
		if got := classify(a); got != tt.want {
			t.Errorf("classify(%s) = %v, want %v", tt.addr, got, tt.want)
		}
	}
	if got := classify(netip.Addr{}); got != classForbidden {
		t.Errorf("classify(invalid) = %v, want forbidden", got)
	}
}

func TestCheckAddr(t *testing.T) {
	public := netip.MustParseAddr("8.8.8.8")
	loop := netip.MustParseAddr("127.0.0.1")
	private := netip.MustParseAddr("10.1.2.3")
	tests := []struct {
		addr                        netip.Addr
		allowLoopback, loopbackOnly bool
		want                        error
	}{
		{public, false, false, nil},
		{public, true, false, nil},
		{public, true, true, ErrInsecureScheme},
		{loop, false, false, ErrForbiddenAddress},
		{loop, true, false, nil},
		{loop, true, true, nil},
		{private, false, false, ErrForbiddenAddress},
		{private, true, false, ErrForbiddenAddress},
		{private, true, true, ErrForbiddenAddress},
		{netip.Addr{}, true, false, ErrForbiddenAddress},
	}
	for _, tt := range tests {
		err := checkAddr(tt.addr, tt.allowLoopback, tt.loopbackOnly)
		if tt.want == nil && err != nil || tt.want != nil && !errors.Is(err, tt.want) {
			t.Errorf("checkAddr(%v, %v, %v) = %v, want %v", tt.addr, tt.allowLoopback, tt.loopbackOnly, err, tt.want)
		}
	}
}

func TestLooksNumeric(t *testing.T) {
	for name, want := range map[string]bool{
		"127.1":       true,
		"2130706433":  true,
		"0x7f.1":      true,
		"0x7f000001":  true,
		"a.b.0x10":    true,
		"example.com": false,
		"1.example":   false,
		"0xzz":        false,
		"x":           false,
		"host.":       false,
	} {
		if got := looksNumeric(name); got != want {
			t.Errorf("looksNumeric(%q) = %v, want %v", name, got, want)
		}
	}
}

// FuzzClassify checks classify against the standard library's own
// predicates and checks that every way of writing an IPv4 address inside an
// IPv6 one is classified no more permissively than the IPv4 address itself.
func FuzzClassify(f *testing.F) {
	for _, s := range []string{
		"::1", "::", "127.0.0.1", "10.0.0.1", "8.8.8.8", "169.254.169.254",
		"fe80::1", "fd00::1", "ff02::1", "2606:4700::1", "::ffff:10.0.0.1",
		"64:ff9b::a00:1", "2002:a00:1::", "255.255.255.255", "100.64.0.1",
	} {
		b := netip.MustParseAddr(s).As16()
		f.Add(b[:], "")
	}
	f.Add(make([]byte, 4), "eth0")
	f.Fuzz(func(t *testing.T, raw []byte, zone string) {
		var a netip.Addr
		switch len(raw) {
		case 4:
			a = netip.AddrFrom4([4]byte(raw))
		case 16:
			a = netip.AddrFrom16([16]byte(raw))
			if zone != "" {
				a = a.WithZone(zone)
			}
		default:
			return
		}
		c := classify(a)
		u := a.WithZone("").Unmap()

		if c != classify(u) {
			t.Fatalf("classify(%v) = %v but classify(%v) = %v", a, c, u, classify(u))
		}
		if (c == classLoopback) != u.IsLoopback() {
			t.Fatalf("classify(%v) = %v, IsLoopback = %v", a, c, u.IsLoopback())
		}
		if c == classPublic && (u.IsPrivate() || u.IsLinkLocalUnicast() ||
			u.IsLinkLocalMulticast() || u.IsInterfaceLocalMulticast() ||
			u.IsMulticast() || u.IsUnspecified() || !u.IsGlobalUnicast()) {
			t.Fatalf("classify(%v) = public, but the standard library says it is special", a)
		}

		if !u.Is4() {
			return
		}
		b4 := u.As4()
		forms := map[string]netip.Addr{
			"mapped":     netip.AddrFrom16([16]byte{10: 0xff, 11: 0xff, 12: b4[0], 13: b4[1], 14: b4[2], 15: b4[3]}),
			"compatible": netip.AddrFrom16([16]byte{12: b4[0], 13: b4[1], 14: b4[2], 15: b4[3]}),
			"translated": netip.AddrFrom16([16]byte{8: 0xff, 9: 0xff, 12: b4[0], 13: b4[1], 14: b4[2], 15: b4[3]}),
			"nat64":      netip.AddrFrom16([16]byte{1: 0x64, 2: 0xff, 3: 0x9b, 12: b4[0], 13: b4[1], 14: b4[2], 15: b4[3]}),
			"6to4":       netip.AddrFrom16([16]byte{0: 0x20, 1: 0x02, 2: b4[0], 3: b4[1], 4: b4[2], 5: b4[3]}),
		}
		for name, v6 := range forms {
			got := classify(v6)
			switch {
			case name == "mapped" && got != c:
				t.Fatalf("%s form %v = %v, IPv4 %v = %v", name, v6, got, u, c)
			case name != "mapped" && c != classPublic && got == classPublic:
				t.Fatalf("%s form %v is public but IPv4 %v is %v", name, v6, u, c)
			}
		}
	})
}
