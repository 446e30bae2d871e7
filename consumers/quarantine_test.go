package consumers

import (
	"context"
	"encoding/binary"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/testenv"
)

// One shape whose log is unusable (a record passes its checksum but does not
// decode) is set aside: its fragments are dead-lettered and it is marked
// failed, while the other shapes of its partition go on and the consumer
// stays up. Before, the batch was retried max_deliver times and the process
// died, and so did every next owner (issue 19, item 6).
func TestAnUnusableShapeLogIsSetAsideAndTheRestGoOn(t *testing.T) {
	e := newEnv(t)
	bad, good := "sbad", ""
	for _, h := range []string{"sgood0", "sgood1", "sgood2", "sgood3", "sgood4", "sgood5", "sgood6", "sgood7"} {
		if part(h) == part(bad) {
			good = h
			break
		}
	}
	if good == "" {
		t.Fatal("no test handle shares a partition with sbad; add more candidates")
	}
	e.addShape(bad)
	e.addShape(good)
	// A frame with a valid checksum around a payload no version writes.
	logDir := filepath.Join(e.dir, "shapes", bad)
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		t.Fatal(err)
	}
	poison := []byte{4, 0, 0, 0, 0, 0, 0, 0, 0x7f, 1, 2, 3}
	putCRC(poison)
	if err := os.WriteFile(filepath.Join(logDir, "log"), poison, 0o644); err != nil {
		t.Fatal(err)
	}

	c := e.start("c1")
	e.bindAll("c1", 1)
	e.publish(frag(bad, 100, 0, true, ins("1", "a")), "")
	e.publish(frag(good, 100, 0, true, ins("1", "a")), "")
	e.publish(frag(bad, 200, 0, true, ins("2", "b")), "")
	e.publish(frag(good, 200, 0, true, ins("2", "b")), "")
	e.awaitRows(good, "1=a", "2=b")
	e.awaitStreamEmpty()
	testenv.Eventually(t, 10*time.Second, "both fragments of the unusable shape in "+fanout.DeadLetterStream, func() bool {
		info, err := e.bus.DeadLetter.Info(context.Background())
		return err == nil && info.State.Msgs == 2
	})
	entry, err := e.bus.Failed.Get(context.Background(), bad)
	if err != nil {
		t.Fatalf("the unusable shape is not marked failed: %v", err)
	}
	if !strings.Contains(string(entry.Value()), "does not decode") {
		t.Fatalf("failure mark does not say why: %s", entry.Value())
	}
	select {
	case err := <-c.errc:
		t.Fatalf("the consumer stopped: %v", err)
	default:
	}
	if after, _ := os.ReadFile(filepath.Join(logDir, "log")); string(after) != string(poison) {
		t.Fatal("the unusable log was changed")
	}
}

// putCRC sets the CRC32-C of a shape log frame's payload (frame.go's format).
func putCRC(frame []byte) {
	binary.LittleEndian.PutUint32(frame[4:8], crc32.Checksum(frame[8:], crc32.MakeTable(crc32.Castagnoli)))
}
