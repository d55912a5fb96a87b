package broker

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ReplayRequest selects dead letters to send again to their trigger. IDs
// select exact entries; otherwise Filter selects (an empty filter, all).
type ReplayRequest struct {
	IDs    []uint64  `json:"ids,omitempty"`
	Filter DLQFilter `json:"-"`
}

// ReplayStatus is the progress of one replay. An entry leaves the DLQ only
// once its subscriber accepted it; one that fails again is kept as a new entry
// with its attempts appended.
type ReplayStatus struct {
	ID        string    `json:"id"`
	Started   time.Time `json:"started"`
	Total     int       `json:"total"`
	Delivered int       `json:"delivered"`
	Failed    int       `json:"failed"`
	// Skipped counts entries whose trigger no longer exists; they stay.
	Skipped []uint64 `json:"skipped,omitempty"`
}

// Done reports whether every selected entry was delivered or failed again.
func (s ReplayStatus) Done() bool { return s.Delivered+s.Failed+len(s.Skipped) >= s.Total }

// replays tracks replay progress in memory. After a restart the replayed
// deliveries still complete (they are in JetStream), but their progress is
// no longer reported.
type replays struct {
	mu   sync.Mutex
	byID map[string]*ReplayStatus
}

type replayRef struct {
	seq uint64
	id  string
}

func replayOf(msg jetstream.Msg) *replayRef {
	h := msg.Headers()
	s := h.Get(hdrDLQSeq)
	if s == "" {
		return nil
	}
	seq, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return nil
	}
	return &replayRef{seq: seq, id: h.Get(hdrReplayID)}
}

// ReplayDLQ queues the selected dead letters for delivery to their trigger
// and returns the replay's initial status; poll ReplayProgress for the rest.
func (b *Broker) ReplayDLQ(ctx context.Context, req ReplayRequest) (*ReplayStatus, error) {
	c, release, err := b.running()
	if err != nil {
		return nil, err
	}
	defer release()
	var entries []DLQEntry
	if len(req.IDs) > 0 {
		for _, id := range req.IDs {
			e, err := b.getDLQ(ctx, c, id)
			if err != nil {
				return nil, err
			}
			entries = append(entries, *e)
		}
	} else {
		f := req.Filter
		if f.Limit == 0 {
			f.Limit = 100_000
		}
		if entries, err = b.ListDLQ(ctx, f); err != nil {
			return nil, err
		}
	}
	st := &ReplayStatus{ID: uuid.NewString(), Started: time.Now().UTC(), Total: len(entries)}
	b.replays.mu.Lock()
	b.replays.byID[st.ID] = st
	b.replays.mu.Unlock()

	idx := b.index.Load()
	for _, e := range entries {
		if _, ok := idx.Get(e.Trigger); !ok {
			b.replays.mu.Lock()
			st.Skipped = append(st.Skipped, e.ID)
			b.replays.mu.Unlock()
			continue
		}
		ev := e.Event.Clone()
		stripErrorExtensions(&ev)
		body, err := ev.MarshalJSON()
		if err != nil {
			return nil, fmt.Errorf("dead letter %d: encode: %w", e.ID, err)
		}
		msg := nats.NewMsg(deliverPrefix + e.Trigger)
		msg.Data = body
		msg.Header.Set(hdrTrigger, e.Trigger)
		msg.Header.Set(hdrDLQSeq, strconv.FormatUint(e.ID, 10))
		msg.Header.Set(hdrReplayID, st.ID)
		// One replay per entry at a time: replaying an entry twice before it
		// settled is deduplicated.
		id := fmt.Sprintf("dlq.%d", e.ID)
		if _, err := c.js.PublishMsg(ctx, msg, jetstream.WithMsgID(id), jetstream.WithExpectStream(deliveriesStream)); err != nil {
			return nil, fmt.Errorf("queue replay of %d: %w", e.ID, err)
		}
	}
	out := b.ReplayProgress(st.ID)
	return out, nil
}

// ReplayProgress returns a copy of a replay's status, or nil if unknown.
func (b *Broker) ReplayProgress(id string) *ReplayStatus {
	b.replays.mu.Lock()
	defer b.replays.mu.Unlock()
	st, ok := b.replays.byID[id]
	if !ok {
		return nil
	}
	cp := *st
	cp.Skipped = append([]uint64(nil), st.Skipped...)
	return &cp
}

// settleReplay records a replayed delivery's outcome; on success the dead
// letter leaves the DLQ.
func (b *Broker) settleReplay(ctx context.Context, c *conn, r *replayRef, delivered bool) {
	if delivered {
		if err := c.dlq.DeleteMsg(ctx, r.seq); err != nil {
			b.log.Debug("replayed dead letter already gone", "id", r.seq, "err", err)
		}
	}
	b.replays.mu.Lock()
	defer b.replays.mu.Unlock()
	st, ok := b.replays.byID[r.id]
	if !ok {
		return
	}
	if delivered {
		st.Delivered++
	} else {
		st.Failed++
	}
}
