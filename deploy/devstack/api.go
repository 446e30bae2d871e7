package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// shapeAPI is bin/shapeapi when it is built: its process and base URL.
// Without the binary both are empty and make run prints fanoutctl commands.
type shapeAPI struct {
	cmd  *exec.Cmd
	base string // http://127.0.0.1:PORT
}

// apiReadyTimeout bounds the wait for GET /v1/health after start.
const apiReadyTimeout = 30 * time.Second

// startAPI starts bin/shapeapi on a free port, if it exists, and waits
// until it answers GET /v1/health.
func startAPI(ctx context.Context, work, binDir string, env []string) (api shapeAPI, err error) {
	if _, err := os.Stat(filepath.Join(binDir, "shapeapi")); err != nil {
		return api, nil
	}
	port, err := freePort()
	if err != nil {
		return api, fmt.Errorf("find a free port for shapeapi: %w", err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	cmd, err := startService(work, binDir, "shapeapi", "shapeapi", "", append(append([]string(nil), env...), "FANOUT_API_ADDR="+addr))
	if err != nil {
		return api, err
	}
	api.cmd, api.base = cmd, "http://"+addr
	deadline := time.Now().Add(apiReadyTimeout)
	for {
		resp, err := http.Get(api.base + "/v1/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return api, nil
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			// Keep it in api.cmd so it is stopped; print fanoutctl commands instead.
			fmt.Printf("shapeapi did not answer GET %s/v1/health within %s; see %s\n", api.base, apiReadyTimeout, filepath.Join(work, "logs", "shapeapi.log"))
			api.base = ""
			return api, nil
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// shapeURL is GET /v1/shape for the shape's definition with extra params.
// Spaces are %20, not +, so the URL reads the same to every server.
func (a shapeAPI) shapeURL(d demoShape, extra ...string) string {
	q := "table=" + url.QueryEscape(d.table) + "&where=" + strings.ReplaceAll(url.QueryEscape(d.where), "+", "%20")
	for i := 0; i+1 < len(extra); i += 2 {
		q += "&" + extra[i] + "=" + url.QueryEscape(extra[i+1])
	}
	return a.base + "/v1/shape?" + q
}

// snapshotCommand prints the shape from the start (its first chunk).
func (a shapeAPI) snapshotCommand(d demoShape) string {
	return "curl -s " + shellQuote(a.shapeURL(d, "offset", "-1"))
}

// liveCommand reads the shape up to its current end, as a client does
// before going live, and returns a command that long-polls from there,
// following electric-offset, and prints each batch of changes.
func (a shapeAPI) liveCommand(ctx context.Context, d demoShape) (string, error) {
	handle, offset, err := a.upToDate(ctx, d)
	if err != nil {
		return "", err
	}
	u := a.shapeURL(d, "handle", handle)
	// The URL holds no quote, $ or backtick: it can sit in double quotes
	// beside $o.
	return fmt.Sprintf(`o=%s; while r=$(curl -sf -w '\n%%header{electric-offset}' "%s&live=true&offset=$o"); do printf '%%s\n' "$r" | sed '$d'; o=$(printf '%%s\n' "$r" | tail -n 1); done`,
		shellQuote(offset), u), nil
}

// upToDate follows the shape's chunks from offset -1 until a response says
// it is up to date, and returns the handle and that offset.
func (a shapeAPI) upToDate(ctx context.Context, d demoShape) (handle, offset string, err error) {
	ctx, cancel := context.WithTimeout(ctx, apiReadyTimeout)
	defer cancel()
	offset = "-1"
	for {
		extra := []string{"offset", offset}
		if handle != "" {
			extra = append(extra, "handle", handle)
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.shapeURL(d, extra...), nil)
		if err != nil {
			return "", "", err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return "", "", fmt.Errorf("GET %s: %w", req.URL, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return "", "", fmt.Errorf("GET %s: %s", req.URL, resp.Status)
		}
		handle, offset = resp.Header.Get("electric-handle"), resp.Header.Get("electric-offset")
		if handle == "" || offset == "" {
			return "", "", errors.New("a response without electric-handle or electric-offset")
		}
		if _, ok := resp.Header[http.CanonicalHeaderKey("electric-up-to-date")]; ok { // present, value empty
			return handle, offset, nil
		}
	}
}
