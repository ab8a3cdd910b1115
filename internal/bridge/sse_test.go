package bridge

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

// readAll reads every event of stream, and the error that ended it.
func readAll(stream string) ([]event, error) {
	r := newEventReader(strings.NewReader(stream))
	var evs []event
	for {
		ev, err := r.next()
		if err != nil {
			return evs, err
		}
		ev.data = bytes.Clone(ev.data)
		evs = append(evs, ev)
	}
}

func TestEventReader(t *testing.T) {
	evs, err := readAll(": a comment\n" +
		"event: message\ndata: {\"a\":\ndata:1}\nid: 7\n\n" +
		"\n\n" + // blank lines between events dispatch nothing
		"retry: 10\n\n" + // below the floor
		"retry: 99999999\nid: 8\ndata: x\n\n" +
		"retry: -5\nretry: soon\nevent: ping\ndata: y\n\n" +
		"id: bad\x00id\ndata: z\n\n" +
		"data: never dispatched")
	if err != io.EOF {
		t.Fatalf("err = %v, want io.EOF", err)
	}
	want := []event{
		{name: "message", data: []byte("{\"a\":\n1}"), hasData: true, id: "7", setID: true},
		{id: "7", retry: streamMinDelay},
		{data: []byte("x"), hasData: true, id: "8", setID: true, retry: streamMaxDelay},
		{name: "ping", data: []byte("y"), hasData: true, id: "8"},
		{data: []byte("z"), hasData: true, id: "8"},
	}
	if len(evs) != len(want) {
		t.Fatalf("%d events, want %d: %+v", len(evs), len(want), evs)
	}
	for i := range want {
		g, w := evs[i], want[i]
		if g.name != w.name || !bytes.Equal(g.data, w.data) || g.hasData != w.hasData || g.id != w.id || g.setID != w.setID || g.retry != w.retry {
			t.Errorf("event %d = %+v, want %+v", i, g, w)
		}
	}
}

func TestEventReader_Bounds(t *testing.T) {
	half := strings.Repeat("x", maxMessage/2)
	for name, stream := range map[string]string{
		"one long line":       "data: " + strings.Repeat("x", maxMessage+1) + "\n\n",
		"many lines in total": "data: " + half + "\ndata: " + half + "\ndata: xx\n\n",
	} {
		if _, err := readAll(stream); !errors.Is(err, errEventTooLarge) {
			t.Errorf("%s: err = %v, want errEventTooLarge", name, err)
		}
	}
}

// FuzzEventReader: whatever a server sends, the reader ends, never holds
// an event over maxMessage, never sets an ID with a NUL, and keeps every
// retry within bounds.
func FuzzEventReader(f *testing.F) {
	f.Add("event: message\ndata: {}\nid: 1\nretry: 2000\n\n")
	f.Add(": ping\n\ndata: a\ndata: b\n\n")
	f.Add("id: \x00\nretry: -1\ndata:\n\n")
	f.Add("data: x\r\n\r\n")
	f.Fuzz(func(t *testing.T, stream string) {
		r := newEventReader(strings.NewReader(stream))
		for range len(stream) + 1 {
			ev, err := r.next()
			if err != nil {
				if err != io.EOF && !errors.Is(err, errEventTooLarge) {
					t.Fatalf("unexpected error %v", err)
				}
				return
			}
			if len(ev.data) > maxMessage {
				t.Fatalf("event data of %d bytes", len(ev.data))
			}
			if strings.ContainsRune(ev.id, 0) {
				t.Fatalf("id %q holds a NUL", ev.id)
			}
			if ev.retry != 0 && (ev.retry < streamMinDelay || ev.retry > streamMaxDelay) {
				t.Fatalf("retry %v out of bounds", ev.retry)
			}
			if !ev.hasData && len(ev.data) > 0 {
				t.Fatalf("data without hasData")
			}
		}
		t.Fatalf("the reader did not end after %d events", len(stream)+1)
	})
}
