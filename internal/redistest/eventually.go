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

// waitUntil is Eventually for conditions that explain themselves: cond
// returns whether it holds and, if not, why; the last reason is in the
// failure message after what.
func waitUntil(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	var why string
	Eventually(t, timeout, func() bool {
		var ok bool
		ok, why = cond()
		return ok
	}, "%s", fmtLazy(func() string { return "redistest: " + what + " within " + timeout.String() + ": " + why }))
}

// fmtLazy formats as the string f returns when printed.
type fmtLazy func() string

func (f fmtLazy) String() string { return f() }
