package broker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Acknowledgements cost no fsync. On a work-queue stream every ack removes
// its message, and JetStream writes a tombstone for each removal, fsynced
// before the next write when it syncs always: each event paid two fsyncs of
// its own (the event's ack and its delivery's ack) besides the shared one
// that stored it, and the disk's serial fsync rate capped dispatch. So
// WEFT_EVENTS and WEFT_DELIVERIES keep their messages (limits retention) and
// the compactor purges what each consumer has acknowledged below its ack
// floor, in bulk: one purge, one flush, for up to compactBatch acks, and no
// acknowledged message waits longer than about compactDelay (none at all
// while storage is past half its limit).
//
// A consumer's ack state is written by JetStream at most every 100 ms and
// not fsynced, so a crash can forget the acks of the last moments: those
// deliveries, at most compactBatch per consumer, are made again
// (at-least-once, as before; Kafka commits offsets the same way). A clean
// stop loses none. Before a consumer is deleted (an idle trigger going to
// sleep, a restart resetting consumers) its acknowledged prefix is purged,
// so a new consumer, which starts at the first message of its subject,
// never sees what was acknowledged.
const (
	compactTick  = 50 * time.Millisecond  // how often the floors are read while acks come in
	compactBatch = 256                    // acks that make a consumer's prefix worth a purge at once
	compactDelay = 250 * time.Millisecond // the longest a smaller prefix waits
)

// ack and term settle a message of a work stream and tell the compactor.
func (b *Broker) ack(msg jetstream.Msg) error {
	b.settled.Add(1)
	return msg.Ack()
}

func (b *Broker) term(msg jetstream.Msg) error {
	b.settled.Add(1)
	return msg.Term()
}

// compactState is what the compactor knows of one consumer.
type compactState struct {
	streamSeq, consumerSeq uint64    // the ack floor purged to
	at                     time.Time // when it last purged (or first saw the consumer)
}

// compactLoop purges acknowledged messages of the work streams until ctx
// ends. A pass runs only when messages were settled since the last one or a
// consumer still has acknowledged messages to purge, so an idle node asks
// nothing of JetStream.
func (b *Broker) compactLoop(ctx context.Context, c *conn) {
	t := time.NewTicker(compactTick)
	defer t.Stop()
	states := map[string]*compactState{}   // by stream/consumer
	apart := &compactState{at: time.Now()} // the events set apart
	var lastSettled uint64
	left := false // a consumer had acknowledged messages not purged yet
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		settled := b.settled.Load()
		if settled == lastSettled && !left {
			continue
		}
		lastSettled, left = settled, false
		now := time.Now()
		tight := b.storageTight()
		seen := map[string]bool{}
		for _, s := range []jetstream.Stream{c.events, c.dels} {
			stream := s.CachedInfo().Config.Name
			var last uint64 // WEFT_EVENTS' last sequence: the events set apart up to it go
			if s == c.events {
				if info, err := s.Info(ctx); err == nil {
					last = info.State.LastSeq
				}
			}
			l := s.ListConsumers(ctx)
			for ci := range l.Info() {
				key := stream + "/" + ci.Name
				seen[key] = true
				st := states[key]
				if st == nil {
					st = &compactState{at: now}
					states[key] = st
				}
				floor, subject := ci.AckFloor.Stream, ci.Config.FilterSubject
				if s == c.events && ci.Name == dispatchConsumer {
					subject = "" // below the floor, the events set apart go too
				}
				if floor <= st.streamSeq {
					continue
				}
				if !tight && ci.AckFloor.Consumer-st.consumerSeq < compactBatch && now.Sub(st.at) < compactDelay {
					left = true
					continue
				}
				if err := purgeTo(ctx, s, floor, subject); err != nil {
					b.log.Debug("purge acknowledged messages", "stream", stream, "consumer", ci.Name, "err", err)
					left = true
					continue
				}
				*st = compactState{streamSeq: floor, consumerSeq: ci.AckFloor.Consumer, at: now}
			}
			if err := l.Err(); err != nil && ctx.Err() == nil {
				b.log.Debug("list consumers to compact", "stream", stream, "err", err)
				left = true
			}
			if s == c.events && last > apart.streamSeq {
				if !tight && last-apart.streamSeq < compactBatch && now.Sub(apart.at) < compactDelay {
					left = true
				} else if err := purgeApart(ctx, s, last); err != nil {
					b.log.Debug("purge events set apart", "err", err)
					left = true
				} else {
					*apart = compactState{streamSeq: last, at: now}
				}
			}
		}
		for key := range states {
			if !seen[key] {
				delete(states, key)
			}
		}
	}
}

// purgeAcked removes the messages of ci's filter subject (the whole stream
// when it has none) up to and including its ack floor: every one of them is
// acknowledged.
func purgeAcked(ctx context.Context, s jetstream.Stream, ci *jetstream.ConsumerInfo) error {
	if err := purgeTo(ctx, s, ci.AckFloor.Stream, ci.Config.FilterSubject); err != nil {
		return fmt.Errorf("consumer %s: %w", ci.Name, err)
	}
	return nil
}

// purgeTo removes the messages of subject (the whole stream when "") up to
// and including sequence floor.
func purgeTo(ctx context.Context, s jetstream.Stream, floor uint64, subject string) error {
	if floor == 0 {
		return nil
	}
	opts := []jetstream.StreamPurgeOpt{jetstream.WithPurgeSequence(floor + 1)}
	if subject != "" {
		opts = append(opts, jetstream.WithPurgeSubject(subject))
	}
	if err := s.Purge(ctx, opts...); err != nil {
		return fmt.Errorf("purge up to %d: %w", floor, err)
	}
	return nil
}

// purgeApart removes the events set apart (unmatchedSubject) up to last,
// the stream's last sequence: nothing reads them. The dispatcher's ack floor
// does not pass those stored after the last event it acknowledged, and its
// pending counts are not exact enough to purge past the floor unfiltered
// (TestOverload lost matched events that way), so they are purged by
// subject.
func purgeApart(ctx context.Context, s jetstream.Stream, last uint64) error {
	return purgeTo(ctx, s, last, unmatchedSubject)
}

// deleteConsumer purges what consumer name of s acknowledged, then deletes
// it. When the purge fails the consumer stays (a new one would deliver the
// acknowledged messages again); the compactor purges later.
func deleteConsumer(ctx context.Context, s jetstream.Stream, name string) error {
	cons, err := s.Consumer(ctx, name)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("consumer %s: %w", name, err)
	}
	ci, err := cons.Info(ctx)
	if err != nil {
		return fmt.Errorf("consumer %s: %w", name, err)
	}
	if err := purgeAcked(ctx, s, ci); err != nil {
		return err
	}
	if err := s.DeleteConsumer(ctx, name); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return fmt.Errorf("delete consumer %s: %w", name, err)
	}
	return nil
}
