package broker

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/weft-dev/weft/internal/ceclient"
	"github.com/weft-dev/weft/triggers"
)

// Knative's dead-letter extensions.
// https://knative.dev/docs/eventing/event-delivery/#configuring-subscription-event-delivery
const (
	extErrorCode = "knativeerrorcode"
	extErrorDest = "knativeerrordest"
	extErrorData = "knativeerrordata"
)

// Reasons a dead letter carries in its Weft-Reason header and in metrics.
const (
	reasonExhausted    = "retries_exhausted"
	reasonNotRetryable = "not_retryable"
	reasonTTL          = "ttl_exceeded"
	reasonSinkFailed   = "dead_letter_sink_failed"
	reasonInvalidReply = "invalid_reply"
)

// maxAttemptsKept bounds a dead letter's attempt history.
const maxAttemptsKept = 100

// ErrNotFound is returned for a dead letter or trigger that does not exist.
var ErrNotFound = errors.New("not found")

// DLQEntry is one dead letter of the node DLQ. ID is its JetStream sequence
// number: stable, unique per node, and what show, replay and NATS consumers
// see.
type DLQEntry struct {
	ID       uint64      `json:"id"`
	Trigger  string      `json:"trigger"`
	Reason   string      `json:"reason"`
	Target   string      `json:"target"`
	FailedAt time.Time   `json:"failedAt"`
	Replays  int         `json:"replays"`
	Attempts []Attempt   `json:"attempts"`
	Error    string      `json:"error,omitempty"`
	Event    event.Event `json:"event"`
}

type dlqEntry struct {
	Trigger, Reason, Target, LastError string
	FailedAt                           time.Time
	Attempts                           []Attempt
	Replays                            int
	Event                              event.Event
}

// deadLetter sends a failed event to the trigger's deadLetterSink with
// Knative's error extensions, or, without a sink or when the sink fails too,
// to the node DLQ. A replayed entry that failed again replaces its old entry,
// history appended.
func (b *Broker) deadLetter(ctx context.Context, c *conn, tr *triggers.Trigger, ev event.Event, history []Attempt, cause error, replay *replayRef) error {
	reason := reasonExhausted
	var badReply *ceclient.ReplyError
	switch {
	case errors.As(cause, &badReply):
		reason = reasonInvalidReply // the reply did not decode or validate as a CloudEvent
	case !retryable(cause):
		reason = reasonNotRetryable
	}
	target := tr.Subscriber.Target()
	failed := ev.Clone()
	failed.SetExtension(TTLExtension, nil)
	failed.SetExtension(extErrorDest, target)
	if se, ok := ceclient.IsStatus(cause); ok {
		failed.SetExtension(extErrorCode, se.Code)
		if len(se.Body) > 0 {
			failed.SetExtension(extErrorData, base64.StdEncoding.EncodeToString(se.Body))
		}
	}

	if sink := tr.Delivery.DeadLetterSink; sink != nil && replay == nil {
		chain := Retry(tr.Delivery, nil)(Timeout(tr.Delivery.Timeout)(b.deliverer))
		_, err := chain.Deliver(ctx, sink.Target(), failed)
		if err == nil {
			b.metrics.DeadLettered.WithLabelValues(tr.Name, reason).Inc()
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		b.log.Warn("dead-letter sink failed; keeping the event in the node DLQ", "trigger", tr.Name, "sink", sink.Target(), "err", err)
		reason = reasonSinkFailed
	}

	entry := dlqEntry{
		Trigger: tr.Name, Reason: reason, Target: target, FailedAt: time.Now().UTC(),
		Attempts: history, Event: failed, LastError: cause.Error(),
	}
	if replay != nil {
		if old, err := b.getDLQ(ctx, c, replay.seq); err == nil {
			entry.Attempts = append(old.Attempts, history...)
			entry.Replays = old.Replays + 1
		}
	}
	// The history travels in a header; keep the most recent attempts so an
	// entry replayed again and again stays far below NATS's payload limit.
	if n := len(entry.Attempts); n > maxAttemptsKept {
		entry.Attempts = entry.Attempts[n-maxAttemptsKept:]
	}
	if _, err := b.publishDLQ(ctx, c, entry); err != nil {
		return err
	}
	b.metrics.DeadLettered.WithLabelValues(tr.Name, reason).Inc()
	if replay != nil {
		if err := c.dlq.DeleteMsg(ctx, replay.seq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
			b.log.Warn("old dead letter not removed after failed replay", "id", replay.seq, "err", err)
		}
	}
	return nil
}

func (b *Broker) publishDLQ(ctx context.Context, c *conn, e dlqEntry) (uint64, error) {
	body, err := json.Marshal(&e.Event)
	if err != nil {
		return 0, fmt.Errorf("encode dead letter: %w", err)
	}
	attempts, err := json.Marshal(e.Attempts)
	if err != nil {
		return 0, fmt.Errorf("encode attempts: %w", err)
	}
	if e.Attempts == nil {
		attempts = []byte("[]")
	}
	msg := nats.NewMsg(dlqPrefix + e.Trigger)
	msg.Data = body
	msg.Header.Set("Content-Type", "application/cloudevents+json")
	msg.Header.Set(hdrTrigger, e.Trigger)
	msg.Header.Set(hdrReason, e.Reason)
	msg.Header.Set(hdrTarget, e.Target)
	msg.Header.Set(hdrFailedAt, e.FailedAt.Format(time.RFC3339Nano))
	msg.Header.Set(hdrAttempts, string(attempts))
	msg.Header.Set(hdrReplays, strconv.Itoa(e.Replays))
	if e.LastError != "" {
		msg.Header.Set(hdrError, strings.ToValidUTF8(strings.ReplaceAll(e.LastError, "\n", " "), "?"))
	}
	ack, err := c.js.PublishMsg(ctx, msg, jetstream.WithExpectStream(dlqStream))
	if err != nil {
		return 0, fmt.Errorf("store dead letter: %w", err)
	}
	return ack.Sequence, nil
}

func entryFromMsg(seq uint64, subject string, h nats.Header, data []byte) (*DLQEntry, error) {
	e := &DLQEntry{
		ID:      seq,
		Trigger: strings.TrimPrefix(subject, dlqPrefix),
		Reason:  h.Get(hdrReason),
		Target:  h.Get(hdrTarget),
		Error:   h.Get(hdrError),
	}
	e.FailedAt, _ = time.Parse(time.RFC3339Nano, h.Get(hdrFailedAt))
	e.Replays, _ = strconv.Atoi(h.Get(hdrReplays))
	if a := h.Get(hdrAttempts); a != "" {
		if err := json.Unmarshal([]byte(a), &e.Attempts); err != nil {
			return nil, fmt.Errorf("dead letter %d: attempts: %w", seq, err)
		}
	}
	if err := json.Unmarshal(data, &e.Event); err != nil {
		return nil, fmt.Errorf("dead letter %d: event: %w", seq, err)
	}
	return e, nil
}

// running returns the connection of a running broker, held open (as Store
// holds it) until release is called: a call in flight when the broker stops
// ends before the connection closes.
func (b *Broker) running() (c *conn, release func(), err error) {
	if !b.connGate.TryRLock() {
		return nil, nil, fmt.Errorf("%w: broker stopping", ErrUnavailable)
	}
	if c = b.conn.Load(); c == nil {
		b.connGate.RUnlock()
		return nil, nil, fmt.Errorf("%w: broker not running", ErrUnavailable)
	}
	return c, b.connGate.RUnlock, nil
}

// GetDLQ returns one dead letter, or ErrNotFound.
func (b *Broker) GetDLQ(ctx context.Context, id uint64) (*DLQEntry, error) {
	c, release, err := b.running()
	if err != nil {
		return nil, err
	}
	defer release()
	return b.getDLQ(ctx, c, id)
}

func (b *Broker) getDLQ(ctx context.Context, c *conn, id uint64) (*DLQEntry, error) {
	m, err := c.dlq.GetMsg(ctx, id)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, fmt.Errorf("dead letter %d: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("dead letter %d: %w", id, err)
	}
	return entryFromMsg(m.Sequence, m.Subject, m.Header, m.Data)
}

// DLQFilter selects dead letters. Zero fields select everything.
type DLQFilter struct {
	Trigger string
	Since   time.Time // failed at or after
	Until   time.Time // failed before
	Limit   int       // at most this many, oldest first; 0 = 1000
}

// ListDLQ returns the dead letters that match f, oldest first.
func (b *Broker) ListDLQ(ctx context.Context, f DLQFilter) ([]DLQEntry, error) {
	c, release, err := b.running()
	if err != nil {
		return nil, err
	}
	defer release()
	if f.Limit <= 0 {
		f.Limit = 1000
	}
	subject := dlqPrefix + ">"
	if f.Trigger != "" {
		subject = dlqPrefix + f.Trigger
	}
	info, err := c.dlq.Info(ctx, jetstream.WithSubjectFilter(subject))
	if err != nil {
		return nil, fmt.Errorf("dlq info: %w", err)
	}
	var total uint64
	for _, n := range info.State.Subjects {
		total += n
	}
	out := []DLQEntry{}
	if total == 0 {
		return out, nil
	}
	occ := jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject}}
	if !f.Since.IsZero() {
		occ.DeliverPolicy = jetstream.DeliverByStartTimePolicy
		since := f.Since
		occ.OptStartTime = &since
	}
	cons, err := c.dlq.OrderedConsumer(ctx, occ)
	if err != nil {
		return nil, fmt.Errorf("dlq reader: %w", err)
	}
	for len(out) < f.Limit {
		batch, err := cons.Fetch(min(f.Limit-len(out), 256), jetstream.FetchMaxWait(500*time.Millisecond))
		if err != nil {
			return nil, fmt.Errorf("dlq read: %w", err)
		}
		n, pending := 0, uint64(1)
		for m := range batch.Messages() {
			n++
			meta, err := m.Metadata()
			if err != nil {
				continue
			}
			pending = meta.NumPending
			e, err := entryFromMsg(meta.Sequence.Stream, m.Subject(), m.Headers(), m.Data())
			if err != nil {
				b.log.Warn("skipping unreadable dead letter", "err", err)
				continue
			}
			if !f.Until.IsZero() && !e.FailedAt.Before(f.Until) {
				continue
			}
			if !f.Since.IsZero() && e.FailedAt.Before(f.Since) {
				continue
			}
			out = append(out, *e)
		}
		if batch.Error() != nil && !errors.Is(batch.Error(), nats.ErrTimeout) {
			return nil, fmt.Errorf("dlq read: %w", batch.Error())
		}
		if n == 0 || pending == 0 {
			break
		}
	}
	return out, nil
}

// PurgeDLQ deletes the dead letters of one trigger, or all when trigger is "",
// and returns how many it deleted.
func (b *Broker) PurgeDLQ(ctx context.Context, trigger string) (uint64, error) {
	c, release, err := b.running()
	if err != nil {
		return 0, err
	}
	defer release()
	subject := dlqPrefix + ">"
	if trigger != "" {
		subject = dlqPrefix + trigger
	}
	info, err := c.dlq.Info(ctx, jetstream.WithSubjectFilter(subject))
	if err != nil {
		return 0, fmt.Errorf("dlq info: %w", err)
	}
	var n uint64
	for _, k := range info.State.Subjects {
		n += k
	}
	if err := c.dlq.Purge(ctx, jetstream.WithPurgeSubject(subject)); err != nil {
		return 0, fmt.Errorf("purge dlq: %w", err)
	}
	return n, nil
}

func stripErrorExtensions(ev *event.Event) {
	for _, k := range []string{extErrorCode, extErrorDest, extErrorData} {
		ev.SetExtension(k, nil)
	}
}
