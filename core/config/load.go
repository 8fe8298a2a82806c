package config

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Error is a configuration problem located in a file.
type Error struct {
	File  string // "" for built-in defaults
	Line  int    // 0 when unknown
	Field string // dotted path, "" when not about one field
	Msg   string
}

func (e *Error) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		if e.Line > 0 {
			fmt.Fprintf(&b, ":%d", e.Line)
		}
		b.WriteString(": ")
	}
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// source remembers where each field of a file was, for error messages.
type source struct {
	file  string
	lines map[string]int // dotted field path -> line
}

func (s *source) fieldError(field, msg string) *Error {
	if s == nil {
		return &Error{Field: field, Msg: msg}
	}
	return &Error{File: s.file, Line: s.lines[field], Field: field, Msg: msg}
}

// Load reads path (if not empty) over the defaults of role. sections lists
// the top-level keys that services of this role accept; any other key that
// is not a core field is an error.
func Load(path string, role Role, dev bool, sections []string) (*Config, error) {
	c := Default(role, dev)
	if path == "" {
		return c, c.Validate()
	}
	data, err := readBounded(path)
	if err != nil {
		return nil, err
	}
	if err := c.parse(path, data, sections); err != nil {
		return nil, err
	}
	return c, c.Validate()
}

func readBounded(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	if len(data) > MaxFileSize {
		return nil, &Error{File: path, Msg: fmt.Sprintf("larger than %d bytes", MaxFileSize)}
	}
	return data, nil
}

// Parse reads YAML bytes over c; file names the source in errors.
func (c *Config) parse(file string, data []byte, sections []string) error {
	c.source = &source{file: file, lines: map[string]int{}}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return yamlError(file, "", err)
	}
	if len(doc.Content) == 0 {
		return nil // empty file: all defaults
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return &Error{File: file, Line: root.Line, Msg: "the top level must be a mapping of sections"}
	}
	core := coreFields()
	var errs []error
	for i := 0; i+1 < len(root.Content); i += 2 {
		key, val := root.Content[i], root.Content[i+1]
		switch {
		case slices.Contains(core, key.Value):
			// decoded below, all core fields at once
		case slices.Contains(sections, key.Value):
			c.sections[key.Value] = &Section{name: key.Value, node: val, src: c.source}
		default:
			known := append(slices.Clone(core), sections...)
			errs = append(errs, unknownField(file, key, "", known))
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if err := decodeStrict(c.source, root, "", c, core); err != nil {
		return err
	}
	c.DataDir = expandHome(c.DataDir)
	return nil
}

// expandHome replaces a leading ~/ with the user's home directory.
func expandHome(p string) string {
	rest, ok := strings.CutPrefix(p, "~/")
	if !ok {
		return p
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return p
	}
	return filepath.Join(home, rest)
}

func coreFields() []string {
	var names []string
	t := reflect.TypeOf(Config{})
	for i := range t.NumField() {
		if tag := yamlName(t.Field(i)); tag != "" {
			names = append(names, tag)
		}
	}
	return names
}

// decodeStrict checks node against the fields of v (recursively), records
// field lines, then decodes. only, if not nil, limits the top-level keys
// decoded (the rest belong to services).
func decodeStrict(src *source, node *yaml.Node, prefix string, v any, only []string) error {
	if only != nil {
		filtered := *node
		filtered.Content = nil
		for i := 0; i+1 < len(node.Content); i += 2 {
			if slices.Contains(only, node.Content[i].Value) {
				filtered.Content = append(filtered.Content, node.Content[i], node.Content[i+1])
			}
		}
		node = &filtered
	}
	if err := checkKnown(src, node, reflect.TypeOf(v).Elem(), prefix); err != nil {
		return err
	}
	if err := node.Decode(v); err != nil {
		return yamlError(src.file, prefix, err)
	}
	return nil
}

// checkKnown walks a mapping node against a struct type and reports keys
// the struct does not have, with their line, plus the lines of known keys.
func checkKnown(src *source, node *yaml.Node, t reflect.Type, prefix string) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if node.Kind == yaml.AliasNode {
		node = node.Alias
	}
	switch t.Kind() {
	case reflect.Struct:
		if node.Kind != yaml.MappingNode || t == reflect.TypeOf(yaml.Node{}) {
			return nil // a type mismatch is reported by Decode
		}
		fields := map[string]reflect.StructField{}
		var names []string
		for i := range t.NumField() {
			if n := yamlName(t.Field(i)); n != "" {
				fields[n] = t.Field(i)
				names = append(names, n)
			}
		}
		var errs []error
		for i := 0; i+1 < len(node.Content); i += 2 {
			key := node.Content[i]
			f, ok := fields[key.Value]
			if !ok {
				errs = append(errs, unknownField(src.file, key, prefix, names))
				continue
			}
			path := join(prefix, key.Value)
			src.lines[path] = key.Line
			if err := checkKnown(src, node.Content[i+1], f.Type, path); err != nil {
				errs = append(errs, err)
			}
		}
		return errors.Join(errs...)
	case reflect.Slice, reflect.Array:
		if node.Kind != yaml.SequenceNode {
			return nil
		}
		var errs []error
		for i, item := range node.Content {
			if err := checkKnown(src, item, t.Elem(), fmt.Sprintf("%s[%d]", prefix, i)); err != nil {
				errs = append(errs, err)
			}
		}
		return errors.Join(errs...)
	case reflect.Map:
		if node.Kind != yaml.MappingNode {
			return nil
		}
		var errs []error
		for i := 0; i+1 < len(node.Content); i += 2 {
			path := join(prefix, node.Content[i].Value)
			src.lines[path] = node.Content[i].Line
			if err := checkKnown(src, node.Content[i+1], t.Elem(), path); err != nil {
				errs = append(errs, err)
			}
		}
		return errors.Join(errs...)
	}
	return nil
}

func yamlName(f reflect.StructField) string {
	if !f.IsExported() {
		return ""
	}
	tag := f.Tag.Get("yaml")
	name, _, _ := strings.Cut(tag, ",")
	if name == "-" {
		return ""
	}
	if name == "" {
		return strings.ToLower(f.Name)
	}
	return name
}

func join(prefix, key string) string {
	if prefix == "" {
		return key
	}
	return prefix + "." + key
}

func unknownField(file string, key *yaml.Node, prefix string, known []string) *Error {
	msg := fmt.Sprintf("unknown field %q", key.Value)
	if s := closest(key.Value, known); s != "" {
		msg += fmt.Sprintf(" (did you mean %q?)", s)
	} else if len(known) > 0 {
		msg += fmt.Sprintf(" (known: %s)", strings.Join(known, ", "))
	}
	return &Error{File: file, Line: key.Line, Field: prefix, Msg: msg}
}

// closest returns the known name within edit distance 2 of s, if any.
func closest(s string, known []string) string {
	best, bestD := "", 3
	for _, k := range known {
		if d := editDistance(strings.ToLower(s), strings.ToLower(k)); d < bestD {
			best, bestD = k, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 99
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

var yamlLine = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)

// yamlError turns yaml.v3 errors ("yaml: line 3: ...", TypeError lists)
// into file:line errors.
func yamlError(file, field string, err error) error {
	var te *yaml.TypeError
	msgs := []string{err.Error()}
	if errors.As(err, &te) {
		msgs = te.Errors
	}
	var errs []error
	for _, m := range msgs {
		e := &Error{File: file, Field: field, Msg: strings.TrimPrefix(m, "yaml: ")}
		if sub := yamlLine.FindStringSubmatch(m); sub != nil {
			e.Line, _ = strconv.Atoi(sub[1])
			e.Msg = sub[2]
		}
		errs = append(errs, e)
	}
	return errors.Join(errs...)
}
