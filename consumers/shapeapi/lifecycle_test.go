package shapeapi

import (
	"reflect"
	"testing"
	"time"
)

func handles(ss []apiShape) []string {
	var out []string
	for _, s := range ss {
		out = append(out, s.handle)
	}
	return out
}

func TestIdleShapesAndEvictions(t *testing.T) {
	now := time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)
	all := []apiShape{
		{handle: "a", lastUsed: now.Add(-25 * time.Hour)},
		{handle: "b", lastUsed: now.Add(-time.Minute)},
		{handle: "c", lastUsed: now.Add(-23 * time.Hour)},
		{handle: "d", lastUsed: now.Add(-48 * time.Hour)},
	}
	if got := handles(idleShapes(all, now, 24*time.Hour)); !reflect.DeepEqual(got, []string{"a", "d"}) {
		t.Errorf("idle after 24h: %v, want [a d]", got)
	}
	if got := idleShapes(all, now, 0); got != nil {
		t.Errorf("idle timeout 0 expires %v, want none", handles(got))
	}
	for _, tc := range []struct {
		max, incoming int
		want          []string
	}{
		{max: 10, incoming: 1, want: nil},
		{max: 5, incoming: 1, want: nil},
		{max: 4, incoming: 1, want: []string{"d"}}, // least recently used first
		{max: 2, incoming: 1, want: []string{"d", "a", "c"}},
		{max: 1, incoming: 1, want: []string{"d", "a", "c", "b"}},
	} {
		got, ok := evictions(all, tc.max, tc.incoming)
		if !reflect.DeepEqual(handles(got), tc.want) || !ok {
			t.Errorf("evictions(max %d, +%d) = %v %v, want %v", tc.max, tc.incoming, handles(got), ok, tc.want)
		}
	}
	// A shape being read is neither idle nor evicted.
	all[3].reading = true
	if got := handles(idleShapes(all, now, 24*time.Hour)); !reflect.DeepEqual(got, []string{"a"}) {
		t.Errorf("idle with d being read: %v, want [a]", got)
	}
	if got, ok := evictions(all, 4, 1); !reflect.DeepEqual(handles(got), []string{"a"}) || !ok {
		t.Errorf("evictions with d being read: %v %v, want [a]", handles(got), ok)
	}
	for i := range all {
		all[i].reading = true
	}
	if got, ok := evictions(all, 4, 1); got != nil || ok {
		t.Errorf("evictions with every shape being read: %v %v, want none and not ok", handles(got), ok)
	}
}

func TestLifecycleKeepsTheLatestUseAndDropsMovedDefinitions(t *testing.T) {
	l := newLifecycle(nil, nil, 10, time.Hour, func(string) {}, nil)
	old := time.Now().Add(-2 * time.Hour)
	l.mu.Lock()
	l.lastRead["h1"] = old.Add(time.Minute) // a read key seen before its definition
	l.addLocked("h1", "k1", old)
	l.mu.Unlock()
	if s := l.snapshot(); len(s) != 1 || !s[0].lastUsed.Equal(old.Add(time.Minute)) {
		t.Fatalf("after add: %+v", s)
	}
	done := l.reading("h1")
	if s := l.snapshot(); time.Since(s[0].lastUsed) > time.Second || !s[0].reading {
		t.Fatalf("reading did not move lastUsed or mark it read: %+v", s)
	}
	done()
	if s := l.snapshot(); s[0].reading {
		t.Fatalf("still reading after done: %+v", s)
	}
	if got := idleShapes(l.snapshot(), time.Now(), time.Hour); got != nil {
		t.Fatalf("a shape read now is idle: %v", got)
	}
	l.mu.Lock()
	l.addLocked("h2", "k1", time.Now()) // the definition was registered again
	l.mu.Unlock()
	if got := handles(l.snapshot()); !reflect.DeepEqual(got, []string{"h2"}) {
		t.Fatalf("after the definition moved: %v, want [h2]", got)
	}
	if l.readGrain() != 7*time.Minute+30*time.Second || (&lifecycle{idle: 24 * time.Hour}).readGrain() != 3*time.Hour {
		t.Fatalf("read grain: %s / %s", l.readGrain(), (&lifecycle{idle: 24 * time.Hour}).readGrain())
	}
}
