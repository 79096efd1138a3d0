// replicatetx: immudb's own verdict on exported transactions, for the
// differential test of reconciler/journal/exported.py
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
// opened; after a refusal nothing was committed and the store is reused.
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
	"strings"
	"time"

	"github.com/codenotary/immudb/embedded/logger"
	"github.com/codenotary/immudb/embedded/store"
)

var (
	maxKeyLen    = flag.Int("max-key-len", 1024, "the store's MaxKeyLen")
	maxValueLen  = flag.Int("max-value-len", 1<<25, "the store's MaxValueLen (immudb's default for a database)")
	maxTxEntries = flag.Int("max-tx-entries", 1024, "the store's MaxTxEntries")
)

type fresh struct {
	dir string
	st  *store.ImmuStore
}

func open() (*fresh, error) {
	dir, err := os.MkdirTemp("", "replicatetx-")
	if err != nil {
		return nil, err
	}
	opts := store.DefaultOptions().
		WithLogger(logger.NewSimpleLoggerWithLevel("replicatetx", io.Discard, logger.LogError)).
		WithMultiIndexing(true).
		WithMaxKeyLen(*maxKeyLen).
		WithMaxValueLen(*maxValueLen).
		WithMaxTxEntries(*maxTxEntries).
		// a transaction other than the next one is refused at once instead of waiting for its predecessors
		WithMaxActiveTransactions(1)
	st, err := store.Open(dir, opts)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	for _, prefix := range []byte{0, 1} { // pkg/database: SetKeyPrefix, SortedSetKeyPrefix
		if err := st.InitIndexing(&store.IndexSpec{SourcePrefix: []byte{prefix}, TargetPrefix: []byte{prefix}}); err != nil {
			st.Close()
			os.RemoveAll(dir)
			return nil, err
		}
	}
	return &fresh{dir, st}, nil
}

func (f *fresh) close() {
	func() {
		defer func() { recover() }() // a store a panic left half-way may panic again on close
		f.st.Close()
	}()
	os.RemoveAll(f.dir)
}

func verdict(st *store.ImmuStore, data []byte) (line string, keep bool) {
	defer func() {
		if r := recover(); r != nil {
			line, keep = "panic "+oneLine(fmt.Sprint(r)), false
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	hdr, err := st.ReplicateTx(ctx, data, false, false)
	if err != nil {
		return "refused " + oneLine(err.Error()), true
	}
	alh := hdr.Alh()
	return fmt.Sprintf("ok %s %d", hex.EncodeToString(alh[:]), hdr.ID), false
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

func main() {
	flag.Parse()
	in := bufio.NewReaderSize(os.Stdin, 1<<20)
	out := bufio.NewWriter(os.Stdout)
	current, err := open()
	if err != nil {
		fmt.Fprintln(os.Stderr, "cannot open a store:", err)
		os.Exit(2)
	}
	defer func() { current.close() }()
	var size [4]byte
	for {
		if _, err := io.ReadFull(in, size[:]); err != nil {
			return // end of input
		}
		data := make([]byte, binary.BigEndian.Uint32(size[:]))
		if _, err := io.ReadFull(in, data); err != nil {
			fmt.Fprintln(os.Stderr, "truncated record:", err)
			os.Exit(2)
		}
		line, keep := verdict(current.st, data)
		fmt.Fprintln(out, line)
		out.Flush()
		if !keep {
			current.close()
			if current, err = open(); err != nil {
				fmt.Fprintln(os.Stderr, "cannot open a store:", err)
				os.Exit(2)
			}
		}
	}
}
