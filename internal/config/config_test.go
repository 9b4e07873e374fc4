package config

import (
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"
)

// Every variable the configuration reads is in configs/bridge.env and in the README, so a
// user who reads either sees all of them.
func TestEveryVariableIsDocumented(t *testing.T) {
	env, err := os.ReadFile("../../configs/bridge.env")
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	typ := reflect.TypeOf(Config{})
	for i := range typ.NumField() {
		name := Prefix + typ.Field(i).Tag.Get("env")
		if !regexp.MustCompile(`(?m)^#? ?` + name + `=`).Match(env) {
			t.Errorf("%s is not in configs/bridge.env", name)
		}
		if !strings.Contains(string(readme), name) && !strings.Contains(string(readme), "`"+strings.TrimPrefix(name, "BRIDGE_REDIS")) {
			t.Errorf("%s is not in README.md", name)
		}
	}
}

// Durations take a Go duration or whole seconds in every variable, as in subscription fields.
func TestDurationsTakeWholeSeconds(t *testing.T) {
	for _, c := range []struct {
		value string
		want  time.Duration
		ok    bool
	}{
		{"10", 10 * time.Second, true},
		{"10s", 10 * time.Second, true},
		{"1m30s", 90 * time.Second, true},
		{"0", 0, true},
		{"ten", 0, false},
		{"-5", 0, false},
		{"-5s", 0, false},
	} {
		cfg, err := Load([]string{"BRIDGE_SHUTDOWN_GRACE=" + c.value})
		if (err == nil) != c.ok {
			t.Errorf("BRIDGE_SHUTDOWN_GRACE=%s: %v", c.value, err)
			continue
		}
		if err == nil && time.Duration(cfg.ShutdownGrace) != c.want {
			t.Errorf("BRIDGE_SHUTDOWN_GRACE=%s = %s, want %s", c.value, time.Duration(cfg.ShutdownGrace), c.want)
		}
		if err != nil && !strings.HasPrefix(err.Error(), "BRIDGE_SHUTDOWN_GRACE") {
			t.Errorf("error %q does not name the variable", err)
		}
	}
	cfg, err := Load([]string{"BRIDGE_IDEMPOTENCY_WINDOW=3600"})
	if err != nil || time.Duration(cfg.IdempotencyWindow) != time.Hour {
		t.Fatalf("BRIDGE_IDEMPOTENCY_WINDOW=3600: %v %v", cfg, err)
	}
}
