// Package broker is weft's event plane: the embedded nats-server with
// JetStream, the HTTP and NATS ingress, the dispatcher that matches stored
// events against triggers, delivery with Knative's retry policy, and the
// dead-letter queue.
//
// Invariants:
//   - An event is acknowledged to its publisher (HTTP 202, NATS ack) only after
//     JetStream stored it; JetStream runs with SyncAlways unless the operator
//     asked for relaxed sync, so a stored event survives kill -9.
//   - An event leaves a stream only after the next durable step holds it: the
//     dispatcher acks an event once every matching trigger's delivery is
//     stored, a trigger's runner acks a delivery once the subscriber accepted
//     it, or its dead letter is stored.
//   - Delivery is at least once; (source, id) duplicates inside the dedup
//     window are stored once.
//
// broker imports triggers (matching) and internal packages, never workers or
// router: subscribers are reached through the Deliverer interface.
package broker
