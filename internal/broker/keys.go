package broker

import "strconv"

// Key layout. The subject is the stream key itself (ruststream-fred interop). Every other
// key of a subject carries "{subject}" as its hash tag; a key without braces hashes as a
// whole, so "orders" and "bridge:{orders}:…" share a cluster slot and scripts touching
// both stay legal on Redis Cluster. Subjects cannot contain braces.
const subscriptionsKey = "bridge:subscriptions"

func groupName(sub string) string { return "bridge:" + sub }

func retryKey(subject, sub string) string { return "bridge:{" + subject + "}:retry:" + sub }

func retryDataKey(subject, sub string) string { return "bridge:{" + subject + "}:retry-data:" + sub }

func retryCountKey(subject, sub string) string {
	return "bridge:{" + subject + "}:retry-count:" + sub
}

func dlqKey(subject, sub string) string { return "bridge:{" + subject + "}:dlq:" + sub }

// markerKey holds the incarnation of a live subscription (see core.Subscription.Incarnation)
// in its subject's slot. Every script that writes a subscription's own keys checks it first,
// so a push still in flight when its subscription was deleted (or deleted and created again)
// settles without writing anything.
func markerKey(subject, sub string) string { return "bridge:{" + subject + "}:sub:" + sub }

// Stream fields of ruststream-fred's layout.
const (
	payloadField = "_payload"
	headerPrefix = "h:"
)

// sizeField is added by pageScript to an entry whose payload it cut: the whole size.
const sizeField = "_size"

// List keys of a reliable list subscription: each process moves messages into its own
// processing list and proves it is alive with a heartbeat in the consumers zset.
func processingKey(subject, sub, consumer string) string {
	return "bridge:{" + subject + "}:processing:" + sub + ":" + consumer
}

func consumersKey(subject, sub string) string { return "bridge:{" + subject + "}:consumers:" + sub }

func listCountKey(subject, sub string) string { return "bridge:{" + subject + "}:list-count:" + sub }

// An ordered subscription is delivered by one process at a time, the holder of a lease;
// the others wait to take over when it lapses.
func leaderKey(subject, sub string) string { return "bridge:{" + subject + "}:leader:" + sub }

// processesKey is a hash of the live bridge processes: consumer name -> "<applied registry
// version>:<unix ms of the report>". A management call waits on it until every live process
// has applied its change (SPEC §4).
const processesKey = "bridge:processes"

// idField carries a message id assigned before the entry existed (scheduled publishes).
const idField = "_id"

func idemKey(subject, key string) string { return "bridge:{" + subject + "}:idem:" + key }

// ackedKey holds a subject's safe trim points as they were observed: member = the
// smallest entry id some consumer group still needs, score = when it was first seen. The
// newest sample older than the retention is what may go: everything before it had been
// acknowledged by every group for at least that long.
func ackedKey(subject string) string { return "bridge:{" + subject + "}:acked" }

// subjectsKey remembers every subject the bridge published to, so any process trims the
// streams of subjects that have no subscription.
const subjectsKey = "bridge:subjects"

// A subscription's counters are shared by every process in one hash: counters grow by
// HINCRBY; each process reports its in-flight count in its own field with the time it
// wrote it, so a process that died stops counting once its report is stale.
func statsKey(subject, sub string) string { return "bridge:{" + subject + "}:stats:" + sub }

// Subscriptions live in one hash, name -> JSON, so every bridge process sees the same set.
// The field "_version" (a name can never start with '_') is bumped by every change, letting
// processes poll one small value instead of the whole hash.
const versionField = "_version"

// ChangesChannel carries "<version>:<subscription name>" after every registry change, so
// processes can apply it at once, reading that one subscription, instead of at their next
// poll (which still catches anything missed).
const ChangesChannel = "bridge:subscriptions:changed"

// WakeChannel carries the subject of new messages a bridge process published, so the
// others read it at once instead of at their next sweep.
const WakeChannel = "bridge:wake"

// Schedules (SPEC §11) live in one hash like subscriptions, name -> JSON, with a
// "_version" field bumped by every change so processes poll one small value.
const schedulesKey = "bridge:schedules"

// tickKey marks one tick of a schedule as published, in its subject's slot so the fire
// script checks it and appends to the stream atomically. It expires after tickMarkerTTL.
func tickKey(subject, schedule string, tickMs int64) string {
	return "bridge:{" + subject + "}:tick:" + schedule + ":" + strconv.FormatInt(tickMs, 10)
}

// lastTickKey holds the unix ms of the latest tick of a schedule that was published to
// subject, written by the same script as the message.
func lastTickKey(subject, schedule string) string {
	return "bridge:{" + subject + "}:last-tick:" + schedule
}
