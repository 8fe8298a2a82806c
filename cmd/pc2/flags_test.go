package main

import (
	"flag"
	"io"
	"slices"
	"testing"
)

func TestParseInterspersed(t *testing.T) {
	for _, tc := range []struct {
		args       []string
		target     string
		positional []string
	}{
		{[]string{"alice", "--target", "x"}, "x", []string{"alice"}},
		{[]string{"--target", "x", "alice", "bob"}, "x", []string{"alice", "bob"}},
		{[]string{"alice", "--", "--target", "x"}, "", []string{"alice", "--target", "x"}},
		{[]string{"--", "alice"}, "", []string{"alice"}},
		{nil, "", nil},
	} {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		target := fs.String("target", "", "")
		pos, err := parseInterspersed(fs, tc.args)
		if err != nil || *target != tc.target || !slices.Equal(pos, tc.positional) {
			t.Errorf("%q: target %q positional %q err %v", tc.args, *target, pos, err)
		}
	}
}
