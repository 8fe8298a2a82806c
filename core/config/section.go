package config

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"reflect"
	"slices"
	"time"

	"go.yaml.in/yaml/v3"
)

// Section is the part of the file that belongs to one service.
type Section struct {
	name string
	node *yaml.Node // nil: absent from the file
	src  *source
}

// Present reports whether the file has this section.
func (s *Section) Present() bool { return s.node != nil }

// Decode fills v (a pointer to the service's config struct, already holding
// its defaults) from the section. Unknown fields, wrong types and YAML
// errors come back with file and line.
func (s *Section) Decode(v any) error {
	if s.node == nil {
		return nil
	}
	if reflect.TypeOf(v).Kind() != reflect.Pointer {
		return &Error{Field: s.name, Msg: "Decode needs a pointer"}
	}
	return decodeStrict(s.src, s.node, s.name, v, nil)
}

// Errorf returns an error about field (relative to the section) located at
// its line in the file, for the service's own validation.
func (s *Section) Errorf(field, msg string) error {
	return s.src.fieldError(join(s.name, field), msg)
}

// CheckHostPort returns an error located at field unless v is host:port.
func (s *Section) CheckHostPort(field, v string) error {
	if _, _, err := net.SplitHostPort(v); err != nil {
		return s.Errorf(field, fmt.Sprintf("%q is not host:port", v))
	}
	return nil
}

// CheckDurations returns the errors, located at their fields, of the
// durations (by field name) that lie outside (0, max].
func (s *Section) CheckDurations(max time.Duration, fields map[string]time.Duration) error {
	var errs []error
	for _, field := range slices.Sorted(maps.Keys(fields)) {
		if d := fields[field]; d <= 0 || d > max {
			errs = append(errs, s.Errorf(field, fmt.Sprintf("%v is outside (0, %v]", d, max)))
		}
	}
	return errors.Join(errs...)
}
