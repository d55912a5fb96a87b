package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// findNginx returns the nginx binary to use, or "" and why there is none.
func findNginx(flag string) (string, string) {
	switch flag {
	case "none":
		return "", "skipped (--nginx none)"
	case "":
		if p, err := exec.LookPath("nginx"); err == nil {
			return p, ""
		}
		if st, err := os.Stat("/usr/sbin/nginx"); err == nil && !st.IsDir() {
			return "/usr/sbin/nginx", "" // not on a non-root PATH on Debian
		}
		return "", "not installed"
	}
	if _, err := os.Stat(flag); err != nil {
		return "", "not installed: " + err.Error()
	}
	return flag, ""
}

// nginxConf is a reverse proxy to one upstream with keep-alive on both
// sides. keepalive_requests is raised on both so that neither nginx nor its
// upstream connections close every 1,000 requests (its default), which Go's
// client and transport never do; access logging is off, as weft's router
// logs nothing per request.
const nginxConf = `daemon off;
master_process on;
worker_processes %s;
pid %[2]s/nginx.pid;
error_log %[2]s/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
%[3]s    upstream backend {
        server %[4]s;
        keepalive 64;
        keepalive_requests 1000000000;
        keepalive_timeout 120s;
    }
    server {
        listen %[5]s;
        keepalive_requests 1000000000;
        keepalive_timeout 120s;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
`

// startNginx writes a config into dir, runs nginx in the foreground and
// waits until it accepts connections. It returns the process, the address
// it listens on and its version.
func startNginx(ctx context.Context, bin, workers, dir, backend string) (*benchProc, string, string, error) {
	v, _ := exec.CommandContext(ctx, bin, "-V").CombinedOutput()
	version := "nginx"
	var temps strings.Builder
	for line := range strings.SplitSeq(string(v), "\n") {
		if after, ok := strings.CutPrefix(line, "nginx version: "); ok {
			version = strings.TrimSpace(after)
		}
	}
	// The compiled-in temp folders (/var/lib/nginx/…) may not be writable;
	// each module built in gets one under dir.
	for _, m := range []string{"client_body", "proxy", "fastcgi", "uwsgi", "scgi"} {
		if m != "client_body" && m != "proxy" && strings.Contains(string(v), "--without-http_"+m+"_module") {
			continue
		}
		fmt.Fprintf(&temps, "    %s_temp_path %s/%s_temp;\n", m, dir, m)
	}
	addr, err := freeAddr()
	if err != nil {
		return nil, "", "", err
	}
	conf := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(conf, fmt.Appendf(nil, nginxConf, workers, dir, temps.String(), backend, addr), 0o644); err != nil {
		return nil, "", "", err
	}
	p, err := startProc("nginx", bin, "-p", dir, "-c", conf, "-e", filepath.Join(dir, "error.log"))
	if err != nil {
		return nil, "", "", err
	}
	if err := p.waitUntil(ctx, 30*time.Second, "listening", func() bool { return tcpOpen(addr) }); err != nil {
		log, _ := os.ReadFile(filepath.Join(dir, "error.log"))
		p.stop()
		return nil, "", "", errors.Join(err, fmt.Errorf("nginx error log: %s", log))
	}
	return p, addr, version, nil
}
