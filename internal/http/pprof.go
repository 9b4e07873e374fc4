package httpapi

import (
	"net/http"
	"net/http/pprof"
	"time"
)

// NewPprofServer serves the runtime profiles (net/http/pprof) on addr, for an operator who
// wants a CPU or heap profile of a live bridge. The configuration only lets it listen on
// loopback: profiles show the process's memory, tokens and secrets included.
func NewPprofServer(addr string) *http.Server {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
}
