package broker

import (
	"context"
	"fmt"

	"github.com/bridge-dev/bridge/internal/core"
	"github.com/redis/rueidis"
)

// Settle acknowledges a batch of settlements in as few commands as they allow: one XACK per
// stream group, one script per retry set and per processing list, and one XADD per attempt
// to log, all pipelined. A lost
// acknowledgement means a delivery again later, never a loss.
func (b *Broker) Settle(ctx context.Context, batch []core.Settlement) error {
	type subKey struct{ subject, sub string }
	acks := map[subKey][]string{}
	retries := map[subKey][]string{}
	lists := map[string][]string{} // processing list -> raw, id pairs
	listSub := map[string]*core.Subscription{}
	for _, st := range batch {
		k := subKey{st.Sub.Subject, st.Sub.Name}
		switch st.Origin {
		case core.FromStream:
			acks[k] = append(acks[k], st.Handle)
		case core.FromRetry:
			retries[k] = append(retries[k], st.Handle)
		case core.FromList:
			lists[st.Queue] = append(lists[st.Queue], st.Handle, st.ID)
			listSub[st.Queue] = st.Sub
		}
	}
	cmds := make(rueidis.Commands, 0, len(acks))
	for k, ids := range acks {
		cmds = append(cmds, b.c.B().Xack().Key(k.subject).Group(groupName(k.sub)).Id(ids...).Build())
	}
	if b.attemptMax > 0 {
		// Each attempt rides in the same pipeline as the acks: no round trip of its own.
		for _, st := range batch {
			if st.Attempt != nil {
				cmds = append(cmds, b.attemptCmd(st.Sub, st.Attempt))
			}
		}
	}
	execs := make([]rueidis.LuaExec, 0, len(retries))
	for k, ids := range retries {
		execs = append(execs, rueidis.LuaExec{Keys: []string{retryKey(k.subject, k.sub), retryDataKey(k.subject, k.sub), retryCountKey(k.subject, k.sub)}, Args: ids})
	}
	listExecs := make([]rueidis.LuaExec, 0, len(lists))
	for queue, args := range lists {
		s := listSub[queue]
		listExecs = append(listExecs, rueidis.LuaExec{Keys: []string{queue, listCountKey(s.Subject, s.Name)}, Args: args})
	}
	var first error
	note := func(err error) {
		if err != nil && first == nil {
			first = fmt.Errorf("settle: %w", classify(err))
		}
	}
	if len(cmds) > 0 {
		for _, r := range b.c.DoMulti(ctx, cmds...) {
			if err := r.Error(); err != nil && !isNoGroup(err) {
				note(err)
			}
		}
	}
	if len(execs) > 0 {
		for _, r := range ackRetryScript.ExecMulti(ctx, b.c, execs...) {
			note(r.Error())
		}
	}
	if len(listExecs) > 0 {
		for _, r := range ackListScript.ExecMulti(ctx, b.c, listExecs...) {
			note(r.Error())
		}
	}
	return first
}
