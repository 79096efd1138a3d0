// Talks to a running `replicator run` with the Go replicator's own REST
// types (codenotary/immudb-tools, replicator/rest.go and backup.go): the
// request struct it decodes, and the status it prints with
// `{"running": %t, "progress": %d, "progress_bytes": %f}`, here decoded into
// the Go types of those verbs. A field of another JSON type (a fractional
// progress, say) makes encoding/json fail, as it would in a Go client.
//
// usage: gotypes BASE_URL TOKEN ARCHIVE_PATH
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

type backupRequest struct {
	TargetType   string `json:"type"`
	TargetPath   string `json:"path"`
	TargetHost   string `json:"host"`
	TargetPort   int    `json:"port"`
	AuthUsername string `json:"username"`
	AuthPassword string `json:"password"`
}

type backupStatus struct {
	Running       bool    `json:"running"`
	Progress      int     `json:"progress"`
	ProgressBytes float64 `json:"progress_bytes"`
}

func call(method, url, token string, body []byte) []byte {
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		fail(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fail(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		fail(fmt.Errorf("%s %s: %d %s", method, url, resp.StatusCode, out))
	}
	return out
}

func status(url, token string) backupStatus {
	var s backupStatus
	if err := json.Unmarshal(call("GET", url, token, nil), &s); err != nil {
		fail(fmt.Errorf("decoding %s into the Go tool's types: %w", url, err))
	}
	return s
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}

func main() {
	base, token, path := os.Args[1], os.Args[2], os.Args[3]
	fmt.Printf("home %q\n", string(call("GET", base+"/", token, nil)))
	body, _ := json.Marshal(backupRequest{TargetType: "file", TargetPath: path})
	call("POST", base+"/backup/start", token, body)
	for i := 0; i < 600; i++ {
		s := status(base+"/backup/status", token)
		fmt.Printf("status %+v\n", s)
		if !s.Running {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	fmt.Printf("start %+v\n", status(base+"/backup/start", token))
}
