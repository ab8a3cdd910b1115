package safefetch

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// loopbackOnlyKey marks, in a request's context, a plain http request whose
// connection may only go to a loopback address.
type loopbackOnlyKey struct{}

// minAttempt is the least time one connection attempt gets when a name has
// several addresses and the deadline is shared among them.
const minAttempt = 2 * time.Second

// dialContext is the Transport's DialContext. It resolves the host itself,
// refuses the whole name if any address it resolves to is not allowed, and
// then dials the checked addresses (never the name, so a second resolution
// cannot substitute another address). The net.Dialer's Control hook checks
// the address of every socket again just before it connects.
func (f *Fetcher) dialContext(ctx context.Context, network, address string) (net.Conn, error) {
	host, portText, err := net.SplitHostPort(address)
	if err != nil {
		return nil, fmt.Errorf("safefetch: dial %q: %w", address, err)
	}
	port, err := strconv.ParseUint(portText, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("safefetch: dial %q: invalid port: %w", address, err)
	}
	loopbackOnly := ctx.Value(loopbackOnlyKey{}) != nil

	addrs, err := f.resolve(ctx, host)
	if err != nil {
		return nil, fmt.Errorf("safefetch: resolve %q: %w", host, err)
	}
	if len(addrs) == 0 {
		return nil, fmt.Errorf("safefetch: resolve %q: no addresses", host)
	}
	for i, a := range addrs {
		if err := checkAddr(a, f.AllowLoopback, loopbackOnly); err != nil {
			return nil, fmt.Errorf("safefetch: dial %q: %w", host, err)
		}
		addrs[i] = a.Unmap()
	}

	d := &net.Dialer{Control: f.control(loopbackOnly)}
	var errs []error
	for i, a := range addrs {
		attemptCtx, cancel := attemptContext(ctx, len(addrs)-i)
		conn, err := d.DialContext(attemptCtx, network, netip.AddrPortFrom(a, uint16(port)).String())
		cancel()
		if err == nil {
			return conn, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return nil, fmt.Errorf("safefetch: dial %q: %w", host, errors.Join(errs...))
}

// attemptContext gives one of remaining connection attempts its share of
// ctx's deadline, but at least minAttempt (bounded by the deadline itself).
func attemptContext(ctx context.Context, remaining int) (context.Context, context.CancelFunc) {
	deadline, ok := ctx.Deadline()
	if !ok || remaining <= 1 {
		return ctx, func() {}
	}
	left := time.Until(deadline)
	share := left / time.Duration(remaining)
	if share < minAttempt {
		share = min(minAttempt, left)
	}
	return context.WithTimeout(ctx, share)
}

// resolve returns the candidate addresses for host: the address itself for
// an IP literal, 127.0.0.1 and ::1 for a loopback name, else what the
// resolver says.
func (f *Fetcher) resolve(ctx context.Context, host string) ([]netip.Addr, error) {
	if a, err := netip.ParseAddr(host); err == nil {
		return []netip.Addr{a}, nil
	}
	name := strings.TrimSuffix(strings.ToLower(host), ".")
	if isLoopbackName(name) {
		return []netip.Addr{netip.AddrFrom4([4]byte{127, 0, 0, 1}), netip.IPv6Loopback()}, nil
	}
	if f.lookup != nil {
		return f.lookup(ctx, host)
	}
	return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
}

// control returns a net.Dialer Control hook that refuses to connect a
// socket to an address that is not allowed.
func (f *Fetcher) control(loopbackOnly bool) func(network, address string, c syscall.RawConn) error {
	return func(network, address string, _ syscall.RawConn) error {
		ap, err := netip.ParseAddrPort(address)
		if err != nil {
			return fmt.Errorf("%w: unparsable dial address %q", ErrForbiddenAddress, address)
		}
		return checkAddr(ap.Addr(), f.AllowLoopback, loopbackOnly)
	}
}
