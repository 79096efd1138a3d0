// replicatetx: immudb's own verdict on exported transactions, for the
// differential test of reconciler/exported.py
// (tests/test_exported_differential.py).
//
// It reads records from stdin (u32 big-endian length, bytes) and gives each
// to ImmuStore.ReplicateTx of the embedded store of the immudb module the
// test servers are built from, on a fresh store opened as immudb's database
// opens it (pkg/database: multi-indexing, the key-value prefixes indexed),
// with the limits given as flags. One line per record on stdout:
//
//	ok <alh hex> <tx id>    ReplicateTx took it (the Alh of what it committed)
//	refused <error>         ReplicateTx returned an error
//	panic <message>         ReplicateTx panicked (recovered here; in a server it ends the process)
//
// After an acceptance or a panic the store is thrown away and a new one
// opened. After a refusal the store is reused only if it is still empty
// (nothing precommitted or committed), which is checked each time; a store
// that took the values of refused transactions into its value log for long
// is renewed too. Temporary folders are removed at the end of the input
// and on SIGINT, SIGTERM or SIGHUP.
package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/codenotary/immudb/embedded/logger"
	"github.com/codenotary/immudb/embedded/store"
)

var (
	maxKeyLen    = flag.Int("max-key-len", 1024, "the store's MaxKeyLen")
	maxValueLen  = flag.Int("max-value-len", 1<<25, "the store's MaxValueLen (immudb's default for a database)")
	maxTxEntries = flag.Int("max-tx-entries", 1024, "the store's MaxTxEntries")
	alwaysFresh  = flag.Bool("always-fresh", false, "a fresh store for every record, refusals included (slower; "+
		"to check that reusing a store after a refusal changes no verdict)")
	timeout = flag.Duration("timeout", 5*time.Second, "the context deadline of one ReplicateTx")
)

// a store that took this many bytes of refused records is renewed (their values may sit in its value log)
const refusedBytesPerStore = 64 << 20

// the folders of stores not yet removed, for the signal handler
var (
	dirsMu sync.Mutex
	dirs   = map[string]bool{}
)

func removeDir(dir string) {
	os.RemoveAll(dir)
	dirsMu.Lock()
	delete(dirs, dir)
	dirsMu.Unlock()
}

func removeAllDirs() {
	dirsMu.Lock()
	defer dirsMu.Unlock()
	for dir := range dirs {
		os.RemoveAll(dir)
		delete(dirs, dir)
	}
}

type fresh struct {
	dir     string
	st      *store.ImmuStore
	refused int // bytes of refused records given to this store
}

func open() (*fresh, error) {
	dir, err := os.MkdirTemp("", "replicatetx-")
	if err != nil {
		return nil, err
	}
	dirsMu.Lock()
	dirs[dir] = true
	dirsMu.Unlock()
	// pkg/database OpenDB: the database's store options, WithMultiIndexing(true)
	opts := store.DefaultOptions().
		WithLogger(logger.NewSimpleLoggerWithLevel("replicatetx", io.Discard, logger.LogError)).
		WithMultiIndexing(true).
		WithMaxKeyLen(*maxKeyLen).
		WithMaxValueLen(*maxValueLen).
		WithMaxTxEntries(*maxTxEntries).
		// precommit refuses an id above last precommitted + MaxActiveTransactions at once
		// (ErrMaxActiveTransactionsLimitExceeded) instead of waiting for its predecessors
		WithMaxActiveTransactions(1)
	st, err := store.Open(dir, opts)
	if err != nil {
		removeDir(dir)
		return nil, err
	}
	for _, prefix := range []byte{0, 1} { // pkg/database: SetKeyPrefix, SortedSetKeyPrefix
		if err := st.InitIndexing(&store.IndexSpec{SourcePrefix: []byte{prefix}, TargetPrefix: []byte{prefix}}); err != nil {
			st.Close()
			removeDir(dir)
			return nil, err
		}
	}
	return &fresh{dir: dir, st: st}, nil
}

// close closes the store and removes its folder; a store that a panic left
// half-way may panic again or never finish closing: it is then abandoned.
func (f *fresh) close() {
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer func() { recover() }()
		f.st.Close()
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
	}
	removeDir(f.dir)
}

// empty: nothing was precommitted or committed, the store is as opened
func (f *fresh) empty() bool {
	return f.st.LastPrecommittedTxID() == 0 && f.st.LastCommittedTxID() == 0
}

func verdict(st *store.ImmuStore, data []byte) (line string, accepted bool) {
	defer func() {
		if r := recover(); r != nil {
			line, accepted = "panic "+oneLine(fmt.Sprint(r)), false
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	hdr, err := st.ReplicateTx(ctx, data, false, false)
	if err != nil {
		return "refused " + oneLine(err.Error()), false
	}
	alh := hdr.Alh()
	return fmt.Sprintf("ok %s %d", hex.EncodeToString(alh[:]), hdr.ID), true
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "replicatetx: "+format+"\n", args...)
	removeAllDirs()
	os.Exit(2)
}

func main() {
	flag.Parse()

	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		<-signals
		removeAllDirs()
		os.Exit(1)
	}()

	in := bufio.NewReaderSize(os.Stdin, 1<<20)
	out := bufio.NewWriter(os.Stdout)
	current, err := open()
	if err != nil {
		fail("cannot open a store: %v", err)
	}
	defer removeAllDirs()
	var size [4]byte
	for {
		if _, err := io.ReadFull(in, size[:]); err != nil {
			if err != io.EOF {
				fail("truncated record length: %v", err)
			}
			current.close()
			return // end of input
		}
		data := make([]byte, binary.BigEndian.Uint32(size[:]))
		if _, err := io.ReadFull(in, data); err != nil {
			fail("truncated record: %v", err)
		}
		line, accepted := verdict(current.st, data)
		fmt.Fprintln(out, line)
		if err := out.Flush(); err != nil {
			fail("cannot write a verdict: %v", err)
		}
		refused := strings.HasPrefix(line, "refused ")
		if refused {
			current.refused += len(data)
		}
		if !refused || accepted || *alwaysFresh || current.refused > refusedBytesPerStore || !current.empty() {
			current.close()
			if current, err = open(); err != nil {
				fail("cannot open a store: %v", err)
			}
		}
	}
}
