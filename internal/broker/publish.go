package broker

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/bridge-dev/bridge/internal/core"
	"github.com/redis/rueidis"
)

var (
	// KEYS: stream, idem key ("" key not used when ARGV[2] is ""). ARGV: idPrefix, windowMs ("" = no
	// idempotency), then XADD field/value pairs. Returns {id, duplicate}.
	publishScript = rueidis.NewLuaScript(`
if ARGV[2] ~= '' then
  local prev = redis.call('GET', KEYS[2])
  if prev then return {prev, 1} end
end
local eid = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 3))
local id = ARGV[1] .. eid
if ARGV[2] ~= '' then redis.call('SET', KEYS[2], id, 'PX', ARGV[2]) end
return {id, 0}`)
)

func streamArgs(body []byte, headers map[string]string, extra ...string) []string {
	args := make([]string, 0, 2+len(extra)+2*len(headers))
	args = append(args, extra...)
	args = append(args, payloadField, rueidis.BinaryString(body))
	for k, v := range headers {
		args = append(args, headerField(k), v)
	}
	return args
}

// headerField is the stream field of header k: the prefix and the lower-cased name,
// without an allocation for the headers nearly every message has.
func headerField(k string) string {
	switch k {
	case core.HeaderContentType:
		return headerPrefix + core.HeaderContentType
	case core.HeaderContentEncoding:
		return headerPrefix + core.HeaderContentEncoding
	case core.HeaderTraceparent:
		return headerPrefix + core.HeaderTraceparent
	case core.HeaderTracestate:
		return headerPrefix + core.HeaderTracestate
	case core.HeaderPartitionKey:
		return headerPrefix + core.HeaderPartitionKey
	}
	return headerPrefix + strings.ToLower(k)
}

func idPrefix(subject string) string { return core.MessageID(subject, "") }

// Publish appends a message to the subject's stream in ruststream-fred's layout and
// returns its message id once Redis has confirmed the write.
func (b *Broker) Publish(ctx context.Context, subject string, body []byte, headers map[string]string) (string, error) {
	// Built straight into the command, without the argument slice streamArgs makes: this
	// is every single publish's path.
	cmd := b.c.B().Xadd().Key(subject).Id("*").FieldValue().FieldValue(payloadField, rueidis.BinaryString(body))
	for k, v := range headers {
		cmd = cmd.FieldValue(headerField(k), v)
	}
	id, err := b.c.Do(ctx, cmd.Build()).ToString()
	if err != nil {
		return "", fmt.Errorf("xadd %s: %w", subject, classify(err))
	}
	return core.MessageID(subject, id), nil
}

// PublishMany writes msgs to subject, one result per message in order. Immediate messages
// go out in one pipelined round trip; the idempotency check and the append are one script
// per message, so two concurrent publishes with one key write one message.
func (b *Broker) PublishMany(ctx context.Context, subject string, msgs []core.Outgoing, window time.Duration) []core.Published {
	out := make([]core.Published, len(msgs))
	var now []int
	var execs []rueidis.LuaExec
	for i, m := range msgs {
		if !m.NotBefore.IsZero() && time.Until(m.NotBefore) > 0 {
			out[i] = b.schedule(ctx, subject, m, window)
			continue
		}
		win, key := "", idemKey(subject, "")
		if m.IdempotencyKey != "" {
			win, key = strconv.FormatInt(window.Milliseconds(), 10), idemKey(subject, m.IdempotencyKey)
		}
		now = append(now, i)
		execs = append(execs, rueidis.LuaExec{
			Keys: []string{subject, key},
			Args: append([]string{idPrefix(subject), win}, streamArgs(m.Body, m.Headers)...),
		})
	}
	if len(execs) == 0 {
		return out
	}
	for j, res := range publishScript.ExecMulti(ctx, b.c, execs...) {
		i := now[j]
		arr, err := res.ToArray()
		if err != nil || len(arr) != 2 {
			if err == nil {
				err = fmt.Errorf("unexpected reply")
			}
			out[i] = core.Published{Err: fmt.Errorf("publish to %s: %w", subject, classify(err))}
			continue
		}
		id, _ := arr[0].ToString()
		dup, _ := arr[1].AsInt64()
		out[i] = core.Published{ID: id, Duplicate: dup == 1}
	}
	return out
}
