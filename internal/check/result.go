// Package check tests MCP clients and servers from the outside against the
// refresh and challenge rules of docs/design.md#client-rules and
// docs/design.md#server-rules: the suite behind `evergrant check client`
// and `evergrant check server`.
package check

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// Outcome of one scenario.
type Outcome string

// Outcomes.
const (
	Pass Outcome = "pass"
	Fail Outcome = "fail"
	// Info is for informational scenarios (for example proactive refresh,
	// which the refresh proposal recommends but does not require): never a
	// failure.
	Info Outcome = "info"
	// Skip means the scenario could not run (for example it needs a flag).
	Skip Outcome = "skip"
)

// Result is the result of one scenario.
type Result struct {
	// Scenario is the scenario's name, for --scenario.
	Scenario string `json:"scenario"`
	// Rule names the rule it checks: an anchor in docs/design.md, e.g.
	// "client-rule-1", or a specification section, e.g. "RFC 6750 §3.1".
	Rule    string  `json:"rule"`
	Outcome Outcome `json:"outcome"`
	// Detail says what the client or server did, in a sentence a person can
	// act on. It never contains token material.
	Detail string `json:"detail"`
}

// Report is the results of a run.
type Report struct {
	Target  string   `json:"target"`
	Results []Result `json:"results"`
}

// Failed reports whether any result failed.
func (r *Report) Failed() bool {
	for _, res := range r.Results {
		if res.Outcome == Fail {
			return true
		}
	}
	return false
}

// Counts returns how many results have each outcome.
func (r *Report) Counts() map[Outcome]int {
	c := map[Outcome]int{}
	for _, res := range r.Results {
		c[res.Outcome]++
	}
	return c
}

// WriteTable writes the report as an aligned table with a summary line.
func (r *Report) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RESULT\tSCENARIO\tRULE\tDETAIL")
	for _, res := range r.Results {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", strings.ToUpper(string(res.Outcome)), res.Scenario, res.Rule, res.Detail)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	c := r.Counts()
	_, err := fmt.Fprintf(w, "\n%s: %d passed, %d failed, %d informational, %d skipped\n", r.Target, c[Pass], c[Fail], c[Info], c[Skip])
	return err
}

// WriteJSON writes the report as one JSON object.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}
