package shapeapi

// Chunk collects the messages of one response up to about a byte limit.
type Chunk struct {
	limit int
	body  []byte
	n     int
	last  Offset
	ends  []int // where each message ends in body
}

// NewChunk starts a response body that holds about limit bytes of JSON; it
// always takes at least one message, so a response always makes progress.
func NewChunk(limit int, start Offset) *Chunk {
	return &Chunk{limit: limit, body: []byte{'['}, last: start}
}

// Add appends e unless the chunk is full; false means the response is cut
// before e (e belongs to the next response).
func (c *Chunk) Add(e Entry) bool {
	if c.n > 0 && len(c.body)+1+len(e.JSON) > c.limit {
		return false
	}
	c.append(e.JSON)
	c.last = e.Offset
	return true
}

// Control appends a control message (up-to-date, snapshot-end) that does not move the offset.
func (c *Chunk) Control(msg []byte) { c.append(msg) }

func (c *Chunk) append(msg []byte) {
	if c.n > 0 {
		c.body = append(c.body, ',')
	}
	c.body = append(c.body, msg...)
	c.ends = append(c.ends, len(c.body))
	c.n++
}

// each calls fn with every message of the chunk, in order.
func (c *Chunk) each(fn func(msg []byte) error) error {
	start := 1
	for _, end := range c.ends {
		if c.body[start] == ',' {
			start++
		}
		if err := fn(c.body[start:end]); err != nil {
			return err
		}
		start = end
	}
	return nil
}

// Len is the number of messages.
func (c *Chunk) Len() int { return c.n }

// Last is the offset of the last entry added (the start offset if none): the response's electric-offset.
func (c *Chunk) Last() Offset { return c.last }

// Bytes is the JSON array.
func (c *Chunk) Bytes() []byte { return append(c.body[:len(c.body):len(c.body)], ']') }
