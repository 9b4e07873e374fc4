package redistest

import (
	"testing"
	"time"
)

// pollInterval is how often Eventually evaluates its condition.
const pollInterval = 20 * time.Millisecond

// Eventually polls cond every 20ms until it returns true or the timeout
// passes, then fails the test with t.Fatalf(format, args...). cond is
// evaluated at least once, and once more after the deadline, so a condition
// that became true during the last interval is not reported as a failure.
// Call it from the test goroutine only.
func Eventually(t testing.TB, timeout time.Duration, cond func() bool, format string, args ...any) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(pollInterval)
	}
	if cond() {
		return
	}
	t.Fatalf(format, args...)
}
