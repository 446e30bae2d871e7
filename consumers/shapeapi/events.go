package shapeapi

import (
	"encoding/json"
	"fmt"
	"io"
)

// writeEvents writes each message of a JSON array body as one SSE data event.
func writeEvents(w io.Writer, body []byte) error {
	var msgs []json.RawMessage
	if err := json.Unmarshal(body, &msgs); err != nil {
		return fmt.Errorf("SSE: response body is not a JSON array: %w", err)
	}
	for _, m := range msgs {
		if _, err := fmt.Fprintf(w, "data: %s\n\n", m); err != nil {
			return err
		}
	}
	return nil
}
