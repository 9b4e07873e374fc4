package console

import (
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
)

func get(t *testing.T, path string) (*http.Response, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	resp := rec.Result()
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

func TestServesFilesWithStrictHeaders(t *testing.T) {
	for _, tt := range []struct {
		path, contentType string
	}{
		{"/console/", "text/html"},
		{"/console/console.js", "text/javascript"},
		{"/console/console.css", "text/css"},
	} {
		t.Run(tt.path, func(t *testing.T) {
			resp, body := get(t, tt.path)
			if resp.StatusCode != http.StatusOK || body == "" {
				t.Fatalf("status %d, %d bytes", resp.StatusCode, len(body))
			}
			if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, tt.contentType) {
				t.Errorf("Content-Type %q, want %s", ct, tt.contentType)
			}
			for k, want := range map[string]string{
				"Content-Security-Policy": csp,
				"X-Content-Type-Options":  "nosniff",
				"X-Frame-Options":         "DENY",
				"Referrer-Policy":         "no-referrer",
			} {
				if got := resp.Header.Get(k); got != want {
					t.Errorf("%s = %q, want %q", k, got, want)
				}
			}
		})
	}
}

// The CSP forbids inline script and style, and API data must never become markup: keep
// the page's files to what the policy and that rule allow.
func TestNoInlineCodeNoMarkupFromData(t *testing.T) {
	_, html := get(t, "/console/")
	for _, bad := range []*regexp.Regexp{
		regexp.MustCompile(`<script(?:\s[^>]*)?>[^<]`), // a script with a body
		regexp.MustCompile(`(?i)<style`),
		regexp.MustCompile(`(?i)\sstyle=`),
		regexp.MustCompile(`(?i)\son[a-z]+=`),
		regexp.MustCompile(`(?i)(src|href)=["']?(https?:)?//`),
	} {
		if m := bad.FindString(html); m != "" {
			t.Errorf("index.html has %q (%s)", m, bad)
		}
	}
	for _, tag := range regexp.MustCompile(`(?i)<script[^>]*>`).FindAllString(html, -1) {
		if !strings.Contains(tag, " src=") {
			t.Errorf("index.html has an inline script: %s", tag)
		}
	}
	_, js := get(t, "/console/console.js")
	for _, bad := range []string{"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function", "http://", "https://"} {
		if strings.Contains(js, bad) {
			t.Errorf("console.js uses %s", bad)
		}
	}
	_, css := get(t, "/console/console.css")
	for _, bad := range []string{"@import", "url(", "@font-face"} {
		if strings.Contains(css, bad) {
			t.Errorf("console.css uses %s", bad)
		}
	}
}
