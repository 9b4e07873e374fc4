package httpapi

import (
	"net/http"
	"testing"
	"time"
)

func TestSharedDeadlines(t *testing.T) {
	var d sharedDeadlines
	before := time.Now()
	ctx := d.get()
	dl, ok := ctx.Deadline()
	if !ok || dl.Before(before.Add(requestTimeout-deadlineTick)) || dl.After(time.Now().Add(requestTimeout)) {
		t.Fatalf("deadline %v, want about %s from now", dl, requestTimeout)
	}
	if d.get() != ctx {
		t.Fatal("a second publish within the tick got a new context")
	}
	time.Sleep(deadlineTick + 10*time.Millisecond)
	next := d.get()
	if next == ctx {
		t.Fatal("the context was handed out after its tick")
	}
	if dl2, _ := next.Deadline(); !dl2.After(dl) {
		t.Fatalf("the next deadline %v is not later than %v", dl2, dl)
	}
}

func TestHeaderIsGetForCanonicalNames(t *testing.T) {
	h := http.Header{}
	h.Set("content-type", "a/b")
	h.Set("bridge-partition-key", "k")
	for _, name := range []string{"Content-Type", "Bridge-Partition-Key", "Traceparent"} {
		if header(h, name) != h.Get(name) {
			t.Errorf("header(%q) = %q, Get says %q", name, header(h, name), h.Get(name))
		}
	}
}
