package fanout

// APIDefinitionsBucket maps a shape definition as the HTTP API's clients
// request it (table, where, params, columns, replica, log mode; hashed) to
// the handle that serves it. Replicas of the API create a handle for a new
// definition with a compare-and-set, so concurrent requests make one shape.
const APIDefinitionsBucket = "fanout_api_definitions"
