package shapeapi

import (
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"time"
)

// The bodies of 5xx answers are generic: what went wrong (a Postgres
// error may quote row values, a path names the storage) goes to the log.
var (
	internalErrorBody = errorBody("Internal server error: the shape API's log has the details")
	notReadyBody      = errorBody("The shape cannot be served yet: retry after the retry-after delay")
)

// overloaded is a request refused by a limit (admission.go, lifecycle.go):
// Electric's 503 concurrent_request_limit_exceeded with retry-after. The
// body names the limit; the log says how to raise it.
type overloaded struct {
	what       string        // "new shape requests", "live requests", ...
	limit      int           // the limit's value
	key        string        // its config key
	retryAfter time.Duration // when the client should come back
}

func (o *overloaded) Error() string {
	return fmt.Sprintf("%s are at their limit of %d (config key %s): retry after %s", o.what, o.limit, o.key, o.retryAfter)
}

// body is Electric's overload body.
func (o *overloaded) body() []byte {
	b, _ := json.Marshal(map[string]string{"code": "concurrent_request_limit_exceeded",
		"message": fmt.Sprintf("Too many %s at once (limit %d); retry after %s", o.what, o.limit, o.retryAfter)})
	return b
}

// retryAfterSeconds is the retry-after header: whole seconds, at least 1.
func retryAfterSeconds(d time.Duration) string {
	return strconv.Itoa(max(1, int(math.Ceil(d.Seconds()))))
}

// refuse answers an overloaded request.
func (s *Server) refuse(w http.ResponseWriter, o *overloaded) {
	s.refusals.WithLabelValues(o.key).Inc()
	s.log.Debug("request refused by a limit; raise the config key if this is normal load", "limit", o.key, "value", o.limit)
	h := w.Header()
	h.Set("cache-control", "no-store")
	h.Set("retry-after", retryAfterSeconds(o.retryAfter))
	writeJSON(w, http.StatusServiceUnavailable, o.body())
}
