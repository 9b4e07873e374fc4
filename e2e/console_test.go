package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bridge-dev/bridge/internal/redistest"
	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
)

// TestConsole drives the web console in a real headless Chromium against the real binary
// and Redis: sign-in through the URL fragment, the overview's figures, a dead letter
// replayed from the subscription page and seen delivered, a message looked up by id, and
// a read-only token that is offered no write action. The page must raise no script error
// and break no rule of its Content-Security-Policy.
func TestConsole(t *testing.T) {
	chrome, ok := chromiumPath()
	if !ok {
		t.Skip("no chromium binary: run scripts/ensure-chromium.sh (Debian/Ubuntu: apt-get install chromium) or set CHROMIUM=/path/to/chrome")
	}
	started := time.Now()
	rs := redistest.Start(t, redistest.Options{})
	const (
		admin  = "console-admin-token-0123456789abcdef"
		reader = "console-reader-token-0123456789abcde"
	)
	tokens := filepath.Join(t.TempDir(), "tokens.yaml")
	if err := os.WriteFile(tokens, []byte(fmt.Sprintf(`tokens:
  - {name: ops, token_sha256: %s, scopes: [admin]}
  - {name: viewer, token_sha256: %s, scopes: ["subscriptions:read"]}
`, sum(admin), sum(reader))), 0o600); err != nil {
		t.Fatal(err)
	}
	// startBridge allows loopback targets (BRIDGE_TARGET_ALLOW_CIDRS=127.0.0.1/32).
	br := startBridge(t, redisURL(rs), "BRIDGE_TOKENS_FILE="+tokens)
	api := &tokenClient{t: t, url: br.URL, token: admin}

	good := newReceiver(t, func(w http.ResponseWriter, _ push, _ int) { w.WriteHeader(http.StatusOK) })
	// The first push of each message is refused for good (400: dead-lettered at once);
	// a replay is taken.
	flaky := newReceiver(t, func(w http.ResponseWriter, _ push, nth int) {
		if nth == 0 {
			w.WriteHeader(http.StatusBadRequest)
			_, _ = io.WriteString(w, hostileText)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	const goodSub, flakySub = "console-good", "console-flaky"
	goodSubject, flakySubject := uniq("console.good"), uniq("console.flaky")
	api.put(goodSub, fastSub(good.URL, goodSubject, nil))
	api.put(flakySub, fastSub(flaky.URL, flakySubject, nil))
	goodID := api.publish(goodSubject, `{"n":1}`)
	flakyID := api.publish(flakySubject, `{"n":2,"note":"`+hostileText+`"}`)
	redistest.Eventually(t, 10*time.Second, func() bool {
		return len(good.byID(goodID)) == 1 && api.dlqSize(flakySub) == 1
	}, "setup: the good message not delivered or the flaky one not dead-lettered")

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(ctx,
		chromedp.ExecPath(chrome),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-default-apps", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("no-proxy-server", true),
		// Nothing but the bridge on loopback: any other name fails to resolve.
		chromedp.Flag("host-resolver-rules", "MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1440, 1000),
	)
	defer cancelAlloc()
	tabCtx, cancelTab := chromedp.NewContext(allocCtx)
	defer cancelTab()
	tab := newBrowserPage(t, tabCtx, "admin")
	t.Logf("browser started after %s", time.Since(started).Round(time.Millisecond))

	// Sign in with the token in the fragment: the console keeps it in sessionStorage and
	// takes it out of the URL.
	tab.do("open the console", chromedp.Navigate(br.URL+"/console/#token="+admin))
	tab.until("both subscriptions listed", fmt.Sprintf(`!!document.querySelector(%q) && !!document.querySelector(%q)`,
		testID("sub-row-"+goodSub), testID("sub-row-"+flakySub)))
	if href := evalJS[string](tab, `location.href`); strings.Contains(href, "token") || strings.Contains(href, admin) {
		t.Fatalf("the token is still in the URL: %s", href)
	}
	if got := evalJS[string](tab, `sessionStorage.getItem("bridge.console.token") || ""`); got != admin {
		t.Fatalf("sessionStorage holds %q, want the admin token", got)
	}
	tab.until("signed in as ops", `document.getElementById("who-name").textContent.includes("ops")`)
	cell := func(sub, col string) string {
		return fmt.Sprintf(`(document.querySelector(%q)?.textContent ?? "")`, testID("sub-row-"+sub)+` [data-col="`+col+`"]`)
	}
	tab.until("the overview's figures", strings.Join([]string{
		cell(goodSub, "dlq") + ` === "0"`,
		cell(goodSub, "last-status") + ` === "200"`,
		cell(goodSub, "state") + ` === "active"`,
		cell(goodSub, "transport") + ` === "stream"`,
		cell(goodSub, "subject") + fmt.Sprintf(` === %q`, goodSubject),
		cell(flakySub, "dlq") + ` === "1"`,
		cell(flakySub, "last-status") + ` === "400"`,
		cell(flakySub, "pending") + ` === "0"`,
		cell(flakySub, "last-error") + fmt.Sprintf(`.includes(%q)`, hostileText),
		`document.getElementById("last-updated").textContent.startsWith("updated")`,
		noJunk,
	}, " && "))
	overviewPNG := tab.screenshot("console-overview.png")

	// The failing subscription: its dead letter, selected and replayed.
	tab.do("open the flaky subscription", chromedp.Click(chromedp.CSS(testID("sub-row-"+flakySub)+" a")))
	dlqRow := testID("dlq-row-" + flakyID)
	tab.do("see the dead letter", chromedp.WaitVisible(chromedp.CSS(dlqRow)))
	tab.until("the subscription's stats and config", strings.Join([]string{
		fmt.Sprintf(`document.querySelector(%q)?.textContent.endsWith("1")`, testID("stat-dlq_size")),
		fmt.Sprintf(`document.querySelector('[data-key="subject"]')?.textContent === %q`, flakySubject),
		`!document.querySelector('[data-key="secret"]')`,
		fmt.Sprintf(`document.querySelector(%q)?.textContent.includes("400")`, dlqRow),
		fmt.Sprintf(`document.querySelectorAll(%q).length >= 1`, `[data-testid="attempts"] [data-outcome="dead_letter"]`),
		noJunk,
	}, " && "))
	subscriptionPNG := tab.screenshot("console-subscription.png")
	tab.do("select the dead letter", chromedp.Click(chromedp.CSS(dlqRow+` input[type="checkbox"]`)))
	tab.until("replay enabled", fmt.Sprintf(`!document.querySelector(%q).disabled`, testID("replay-selected")))
	tab.do("replay it", chromedp.Click(chromedp.CSS(testID("replay-selected"))))
	tab.until("the dead letter replayed and delivered", strings.Join([]string{
		fmt.Sprintf(`!document.querySelector(%q)`, dlqRow),
		fmt.Sprintf(`document.querySelector(%q)?.textContent.endsWith("0")`, testID("stat-dlq_size")),
		`document.getElementById("notice-text").textContent === "Replayed 1 dead letter."`,
		fmt.Sprintf(`document.querySelectorAll(%q).length >= 1`, `[data-testid="attempts"] [data-outcome="ack"]`),
	}, " && "))
	redistest.Eventually(t, 5*time.Second, func() bool { return len(flaky.byID(flakyID)) == 2 }, "the receiver did not get the replayed push")

	// The message by id, from the header's search box.
	tab.do("look the message up",
		chromedp.SendKeys(chromedp.ID("message-search"), flakyID),
		chromedp.Click(chromedp.CSS(testID("message-search-go"))))
	tab.until("the message delivered, with its attempts", strings.Join([]string{
		`location.hash === "#/messages/" + encodeURIComponent(` + fmt.Sprintf("%q", flakyID) + `)`,
		fmt.Sprintf(`document.querySelector(%q)?.textContent === %q`, testID("message-subject"), flakySubject),
		fmt.Sprintf(`document.querySelector(%q)?.textContent === %q`, testID("message-body"), `{"n":2,"note":"`+hostileText+`"}`),
		fmt.Sprintf(`document.querySelector(%q)?.textContent === "delivered"`, testID("message-state-"+flakySub)),
		fmt.Sprintf(`[...document.querySelectorAll(%q)].map(r => r.dataset.outcome).join() === "dead_letter,ack"`,
			testID("message-sub-"+flakySub)+" "+testID("attempt-row")),
		noJunk,
	}, " && "))
	messagePNG := tab.screenshot("console-message.png")
	tab.do("an unknown message", chromedp.Evaluate[chromedp.Void](`location.hash = "#/messages/" + encodeURIComponent("nope:1-0")`))
	tab.until("not found shown", fmt.Sprintf(`!!document.querySelector(%q)`, testID("message-not-found")))

	// Recent attempts filtered by outcome.
	tab.do("back to the flaky subscription", chromedp.Evaluate[chromedp.Void](fmt.Sprintf(`location.hash = "#/subscriptions/" + %q`, flakySub)))
	tab.do("filter on ack", chromedp.WaitVisible(chromedp.ID("outcome-filter")), chromedp.Evaluate[chromedp.Void](
		`(s => { s.value = "ack"; s.dispatchEvent(new Event("change")); })(document.getElementById("outcome-filter"))`))
	tab.until("only acks listed", `(o => o.length === 1 && o[0] === "ack")([...document.querySelectorAll('[data-testid="attempts"] [data-testid="attempt-row"]')].map(r => r.dataset.outcome))`)

	// The good subscription: a test message sent from its page, pause and resume, and a
	// secret rotation shown once.
	tab.do("open the good subscription", chromedp.Click(chromedp.CSS(`.crumbs a`)),
		chromedp.WaitVisible(chromedp.CSS(testID("sub-row-"+goodSub))),
		chromedp.Click(chromedp.CSS(testID("sub-row-"+goodSub)+" a")),
		chromedp.WaitVisible(chromedp.CSS(testID("send-test"))),
		chromedp.Click(chromedp.CSS(testID("send-test"))),
		chromedp.WaitVisible(chromedp.CSS(testID("test-message-link"))))
	sentID := evalJS[string](tab, fmt.Sprintf(`document.querySelector(%q).textContent`, testID("test-message-link")))
	redistest.Eventually(t, 10*time.Second, func() bool { return len(good.byID(sentID)) == 1 }, "the test message %q was not pushed", sentID)
	if p := good.byID(sentID)[0]; string(p.Body) != `{"hello":"world"}` || p.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("the test message arrived as %q %q", p.Header.Get("Content-Type"), p.Body)
	}
	tab.do("pause", chromedp.Click(chromedp.CSS(testID("pause"))))
	tab.until("paused", fmt.Sprintf(`document.querySelector(%q)?.textContent.startsWith("paused")`, testID("sub-state")))
	tab.do("resume", chromedp.Click(chromedp.CSS(testID("resume"))))
	tab.until("resumed", fmt.Sprintf(`document.querySelector(%q)?.textContent === "active"`, testID("sub-state")))
	tab.do("rotate the secret", chromedp.Click(chromedp.CSS(testID("rotate-secret"))),
		chromedp.WaitVisible(chromedp.CSS(testID("new-secret-value"))))
	if secret := evalJS[string](tab, fmt.Sprintf(`document.querySelector(%q).textContent`, testID("new-secret-value"))); !strings.HasPrefix(secret, "whsec_") {
		t.Fatalf("the rotated secret shows as %q", secret)
	}
	tab.do("the sent message's page", chromedp.Click(chromedp.CSS(testID("test-message-link"))))
	tab.until("the sent message delivered", strings.Join([]string{
		fmt.Sprintf(`document.querySelector(%q)?.textContent === "delivered"`, testID("message-state-"+goodSub)),
		fmt.Sprintf(`document.querySelector(%q)?.textContent === '{"hello":"world"}'`, testID("message-body")),
		noJunk,
	}, " && "))

	// A second message dead-letters, so the read-only token has a dead letter to look at.
	secondID := api.publish(flakySubject, `{"n":3}`)
	redistest.Eventually(t, 10*time.Second, func() bool { return api.dlqSize(flakySub) == 1 }, "the second message not dead-lettered")

	tab.do("sign out", chromedp.Click(chromedp.ID("sign-out")), chromedp.WaitVisible(chromedp.ID("token-input")))
	if got := evalJS[string](tab, `sessionStorage.getItem("bridge.console.token") || ""`); got != "" {
		t.Fatalf("sessionStorage still holds a token after sign-out")
	}

	// A read-only token in its own browser context (fresh sessionStorage): a wrong token
	// first, then the reader's, typed into the form.
	readerCtx, cancelReader := chromedp.NewContext(tabCtx, chromedp.WithNewBrowserContext())
	defer cancelReader()
	rtab := newBrowserPage(t, readerCtx, "reader")
	rtab.do("open the console signed out", chromedp.Navigate(br.URL+"/console/"), chromedp.WaitVisible(chromedp.ID("token-input")))
	rtab.do("a wrong token", chromedp.SendKeys(chromedp.ID("token-input"), "not-a-token-at-all"), chromedp.Click(chromedp.ID("signin-submit")))
	rtab.until("the token refused", `document.getElementById("signin-message").textContent.includes("not accepted")`)
	rtab.screenshot("console-signin.png")
	rtab.do("the reader's token", chromedp.SendKeys(chromedp.ID("token-input"), reader), chromedp.Click(chromedp.ID("signin-submit")))
	rtab.until("signed in as viewer", fmt.Sprintf(`!!document.querySelector(%q) && document.getElementById("who-name").textContent.includes("viewer")`,
		testID("sub-row-"+flakySub)))
	rtab.do("open the flaky subscription", chromedp.Click(chromedp.CSS(testID("sub-row-"+flakySub)+" a")))
	rtab.do("see its dead letter", chromedp.WaitVisible(chromedp.CSS(testID("dlq-row-"+secondID))))
	for _, id := range []string{"replay-selected", "replay-all", "purge", "pause", "resume", "rotate-secret", "send-test"} {
		if evalJS[bool](rtab, fmt.Sprintf(`!!document.querySelector(%q)`, testID(id))) {
			t.Errorf("the read-only token is offered %s", id)
		}
	}
	if evalJS[bool](rtab, `!!document.querySelector('[data-testid="dead-letters"] input[type="checkbox"]')`) {
		t.Error("the read-only token is offered dead-letter checkboxes")
	}
	rtab.screenshot("console-readonly.png")

	tab.checkClean()
	rtab.checkClean()
	t.Logf("screenshots: %s %s %s", overviewPNG, subscriptionPNG, messagePNG)
	t.Logf("console test took %s", time.Since(started).Round(time.Millisecond))
}

// chromiumPath finds the browser: $CHROMIUM, else Debian's chromium or a Chrome on PATH.
func chromiumPath() (string, bool) {
	names := []string{"chromium", "chromium-browser", "google-chrome-stable", "google-chrome"}
	if c := os.Getenv("CHROMIUM"); c != "" {
		names = append([]string{c}, names...)
	}
	for _, n := range names {
		if p, err := exec.LookPath(n); err == nil {
			return p, true
		}
	}
	return "", false
}

// hostileText is markup in a message body and in a receiver's answer (which the bridge
// shows as last_error): the console must show it as text.
const hostileText = `<img src=x onerror=alert(1)>`

// noJunk holds when the page shows no value the script failed to format, and no markup
// from the API became an element.
const noJunk = `!/\b(null|undefined|NaN)\b|\[object Object\]/.test(document.getElementById("view").innerText) && !document.querySelector("#view img")`

func testID(id string) string { return fmt.Sprintf(`[data-testid=%q]`, id) }

// artifactsDir is $BRIDGE_ARTIFACTS, else artifacts/ at the repository root.
func artifactsDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("BRIDGE_ARTIFACTS")
	if dir == "" {
		root, err := filepath.Abs("..") // tests run in e2e/
		if err != nil {
			t.Fatal(err)
		}
		dir = filepath.Join(root, "artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// browserPage is one tab of the test, and what its page reported: uncaught exceptions
// and console errors (a CSP violation is one).
type browserPage struct {
	t    *testing.T
	ctx  context.Context
	name string
	mu   sync.Mutex
	errs []string
}

const stepTimeout = 15 * time.Second

func newBrowserPage(t *testing.T, ctx context.Context, name string) *browserPage {
	t.Helper()
	p := &browserPage{t: t, ctx: ctx, name: name}
	// Listen starts the browser (or opens the tab) first.
	if err := chromedp.Listen(ctx, func(ev any) {
		var msg string
		switch ev := ev.(type) {
		case *runtime.EventExceptionThrown:
			d := ev.ExceptionDetails
			msg = fmt.Sprintf("exception: %s %s:%d", d.Text, d.URL, d.LineNumber)
			if d.Exception != nil {
				msg += " " + d.Exception.Description
			}
		case *log.EventEntryAdded:
			// Failed requests (the 401 of a wrong token) are the page's business.
			if ev.Entry.Level == "error" && ev.Entry.Source != "network" {
				msg = fmt.Sprintf("console %s: %s", ev.Entry.Source, ev.Entry.Text)
			}
		}
		if msg != "" {
			p.mu.Lock()
			p.errs = append(p.errs, msg)
			p.mu.Unlock()
		}
	}); err != nil {
		t.Fatalf("start the browser: %v", err)
	}
	return p
}

// do runs steps, failing the test with a screenshot of the page when they do not
// complete in time.
func (p *browserPage) do(what string, steps ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, stepTimeout)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		p.fail(what, err)
	}
}

// until waits for a JavaScript condition to hold.
func (p *browserPage) until(what, cond string) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, stepTimeout+time.Second)
	defer cancel()
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](cond,
		chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(stepTimeout))); err != nil {
		p.fail(what, fmt.Errorf("%w (waited for: %s)", err, cond))
	}
}

func evalJS[T any](p *browserPage, expr string) T {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, stepTimeout)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		p.fail("evaluate "+expr, err)
	}
	return v
}

// screenshot saves the whole page as a PNG in the artifacts directory.
func (p *browserPage) screenshot(name string) string {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, stepTimeout)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		p.t.Fatalf("%s: screenshot: %v", p.name, err)
	}
	path := filepath.Join(artifactsDir(p.t), name)
	if err := os.WriteFile(path, png, 0o644); err != nil {
		p.t.Fatal(err)
	}
	p.t.Logf("%s: screenshot %s", p.name, path)
	return path
}

func (p *browserPage) fail(what string, err error) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(p.ctx), 5*time.Second)
	defer cancel()
	if png, serr := chromedp.Run(ctx, chromedp.FullScreenshot(100)); serr == nil {
		path := filepath.Join(artifactsDir(p.t), "console-failure-"+p.name+".png")
		if os.WriteFile(path, png, 0o644) == nil {
			p.t.Logf("%s: failure screenshot %s", p.name, path)
		}
	}
	if text, terr := chromedp.Run(ctx, chromedp.Evaluate[string](`location.href + "\n" + document.body.innerText`)); terr == nil {
		p.t.Logf("%s: page at failure:\n%s", p.name, tail(text, 4000))
	}
	p.mu.Lock()
	errs := strings.Join(p.errs, "\n")
	p.mu.Unlock()
	p.t.Fatalf("%s: %s: %v\npage errors:\n%s", p.name, what, err, errs)
}

// checkClean fails the test when the page threw or broke its CSP.
func (p *browserPage) checkClean() {
	p.t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, e := range p.errs {
		p.t.Errorf("%s: page error: %s", p.name, e)
	}
}

// tokenClient calls the API with a bearer token (the harness's helpers send none).
type tokenClient struct {
	t     *testing.T
	url   string
	token string
}

func (c *tokenClient) do(method, path, contentType string, body []byte, out any) int {
	c.t.Helper()
	req, err := http.NewRequest(method, c.url+path, bytes.NewReader(body))
	if err != nil {
		c.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Content-Type", contentType)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 300 {
		c.t.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, raw)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			c.t.Fatalf("%s %s: decode %q: %v", method, path, raw, err)
		}
	}
	return resp.StatusCode
}

func (c *tokenClient) put(name string, cfg map[string]any) {
	c.t.Helper()
	raw, err := json.Marshal(cfg)
	if err != nil {
		c.t.Fatal(err)
	}
	c.do(http.MethodPut, "/v1/subscriptions/"+name, "application/json", raw, nil)
}

func (c *tokenClient) publish(subject, body string) string {
	c.t.Helper()
	var out struct {
		ID string `json:"id"`
	}
	c.do(http.MethodPost, "/v1/subjects/"+subject+"/messages", "application/json", []byte(body), &out)
	if out.ID == "" {
		c.t.Fatalf("publish to %s returned no id", subject)
	}
	return out.ID
}

func (c *tokenClient) dlqSize(name string) int64 {
	c.t.Helper()
	var s subscription
	c.do(http.MethodGet, "/v1/subscriptions/"+name, "", nil, &s)
	return s.Stats.DLQSize
}
