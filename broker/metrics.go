package broker

import "github.com/prometheus/client_golang/prometheus"

// Metrics holds the broker's Prometheus collectors. Register them once with
// Register; a nil *Metrics is not allowed, use NewMetrics.
type Metrics struct {
	Received     *prometheus.CounterVec // by transport: http, nats
	Rejected     *prometheus.CounterVec // by reason: invalid, too_large, unsupported_media_type, method, overloaded, unavailable, storage_full, timeout
	Stored       prometheus.Counter
	Duplicates   prometheus.Counter
	Delivered    *prometheus.CounterVec // by trigger
	Retried      *prometheus.CounterVec // by trigger
	DeadLettered *prometheus.CounterVec // by trigger, reason: retries_exhausted, not_retryable, ttl_exceeded
	LoopsCut     prometheus.Counter
	SlotWaits    *prometheus.CounterVec // by outcome: acquired, timed_out, busy
	CommitEvents prometheus.Histogram   // events per fsynced commit of the ingress (group commit)

	StorageUsed  prometheus.Gauge // JetStream disk use, bytes
	StorageLimit prometheus.Gauge // its limit, bytes

	CircuitState    *prometheus.GaugeVec   // by subscriber: 0 closed, 1 open, 2 half-open
	CircuitOpened   *prometheus.CounterVec // by subscriber
	CircuitRejected *prometheus.CounterVec // by subscriber
	CircuitProbes   *prometheus.CounterVec // by subscriber
}

// NewMetrics builds the collectors; they are not registered.
func NewMetrics() *Metrics {
	return &Metrics{
		CommitEvents: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "weft_store_commit_events",
			Help:    "Events stored by each fsynced commit of the ingress: 1 for an event published on its own, the batch's size for a group commit. Not observed with --relaxed-sync, where no commit is fsynced.",
			Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128, 250},
		}),
		Received: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "weft_events_received_total", Help: "Events received by the ingress, before validation.",
		}, []string{"transport"}),
		Rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "weft_events_rejected_total", Help: "Events or requests refused by the ingress, by reason.",
		}, []string{"reason"}),
		Stored: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weft_events_stored_total", Help: "Events stored in JetStream and acknowledged.",
		}),
		Duplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weft_events_duplicate_total", Help: "Events acknowledged but not stored again: same (source, id) within the dedup window.",
		}),
		Delivered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "weft_events_delivered_total", Help: "Events a subscriber accepted, by trigger.",
		}, []string{"trigger"}),
		Retried: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "weft_delivery_retries_total", Help: "Delivery attempts after the first, by trigger.",
		}, []string{"trigger"}),
		DeadLettered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "weft_events_dead_lettered_total", Help: "Events sent to a dead-letter sink or the node DLQ, by trigger and reason.",
		}, []string{"trigger", "reason"}),
		LoopsCut: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weft_reply_loops_cut_total", Help: "Replies dropped to the DLQ because their knativebrokerttl reached zero.",
		}),
		SlotWaits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "weft_dispatch_slot_waits_total", Help: "Waits of the dispatcher for a busy trigger's delivery slot, by outcome: acquired (delivered directly), timed_out (the trigger finished too few deliveries meanwhile; it counts as slow and the delivery was stored) or busy (it kept finishing deliveries but no slot came free within the longest wait; the delivery was stored).",
		}, []string{"outcome"}),
		StorageUsed: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "weft_storage_used_bytes", Help: "JetStream disk use; at 90% of weft_storage_limit_bytes the ingress refuses events.",
		}),
		StorageLimit: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "weft_storage_limit_bytes", Help: "JetStream's disk limit (--max-store-bytes or 75% of the free disk).",
		}),
		CircuitState: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "weft_circuit_state", Help: "Delivery circuit of a subscriber: 0 closed, 1 open, 2 half-open.",
		}, []string{"subscriber"}),
		CircuitOpened: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "weft_circuit_opened_total", Help: "Times a subscriber's delivery circuit opened.",
		}, []string{"subscriber"}),
		CircuitRejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "weft_circuit_rejected_total", Help: "Delivery attempts refused by an open circuit, without calling the subscriber.",
		}, []string{"subscriber"}),
		CircuitProbes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "weft_circuit_probes_total", Help: "Half-open probes let through to a subscriber.",
		}, []string{"subscriber"}),
	}
}

// Register adds every collector to reg.
func (m *Metrics) Register(reg prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m.Received, m.Rejected, m.Stored, m.Duplicates, m.Delivered, m.Retried, m.DeadLettered, m.LoopsCut, m.SlotWaits, m.CommitEvents, m.StorageUsed, m.StorageLimit,
		m.CircuitState, m.CircuitOpened, m.CircuitRejected, m.CircuitProbes} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}
