package shapeapi

import (
	"errors"
	"net/http"

	"github.com/fanout/pipeline/fanout/shapes"
)

// deleteShape is DELETE /v1/shape?handle=H (or the definition's
// parameters): the shape is removed, clients get 409 and refetch. Only when
// api.allow_delete is set.
func (s *Server) deleteShape(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("cache-control", "no-store")
	if !s.cfg.API.AllowDelete {
		writeJSON(w, http.StatusMethodNotAllowed, errorBody("DELETE /v1/shape is disabled (set api.allow_delete to enable it)"))
		return
	}
	q := r.URL.Query()
	handle := q.Get("handle")
	if handle == "" {
		if q.Get("table") == "" {
			s.badRequest(w, Invalid("handle", "can't be blank (give handle or table)"))
			return
		}
		q.Set("offset", "-1")
		req, bad := ParseRequest(q)
		if bad != nil {
			s.badRequest(w, bad)
			return
		}
		key := req.Def.Key()
		e, err := s.defs.Get(r.Context(), key)
		if err != nil {
			writeJSON(w, http.StatusNotFound, errorBody("no shape has this definition"))
			return
		}
		var v definitionValue
		if jsonUnmarshal(e.Value(), &v) != nil || v.Handle == "" {
			writeJSON(w, http.StatusNotFound, errorBody("no shape has this definition"))
			return
		}
		handle = v.Handle
	}
	err := shapes.Remove(r.Context(), s.bus, handle, shapes.WithRemoveLog(s.log))
	switch {
	case errors.Is(err, shapes.ErrUnknownShape):
		writeJSON(w, http.StatusNotFound, errorBody(err.Error()))
	case err != nil:
		s.fail(w, err)
	default:
		s.shapes.remove(handle)
		s.log.Info("shape removed through DELETE /v1/shape", "shape", handle)
		w.WriteHeader(http.StatusAccepted)
	}
}
