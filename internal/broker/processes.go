package broker

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/bridge-dev/bridge/internal/core"
)

// ReportProcess records that consumer is alive and has applied the registry up to version.
func (b *Broker) ReportProcess(ctx context.Context, consumer string, version int64) error {
	v := strconv.FormatInt(version, 10) + ":" + strconv.FormatInt(time.Now().UnixMilli(), 10)
	if err := b.c.Do(ctx, b.c.B().Hset().Key(processesKey).FieldValue().FieldValue(consumer, v).Build()).Error(); err != nil {
		return fmt.Errorf("report process: %w", classify(err))
	}
	return nil
}

// ForgetProcess removes consumer from the live processes (a clean stop, or one long silent).
func (b *Broker) ForgetProcess(ctx context.Context, consumer string) error {
	return classify(b.c.Do(ctx, b.c.B().Hdel().Key(processesKey).Field(consumer).Build()).Error())
}

// Processes returns what every process last reported.
func (b *Broker) Processes(ctx context.Context) (map[string]core.ProcessState, error) {
	all, err := b.c.Do(ctx, b.c.B().Hgetall().Key(processesKey).Build()).AsStrMap()
	if err != nil {
		return nil, fmt.Errorf("read processes: %w", classify(err))
	}
	out := make(map[string]core.ProcessState, len(all))
	for name, v := range all {
		ver, at, _ := strings.Cut(v, ":")
		n, _ := strconv.ParseInt(ver, 10, 64)
		ms, _ := strconv.ParseInt(at, 10, 64)
		out[name] = core.ProcessState{Version: n, At: time.UnixMilli(ms)}
	}
	return out, nil
}
