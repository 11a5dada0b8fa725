// A stand-in for OpenFaaS's of-watchdog in `mode=http`, for bench/warm.sh: it starts the
// function's own HTTP server (`fprocess`), waits until `upstream_url` accepts connections,
// and forwards every request to it over keep-alive connections, as of-watchdog's HTTP runner
// does (a new upstream request per call with the caller's method, path, query, headers and
// body; the answer's status, headers and body copied back; X-Duration-Seconds added).
// Standard library only. It leaves out what the bench does not exercise: of-watchdog's
// metrics, max_inflight limiter, health file, and JWT auth.
//
// Environment (of-watchdog's names): fprocess (command line, split on spaces), upstream_url
// (http://127.0.0.1:5000), port (8080), exec_timeout (10s).
package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

func env(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}

func main() {
	fprocess := strings.Fields(os.Getenv("fprocess"))
	if len(fprocess) == 0 {
		log.Fatal("watchdog: fprocess is not set")
	}
	upstream, err := url.Parse(env("upstream_url", "http://127.0.0.1:5000"))
	if err != nil || upstream.Host == "" {
		log.Fatalf("watchdog: upstream_url: %v", err)
	}
	timeout, err := time.ParseDuration(env("exec_timeout", "10s"))
	if err != nil {
		log.Fatalf("watchdog: exec_timeout: %v", err)
	}

	cmd := exec.Command(fprocess[0], fprocess[1:]...)
	cmd.Stdout = os.Stdout
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		log.Fatalf("watchdog: starting %v: %v", fprocess, err)
	}
	go func() {
		err := cmd.Wait()
		log.Fatalf("watchdog: %v exited: %v", fprocess, err)
	}()
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-stop
		_ = cmd.Process.Signal(syscall.SIGTERM)
		os.Exit(0)
	}()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if c, err := net.DialTimeout("tcp", upstream.Host, time.Second); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			log.Fatalf("watchdog: %s not accepting connections after 30s", upstream.Host)
		}
	}

	// of-watchdog's proxy client: keep-alive, up to 100 idle connections to the function.
	client := &http.Client{
		Transport: &http.Transport{
			DialContext:         (&net.Dialer{Timeout: timeout, KeepAlive: 10 * time.Second}).DialContext,
			MaxIdleConns:        100,
			MaxIdleConnsPerHost: 100,
			IdleConnTimeout:     120 * time.Second,
		},
		Timeout: timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
	handler := func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		target := *upstream
		target.Path = r.URL.Path
		target.RawQuery = r.URL.RawQuery
		ctx, cancel := context.WithTimeout(r.Context(), timeout)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, r.Method, target.String(), r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		req.ContentLength = r.ContentLength
		for name, values := range r.Header {
			req.Header[name] = values
		}
		res, err := client.Do(req)
		if err != nil {
			http.Error(w, fmt.Sprintf("upstream: %v", err), http.StatusBadGateway)
			return
		}
		defer res.Body.Close()
		for name, values := range res.Header {
			w.Header()[name] = values
		}
		w.Header().Set("X-Duration-Seconds", fmt.Sprintf("%f", time.Since(start).Seconds()))
		w.WriteHeader(res.StatusCode)
		_, _ = io.Copy(w, res.Body)
	}
	addr := "127.0.0.1:" + env("port", "8080")
	server := &http.Server{
		Addr:         addr,
		Handler:      http.HandlerFunc(handler),
		ReadTimeout:  timeout,
		WriteTimeout: timeout,
	}
	log.Printf("watchdog: forwarding %s to %s", addr, upstream)
	log.Fatal(server.ListenAndServe())
}
