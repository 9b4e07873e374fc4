package delivery

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/iotest"
)

// The push path skips Client.Do when the client adds nothing; it must still never follow
// a redirect, and fail with the same texts.
func TestPushSenderDoesNotFollowRedirects(t *testing.T) {
	var followed bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/elsewhere" {
			followed = true
			return
		}
		http.Redirect(w, r, "/elsewhere", http.StatusFound)
	}))
	defer srv.Close()
	send := pushSender(NewHTTPClient(nil))
	req, _ := http.NewRequest(http.MethodPost, srv.URL+"/hook", strings.NewReader("x"))
	resp, err := send(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusFound || followed {
		t.Fatalf("status %d, followed %v: want the 302 itself", resp.StatusCode, followed)
	}
}

func TestPushSenderErrorsReadAsClientErrors(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL + "/hook"
	srv.Close() // nothing listens there now
	c := NewHTTPClient(nil)
	post := func(send func(*http.Request) (*http.Response, error)) string {
		req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader("x"))
		_, err := send(req)
		if err == nil {
			t.Fatal("a push to a closed port succeeded")
		}
		return describeTransportError(err, 0)
	}
	if direct, viaDo := post(pushSender(c)), post(c.Do); direct != viaDo {
		t.Fatalf("error text %q, Client.Do says %q", direct, viaDo)
	}
}

func TestPushSenderKeepsClientTimeout(t *testing.T) {
	c := &http.Client{Timeout: 1}
	if send := pushSender(c); send == nil {
		t.Fatal("no sender")
	}
	// With a client timeout the client itself must send (only Do enforces it): a request
	// to a handler that never answers times out at once.
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-release }))
	defer srv.Close()
	defer close(release)
	req, _ := http.NewRequest(http.MethodPost, srv.URL, strings.NewReader("x"))
	if _, err := pushSender(c)(req); err == nil {
		t.Fatal("the client's 1ns timeout was not applied")
	}
}

func TestDiscardReadsAtMostN(t *testing.T) {
	r := strings.NewReader(strings.Repeat("x", 10000))
	discard(r, 5000)
	if r.Len() != 5000 {
		t.Fatalf("%d bytes left, want 5000", r.Len())
	}
	discard(r, 1<<20)
	if r.Len() != 0 {
		t.Fatalf("%d bytes left, want 0", r.Len())
	}
	discard(iotest.ErrReader(io.ErrUnexpectedEOF), 10) // returns on an error
	discard(http.NoBody, 10)
}
