package main

import (
	"context"
	"flag"
	"fmt"
	"runtime"

	"github.com/elacity/pc2/core/buildinfo"
)

func versionCommand() *command {
	return &command{
		name:    "version",
		summary: "print the version of pc2",
		run: func(_ context.Context, std *stdio, _ *flag.FlagSet, args []string) error {
			if err := noArgs(args); err != nil {
				return err
			}
			commit := buildinfo.Commit()
			if commit == "" {
				commit = "unknown commit"
			}
			fmt.Fprintf(std.out, "pc2 %s (%s) %s %s/%s\n", buildinfo.Version, commit, buildinfo.GoVersion(), runtime.GOOS, runtime.GOARCH)
			return nil
		},
	}
}
