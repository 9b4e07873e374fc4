package auth

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
)

func tokensFile(entries ...[2]string) string {
	s := "tokens:\n"
	for _, e := range entries {
		s += fmt.Sprintf("  - {name: %s, token_sha256: %s, scopes: [admin]}\n", e[0], digest(e[1]))
	}
	return s
}

func TestStoreReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tokens.yaml")
	writeFile(t, path, tokensFile([2]string{"old", "old-secret"}))
	static := Static("static-secret")

	st := NewStore(nil)
	if st.Current() == nil || st.Current().Len() != 0 {
		t.Fatal("NewStore(nil) does not hold an empty set")
	}
	if err := st.Reload(path, static); err != nil {
		t.Fatal(err)
	}
	assertTokens(t, st, map[string]bool{"old-secret": true, "static-secret": true, "new-secret": false})

	t.Run("success swaps the set", func(t *testing.T) {
		writeFile(t, path, tokensFile([2]string{"new", "new-secret"}))
		if err := st.Reload(path, static); err != nil {
			t.Fatal(err)
		}
		assertTokens(t, st, map[string]bool{"old-secret": false, "static-secret": true, "new-secret": true})
	})

	t.Run("failure keeps the old set", func(t *testing.T) {
		before := st.Current()
		writeFile(t, path, "tokens: [{name: broken, token_sha256: nothex, scopes: [admin]}]")
		if err := st.Reload(path, static); err == nil {
			t.Fatal("Reload of a bad file succeeded")
		}
		if st.Current() != before {
			t.Fatal("the set changed")
		}
		assertTokens(t, st, map[string]bool{"static-secret": true, "new-secret": true})
	})

	t.Run("missing file keeps the old set", func(t *testing.T) {
		before := st.Current()
		if err := st.Reload(filepath.Join(t.TempDir(), "gone.yaml"), static); err == nil {
			t.Fatal("Reload of a missing file succeeded")
		}
		if st.Current() != before {
			t.Fatal("the set changed")
		}
	})

	t.Run("conflict with static keeps the old set", func(t *testing.T) {
		before := st.Current()
		writeFile(t, path, tokensFile([2]string{"dup", "static-secret"}))
		if err := st.Reload(path, static); err == nil {
			t.Fatal("Reload succeeded with BRIDGE_TOKEN also in the file")
		}
		if st.Current() != before {
			t.Fatal("the set changed")
		}
	})

	t.Run("without static", func(t *testing.T) {
		writeFile(t, path, tokensFile([2]string{"new", "new-secret"}))
		if err := st.Reload(path, nil); err != nil {
			t.Fatal(err)
		}
		assertTokens(t, st, map[string]bool{"static-secret": false, "new-secret": true})
	})
}

func assertTokens(t *testing.T, st *Store, want map[string]bool) {
	t.Helper()
	for token, ok := range want {
		if _, got := st.Current().Authenticate(token); got != ok {
			t.Errorf("Authenticate(%q) = %v, want %v", token, got, ok)
		}
	}
}

// TestStoreConcurrentReload authenticates from several goroutines while the file is
// reloaded over and over (run with -race). A token present in every version of the file
// must never be refused mid-swap.
func TestStoreConcurrentReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tokens.yaml")
	versionA := tokensFile([2]string{"stable", "stable-secret"}, [2]string{"a", "a-secret"})
	versionB := tokensFile([2]string{"b", "b-secret"}, [2]string{"stable", "stable-secret"})
	writeFile(t, path, versionA)
	static := Static("static-secret")
	st := NewStore(nil)
	if err := st.Reload(path, static); err != nil {
		t.Fatal(err)
	}

	var stop atomic.Bool
	var refused atomic.Int64
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for !stop.Load() {
				for _, tok := range []string{"stable-secret", "static-secret"} {
					if p, ok := st.Current().Authenticate(tok); !ok || !p.Allows(ActionPublish, "x") {
						refused.Add(1)
					}
				}
				st.Current().Authenticate("a-secret") // either answer is right
			}
		})
	}
	// Two reloaders, so Reload also races with itself. The file is replaced by a rename,
	// so every read sees one whole version and every Reload must succeed.
	var reloadErrs atomic.Int64
	var reloaders sync.WaitGroup
	for i := range 2 {
		reloaders.Go(func() {
			for j := range 100 {
				if err := st.Reload(path, static); err != nil {
					reloadErrs.Add(1)
				}
				version := versionA
				if (i+j)%2 == 0 {
					version = versionB
				}
				if err := replaceFile(path, fmt.Sprintf("%s.%d.tmp", path, i), version); err != nil {
					reloadErrs.Add(1)
				}
			}
		})
	}
	reloaders.Wait()
	stop.Store(true)
	wg.Wait()
	if n := refused.Load(); n != 0 {
		t.Errorf("a stable token was refused %d times during reloads", n)
	}
	if n := reloadErrs.Load(); n != 0 {
		t.Errorf("%d reloads failed", n)
	}
}

// replaceFile writes data to tmp and renames it over path, so readers see the old or the
// new content whole. It returns errors rather than failing the test: it runs in a
// goroutine other than the test's.
func replaceFile(path, tmp, data string) error {
	if err := os.WriteFile(tmp, []byte(data), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
