package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"

	"github.com/goccy/go-yaml"
)

// apiClient talks to a node's /api/v1.
type apiClient struct {
	base  string
	token string
	http  *http.Client
}

func (g *globals) client() *apiClient {
	return &apiClient{base: strings.TrimRight(g.server, "/"), token: g.token, http: &http.Client{}}
}

// apiError mirrors the node's error body.
type apiError struct {
	Error    string `json:"error"`
	Problems []struct {
		File    string `json:"file"`
		Line    int    `json:"line"`
		Column  int    `json:"column"`
		Field   string `json:"field"`
		Message string `json:"message"`
	} `json:"problems"`
}

// do sends a request and decodes a JSON answer into out (when not nil). It
// maps failures to exit codes: unreachable 6, 404 4, 422 3, others 1.
func (c *apiClient) do(ctx context.Context, method, path, contentType string, body io.Reader, out any) error {
	resp, err := c.send(ctx, method, path, contentType, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("decode answer of %s %s: %w", method, path, err)
	}
	return nil
}

// send returns the response of a 2xx answer; the caller closes its body.
func (c *apiClient) send(ctx context.Context, method, path, contentType string, body io.Reader) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return nil, withCode(exitUsage, fmt.Errorf("--server %q: %w", c.base, err))
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		var ne net.Error
		var oe *net.OpError
		if errors.As(err, &oe) || errors.As(err, &ne) {
			return nil, withCode(exitUnreachable, fmt.Errorf("cannot reach weft at %s: %w", c.base, err))
		}
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return resp, nil
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var ae apiError
	msg := strings.TrimSpace(string(raw))
	if json.Unmarshal(raw, &ae) == nil && ae.Error != "" {
		msg = ae.Error
		if len(ae.Problems) > 1 {
			var b strings.Builder
			for _, p := range ae.Problems {
				fmt.Fprintf(&b, "\n  %s:%d:%d: %s: %s", p.File, p.Line, p.Column, p.Field, p.Message)
			}
			msg = fmt.Sprintf("%d problems:%s", len(ae.Problems), b.String())
		}
	}
	err = errors.New(msg)
	switch resp.StatusCode {
	case http.StatusNotFound:
		return nil, withCode(exitNotFound, err)
	case http.StatusUnprocessableEntity:
		return nil, withCode(exitInvalidFile, err)
	case http.StatusUnauthorized:
		return nil, fmt.Errorf("%w (set --api-token or WEFT_API_TOKEN)", err)
	}
	return nil, fmt.Errorf("%s %s: %d: %w", method, path, resp.StatusCode, err)
}

// printOut renders v as JSON or YAML per -o; table output is the caller's.
func printOut(w io.Writer, format string, v any) error {
	switch format {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case "yaml":
		raw, err := json.Marshal(v)
		if err != nil {
			return err
		}
		y, err := yaml.JSONToYAML(raw)
		if err != nil {
			return err
		}
		_, err = w.Write(y)
		return err
	}
	return withCode(exitUsage, fmt.Errorf("-o %q: want table, json or yaml", format))
}

func jsonBody(v any) io.Reader {
	b, _ := json.Marshal(v) // only plain structs and maps are passed
	return bytes.NewReader(b)
}
