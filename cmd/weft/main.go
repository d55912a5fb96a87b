// Command weft is an event-driven function platform in one binary: an
// embedded CloudEvents broker, Knative-style triggers, autoscaled worker
// processes and a routing layer. `weft serve` runs a node; the other verbs
// talk to a running node's HTTP API.
package main

import (
	"context"
	"os"
)

func main() {
	os.Exit(run(context.Background(), os.Args[1:]))
}
