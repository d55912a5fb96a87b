package broker

import (
	"context"
	"fmt"
	"time"
)

// Storage guard. When JetStream's disk use reaches storageHighWater of its
// limit, the ingress refuses new events (503, ErrStorageFull) and the node
// reports not ready, while deliveries, replies and dead letters of events
// already accepted still have the rest of the space to move through; it
// accepts again once use falls under storageLowWater, so it does not flap.
const (
	storageHighWater = 0.90
	storageLowWater  = 0.80
	storagePoll      = 250 * time.Millisecond
)

// StorageUsage is JetStream's disk use against its limit.
type StorageUsage struct {
	Used, Limit uint64 // bytes
	Full        bool   // the ingress refuses new events
}

// Storage reports JetStream's disk use as last sampled (every 250ms).
func (b *Broker) Storage() StorageUsage {
	if u := b.storage.Load(); u != nil {
		return *u
	}
	return StorageUsage{}
}

// StorageError tells why the ingress is refusing events: nil while it accepts.
// Between samples it adds what the ingress stored since the last one, so a
// burst cannot run past the high-water mark for a whole sampling period.
func (b *Broker) StorageError() error {
	u := b.Storage()
	used := u.Used + uint64(max(b.storedSince.Load(), 0))
	if !u.Full && u.Limit > 0 && float64(used) >= storageHighWater*float64(u.Limit) {
		b.storageTripped.Store(true) // the next sample keeps refusing until under the low-water mark
		u.Full = true
	}
	if u.Full {
		return fmt.Errorf("%w: JetStream uses %d of %d bytes; accepting again under %.0f%%",
			ErrStorageFull, used, u.Limit, storageLowWater*100)
	}
	return nil
}

// storageTight reports whether JetStream's estimated use is past half its
// limit: then the compactor purges acknowledged messages at once rather
// than in batches, so that what is done does not take the room of what
// is not.
func (b *Broker) storageTight() bool {
	u := b.Storage()
	used := u.Used + uint64(max(b.storedSince.Load(), 0))
	return u.Limit > 0 && used*2 >= u.Limit
}

// watchStorage samples disk use until ctx ends.
func (b *Broker) watchStorage(ctx context.Context, c *conn) {
	t := time.NewTicker(storagePoll)
	defer t.Stop()
	for {
		b.sampleStorage(c)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (b *Broker) sampleStorage(c *conn) {
	// Reset first: bytes stored while Jsz runs are counted twice, never missed.
	since := b.storedSince.Swap(0)
	info, err := c.ns.Jsz(nil)
	if err != nil {
		b.storedSince.Add(since)
		b.log.Warn("storage use not sampled", "err", err)
		return
	}
	u := StorageUsage{Used: info.Store}
	if info.Config.MaxStore > 0 {
		u.Limit = uint64(info.Config.MaxStore)
	}
	prev := b.Storage()
	prev.Full = b.storageTripped.Swap(false) || prev.Full
	switch ratio := float64(u.Used) / float64(max(u.Limit, 1)); {
	case u.Limit == 0:
	case ratio >= storageHighWater:
		u.Full = true
	case ratio >= storageLowWater:
		u.Full = prev.Full
	}
	if u.Full != prev.Full {
		if u.Full {
			b.log.Warn("storage nearly full: refusing new events", "used_bytes", u.Used, "limit_bytes", u.Limit)
		} else {
			b.log.Info("storage has room again: accepting events", "used_bytes", u.Used, "limit_bytes", u.Limit)
		}
	}
	b.metrics.StorageUsed.Set(float64(u.Used))
	b.metrics.StorageLimit.Set(float64(u.Limit))
	b.storage.Store(&u)
}
