package main

import (
	"context"
	"flag"

	"github.com/elacity/pc2/tools/natlab/natlabcmd"
)

// natlabCommand hands its arguments to the NAT lab's own command line,
// which has its subcommands (up, down, exec, classify, punch, list) and the
// hidden agent entry the lab re-executes inside namespaces.
func natlabCommand() *command {
	return &command{
		name:        "natlab",
		summary:     "network-namespace NAT lab for tests and research (root)",
		passThrough: true,
		run: func(ctx context.Context, std *stdio, _ *flag.FlagSet, args []string) error {
			return natlabcmd.Run(ctx, args, std.out, std.err)
		},
	}
}
