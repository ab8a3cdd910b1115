package bridge

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
)

// event is one server-sent event of a stream (the WHATWG HTML "server-sent
// events" format that MCP's streamable HTTP transport uses).
type event struct {
	// name is the event's type, "" for the default "message".
	name string
	// data is the event's data, its lines joined with "\n"; hasData is
	// false for an event with no data field.
	data    []byte
	hasData bool
	// id is the last event ID the stream set up to this event (it stays
	// set across events), and setID reports whether this event set it.
	id    string
	setID bool
	// retry is the reconnection delay this event asked for, bounded to
	// [streamMinDelay, streamMaxDelay]; 0 when it asked for none.
	retry time.Duration
}

// errEventTooLarge ends a stream whose event outgrows maxMessage.
var errEventTooLarge = errors.New("the server's event is larger than the limit")

// eventReader reads server-sent events from a stream a server controls:
// every line and every event is bounded by maxMessage, and a retry the
// server asks for is bounded too.
type eventReader struct {
	sc *bufio.Scanner
	id string
}

func newEventReader(r io.Reader) *eventReader {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), maxMessage)
	return &eventReader{sc: sc}
}

// next returns the next event. At the end of the stream it returns io.EOF
// (a last event without its blank line is dropped, as the format says);
// an event or a line over maxMessage gives errEventTooLarge, and a failed
// read its error.
func (r *eventReader) next() (event, error) {
	var ev event
	var data bytes.Buffer
	started := false
	for r.sc.Scan() {
		line := r.sc.Text()
		if line == "" { // dispatch
			if !started {
				continue
			}
			ev.data, ev.id = data.Bytes(), r.id
			return ev, nil
		}
		started = true
		if strings.HasPrefix(line, ":") {
			continue
		}
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch field {
		case "data":
			if data.Len()+len(value)+1 > maxMessage {
				// An event that never ends: drop the stream rather than memory.
				return event{}, errEventTooLarge
			}
			if ev.hasData {
				data.WriteByte('\n')
			}
			data.WriteString(value)
			ev.hasData = true
		case "event":
			ev.name = value
		case "id":
			if !strings.ContainsRune(value, 0) {
				r.id, ev.setID = value, true
			}
		case "retry":
			var ms int64
			if _, err := fmt.Sscan(value, &ms); err == nil && ms >= 0 {
				// Bounded: a server may not make the bridge spin or stop.
				ev.retry = min(max(time.Duration(ms)*time.Millisecond, streamMinDelay), streamMaxDelay)
			}
		}
	}
	switch err := r.sc.Err(); {
	case errors.Is(err, bufio.ErrTooLong):
		return event{}, errEventTooLarge
	case err != nil:
		return event{}, err
	}
	return event{}, io.EOF
}

// readStream reads server-sent events from body, forwarding the messages
// to the host, until the stream ends. It reports whether any message came
// and the reconnection delay the server asked for (the last one). An event
// is bounded by maxMessage: a larger one ends the stream.
func (b *Bridge) readStream(s *session, body io.Reader, lastID *string) (progress bool, retry time.Duration) {
	r := newEventReader(body)
	for {
		ev, err := r.next()
		if errors.Is(err, errEventTooLarge) {
			b.log.Warn("the server's event is larger than the limit; dropping the stream", "limit", maxMessage)
		}
		if err != nil {
			return progress, retry
		}
		if ev.setID {
			*lastID = ev.id
		}
		if ev.retry > 0 {
			retry = ev.retry
		}
		if !ev.hasData || (ev.name != "" && ev.name != "message") {
			continue
		}
		msg, err := jsonrpc.DecodeMessage(ev.data)
		if err != nil {
			b.log.Warn("ignoring an event of the server that is not JSON-RPC", "error", err)
			continue
		}
		progress = true
		b.fromRemote(s, msg)
	}
}
