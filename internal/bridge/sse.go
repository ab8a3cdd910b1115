package bridge

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
)

// readStream reads server-sent events from body, forwarding the messages
// to the host, until the stream ends. It reports whether any message came
// and the reconnection delay the server asked for. An event is bounded by
// maxMessage: a larger one ends the stream.
func (b *Bridge) readStream(s *session, body io.Reader, lastID *string) (progress bool, retry time.Duration) {
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 0, 64<<10), maxMessage)
	var data bytes.Buffer
	hasData := false
	event := ""
	for sc.Scan() {
		line := sc.Text()
		if line == "" { // dispatch
			if hasData && (event == "" || event == "message") {
				if msg, err := jsonrpc.DecodeMessage(data.Bytes()); err != nil {
					b.log.Warn("ignoring an event of the server that is not JSON-RPC", "error", err)
				} else {
					progress = true
					b.fromRemote(s, msg)
				}
			}
			data.Reset()
			hasData, event = false, ""
			continue
		}
		if strings.HasPrefix(line, ":") {
			continue
		}
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch field {
		case "data":
			if data.Len()+len(value)+1 > maxMessage {
				// An event that never ends: drop the stream rather than memory.
				b.log.Warn("the server's event is larger than the limit; dropping the stream", "limit", maxMessage)
				return progress, retry
			}
			if hasData {
				data.WriteByte('\n')
			}
			data.WriteString(value)
			hasData = true
		case "event":
			event = value
		case "id":
			*lastID = value
		case "retry":
			var ms int64
			if _, err := fmt.Sscan(value, &ms); err == nil && ms >= 0 {
				// Bounded: a server may not make the bridge spin or stop.
				retry = min(max(time.Duration(ms)*time.Millisecond, streamMinDelay), streamMaxDelay)
			}
		}
	}
	return progress, retry
}
