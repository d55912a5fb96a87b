package broker

import (
	"crypto/rand"
	"encoding/hex"
	"strconv"

	"github.com/cloudevents/sdk-go/v2/event"
)

// Unmatched events. Store matches each event against the triggers in
// force. Once dispatching has begun, an event none matches is set apart: it
// is stored under unmatchedSubject, outside the dispatcher's consumer, and
// purged by the compactor (compact.go, eventsFloor). Handing such events to
// the dispatcher only for it to find nothing to do cost a quarter of the
// ingest rate.
//
// Before dispatching begins (a restarting node applying its files), the
// index may be partial, so an event none matches yet goes to the
// dispatcher, marked with hdrUnmatched: a token naming this broker's run and
// the version of its trigger index. The dispatcher acks a message whose
// token is the current one without decoding it; any change of the triggers
// since (SetTriggers) or a restart makes the token stale, and then the event
// is dispatched as any other.

// hdrUnmatched is on a stored event that matched no trigger when it was
// stored: the unmatchedToken of that moment.
const hdrUnmatched = "Weft-Unmatched"

// Ordering: SetTriggers stores the index, then bumps Broker.indexVersion;
// Store reads the version, then the index. So an event is marked with a
// version no newer than the index it was matched against, and the
// dispatcher trusts the mark only while no newer index has been swapped in
// (in the moment between the two writes of SetTriggers, the index the event
// was matched against is the one the dispatcher would use).

// newRunID returns the random part of unmatched marks: a mark of an earlier
// run is never current.
func newRunID() string {
	var r [8]byte
	_, _ = rand.Read(r[:])
	return hex.EncodeToString(r[:])
}

// unmatchedToken is the mark of events matched against index version v.
// The last one made is kept: versions change rarely, events often.
func (b *Broker) unmatchedToken(v uint64) string {
	if t := b.lastToken.Load(); t != nil && t.version == v {
		return t.token
	}
	t := &versionToken{version: v, token: b.runID + "." + strconv.FormatUint(v, 36)}
	b.lastToken.Store(t)
	return t.token
}

// versionToken is an index version's unmatched mark.
type versionToken struct {
	version uint64
	token   string
}

// unmatchedMark returns the mark of ev if no trigger in force matches it,
// else "". version is b.indexVersion, read before the index.
func (b *Broker) unmatchedMark(version uint64, ev *event.Event) string {
	if len(b.index.Load().MatchBroker(DefaultBroker, *ev)) > 0 {
		return ""
	}
	return b.unmatchedToken(version)
}

// stillUnmatched reports whether a stored event's mark says that the
// triggers in force match it not.
func (b *Broker) stillUnmatched(mark string) bool {
	return mark != "" && mark == b.unmatchedToken(b.indexVersion.Load())
}
